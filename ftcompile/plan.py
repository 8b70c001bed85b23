"""Stage 5: the execution plan — plain data with a format version and a stable hash.

The runtime applies `changes` in order, each when `step` optimizer steps have been taken,
so "at step S" means "after S steps, before step S+1". Checkpoints and evaluations at a
phase boundary come before the next phase's changes; where both fall, the checkpoint first. Every optimizer param group is named
(`head`, `head.no_decay`, ...); a group's no-decay part has weight_decay 0 for the whole run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeAlias

from ftcompile import defaults
from ftcompile.errors import RecipeError

FORMAT = 1

# What plan.json can hold. A plan field of this type is a user's mapping passed through as
# written (builder or optimizer keyword arguments, checked against a signature by the
# compiler); every field of a fixed shape is a record below.
JSONValue: TypeAlias = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
JSONObject: TypeAlias = dict[str, JSONValue]

# The metadata of a field added after format 1's first plans: left out of plan.json at its
# default, so a plan that does not use it keeps its hash. Every field with a default is
# declared so (tests/ftcompile/test_plan_records.py); `OPTIONAL` is derived from it.
OPTIONAL_FIELD: Mapping[str, bool] = {"optional": True}


class OpKind(Enum):
    """How a change acts, declared by each `Op` member."""

    SETUP = "setup"  # sets up the model or the loop: replayed when a run resumes or a trial forks
    OPTIMIZER = "optimizer"  # sets up the optimizer (apply.Executor); replayed too
    EVENT = "event"  # only happens (an evaluation, a checkpoint, a phase's trials): never replayed


class Op(str, Enum):
    """What a change does. A str enum: it is its own JSON value ("set", ...).

    Each member's kind (`OP_KINDS`, right below; the import fails without it) says whether
    `Session.load_state` replays it before a saved step (`replayed`) and whether the
    Executor applies it (`on_optimizer`), so a new op cannot be added without saying both."""

    PHASE = "phase"  # a phase begins (for logs)
    FREEZE = "freeze"  # requires_grad off, gradient cleared
    UNFREEZE = "unfreeze"
    BN = "bn"  # BatchNorm of a group in eval ("frozen") or train mode
    FEATURES = "features"  # train the head on cached inputs (value: head module) or stop (None)
    SET = "set"  # a param group's field (lr, weight_decay, momentum) = value
    RESET_STATE = "reset_state"  # clear a param group's optimizer state
    SCHEDULER = "scheduler"  # start a scheduler (value: a SchedulerStart) or none
    EVALUATE = "evaluate"
    CHECKPOINT = "checkpoint"
    TRIAL = "trial"  # the phase's alternatives run here (target: phase); see PhasePlan.trials

    def __str__(self) -> str:
        return self.value

    @property
    def kind(self) -> OpKind:
        return OP_KINDS[self]

    @property
    def replayed(self) -> bool:
        """Set-up state: applied again, in order, up to the step a run resumes or forks from."""
        return self.kind is not OpKind.EVENT

    @property
    def on_optimizer(self) -> bool:
        return self.kind is OpKind.OPTIMIZER


OP_KINDS: dict[Op, OpKind] = {
    Op.PHASE: OpKind.SETUP,
    Op.FREEZE: OpKind.SETUP,
    Op.UNFREEZE: OpKind.SETUP,
    Op.BN: OpKind.SETUP,
    Op.FEATURES: OpKind.SETUP,
    Op.SET: OpKind.OPTIMIZER,
    Op.RESET_STATE: OpKind.OPTIMIZER,
    Op.SCHEDULER: OpKind.OPTIMIZER,
    Op.EVALUATE: OpKind.EVENT,
    Op.CHECKPOINT: OpKind.EVENT,
    Op.TRIAL: OpKind.EVENT,
}
if set(OP_KINDS) != set(Op):
    raise TypeError(f"ops without a kind in OP_KINDS: {sorted(set(Op) - set(OP_KINDS))}")

# Change ops that act on the optimizer (the rest act on the model or the loop).
OPTIMIZER_OPS = tuple(op for op in Op if op.on_optimizer)


@dataclass(frozen=True)
class WeightsSpec:
    """Where the starting weights come from: `kind` torchvision | file | recipe | none.

    For kind "recipe", `plan` is the upstream recipe's whole plan as plan.json holds it (its
    hash covers it; `Plan.from_dict(plan)` reads it) and `root` that recipe's folder relative
    to this one's.
    """

    kind: str
    value: str | None
    root: str | None = field(default=None, metadata=OPTIONAL_FIELD)
    plan: JSONObject | None = field(default=None, metadata=OPTIONAL_FIELD)

    @property
    def upstream_hash(self) -> str:
        """The upstream plan's hash (kind "recipe"); "" for the other kinds."""
        return str(self.plan["hash"]) if self.plan else ""


@dataclass(frozen=True)
class HeadSpec:
    """The [model.head] table as validated: a new classifier head (ftcompile/arch.py builds it)."""

    pool: str | None  # "avg" | "max" | "concat"; None: avg (and an error for no transformer)
    hidden: tuple[int, ...]  # widths of the hidden Linear layers
    dropout: float | tuple[float, ...]  # one for every Linear, or one per Linear
    batchnorm: bool
    activation: str

    @staticmethod
    def of(table: HeadSpec | Mapping[str, Any]) -> HeadSpec:
        """From the schema's dump, plan.json or a sidecar (lists become tuples); absent keys
        (and None) take the schema's defaults."""
        if isinstance(table, HeadSpec):
            return table
        t = {**defaults.HEAD, **{k: v for k, v in table.items() if v is not None}}
        dropout = t["dropout"]
        return HeadSpec(
            pool=t["pool"],
            hidden=tuple(t["hidden"]),
            dropout=tuple(dropout) if isinstance(dropout, (list, tuple)) else dropout,
            batchnorm=t["batchnorm"],
            activation=t["activation"],
        )


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    weights: WeightsSpec
    num_classes: int
    head: HeadSpec | None  # None: torchvision's head with a new last layer
    total_params: int
    # Extra torchvision builder kwargs: the user's mapping, checked against the builder's
    # signature by the compiler, passed to it as written.
    builder_args: JSONObject = field(default_factory=dict, metadata=OPTIONAL_FIELD)
    head_weights: str = field(
        default=defaults.HEAD_WEIGHTS, metadata=OPTIONAL_FIELD
    )  # "load": the file's head tensors too

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> ModelSpec:
        return ModelSpec(
            **{**d, "weights": WeightsSpec(**d["weights"]), "head": HeadSpec.of(d["head"]) if d["head"] else None}
        )


# Val images are resized to image_size / 0.875 then centre-cropped: the standard ImageNet
# evaluation recipe that torchvision's and timm's pretrained weights were measured with.
VAL_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class ValPreprocessing:
    """The validation transforms: the shorter side resized to `resize`, a centre crop of
    `crop` x `crop`, values / 255, then normalised with `mean` / `std` per channel."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class MixSpec:
    """Batch-level MixUp / CutMix, timm's parameters (runtime/mix.py)."""

    mixup_alpha: float
    cutmix_alpha: float
    prob: float
    switch_prob: float


@dataclass(frozen=True)
class ValSplit:
    """data.val = { split, seed }: the validation set taken from data.train (ftcompile/split.py)."""

    split: float
    seed: int


@dataclass(frozen=True)
class DataSpec:
    """The [data] table as validated, plus what the compiler counted and derived."""

    train: str | None
    val: str | ValSplit | None
    builtin: str | None
    classes: list[str]
    image_size: int
    batch_size: int
    workers: int
    # torchvision.transforms.v2 ops, {"op": class name, **its keyword arguments}: the user's
    # tables, checked against the class signatures by the compiler.
    augment: list[JSONObject]
    balance: str
    label_smoothing: float
    drop_last: bool
    train_size: int
    val_size: int
    class_names: list[str]
    class_counts: list[int]  # train images per class; all 0 when planned with --dataset-size
    steps_per_epoch: int
    mean: list[float]
    std: list[float]
    mix: MixSpec | None = field(default=None, metadata=OPTIONAL_FIELD)
    # the shorter side before the val centre crop; None: image_size / 0.875
    val_resize: int | None = field(default=None, metadata=OPTIONAL_FIELD)
    val_crop: int | None = field(default=None, metadata=OPTIONAL_FIELD)  # None: image_size
    # data.val = { split, seed }: the files of each split, "class/relative/path", as the compiler
    # chose them (ftcompile/split.py); the runtime reads exactly these. None: no split, or
    # compiled where the folder is absent (the runtime then makes the split from the folder).
    split_files: dict[str, list[str]] | None = field(default=None, metadata=OPTIONAL_FIELD)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> DataSpec:
        val = d["val"]
        return DataSpec(
            **{
                **d,
                "val": ValSplit(**val) if isinstance(val, dict) else val,
                "mix": MixSpec(**d["mix"]) if d.get("mix") else None,
            }
        )

    def sources(self) -> dict[str, Any]:
        """Where the samples come from, in the recipe's table form that `datasets.resolve_splits`
        and `count_data` read."""
        val = self.val
        return {
            "builtin": self.builtin,
            "train": self.train,
            "val": {"split": val.split, "seed": val.seed} if isinstance(val, ValSplit) else val,
            "classes": self.classes,
            **({"split_files": self.split_files} if self.split_files is not None else {}),
        }

    @property
    def val_preprocessing(self) -> ValPreprocessing:
        """The one home of the validation preprocessing rule, read by the data loading
        (runtime/data.py), eval and predict, `plan`'s output and export's sidecar.

        `data.val_resize` and `data.val_crop` when the recipe sets them; else photos are
        resized to image_size / 0.875 and centre-cropped to image_size, and the builtin
        digits, whose 8x8 images are drawn to the border, are resized to image_size (the
        crop then cuts nothing, so no stroke is lost and val sees an un-augmented train
        image's framing)."""
        if self.val_resize is not None:
            resize = self.val_resize
        elif self.builtin is not None:
            resize = self.image_size
        else:
            resize = round(self.image_size / VAL_CROP_FRACTION)
        return ValPreprocessing(resize, self.val_crop or self.image_size, tuple(self.mean), tuple(self.std))


@dataclass(frozen=True)
class OptimizerSpec:
    type: str  # a torch.optim class
    # Its keyword arguments: the user's mapping, checked against the class signature by the
    # compiler, passed to it as written.
    kwargs: JSONObject
    no_decay: str | list[str]
    clip_grad_norm: float | None = field(default=None, metadata=OPTIONAL_FIELD)
    clip_grad_value: float | None = field(default=None, metadata=OPTIONAL_FIELD)


@dataclass(frozen=True)
class EmaSpec:
    """[run] ema: an exponential moving average of the weights (runtime/ema.py)."""

    decay: float
    every: int  # steps between updates
    warmup: bool  # timm's warmup of the decay


@dataclass(frozen=True)
class RunSpec:
    """The [run] table with durations in steps, and which group owns each BatchNorm layer."""

    device: str
    precision: str
    channels_last: bool
    deterministic: bool
    compile: bool
    checkpoint_every: int  # 0: "never" (phase ends only, as keep_checkpoints needs)
    eval_every: int
    bn_modules: dict[str, str]  # BatchNorm module name -> its group
    keep_best: str | None = field(default=None, metadata=OPTIONAL_FIELD)  # metric of best.pt (None: no best.pt)
    # "boundaries" | "all" | "last" | "none"
    keep_checkpoints: str = field(default=defaults.KEEP_CHECKPOINTS, metadata=OPTIONAL_FIELD)
    # "jsonl" always; "tensorboard"
    log: list[str] = field(default_factory=lambda: list(defaults.LOG), metadata=OPTIONAL_FIELD)
    accumulate: int = field(default=defaults.ACCUMULATE, metadata=OPTIONAL_FIELD)  # micro-batches per optimizer step
    ema: EmaSpec | None = field(default=None, metadata=OPTIONAL_FIELD)
    sync_bn: bool = field(default=defaults.SYNC_BN, metadata=OPTIONAL_FIELD)
    # "portable": pinned instruction sets and threads (ftcompile/portable.py)
    reproducible: str = field(default=defaults.REPRODUCIBLE, metadata=OPTIONAL_FIELD)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> RunSpec:
        return RunSpec(**{**d, **({"ema": EmaSpec(**d["ema"])} if d.get("ema") else {})})


KEEP_CHECKPOINTS = ("boundaries", "all", "last", "none")


def phase_starts(plan: Plan) -> set[int]:
    """Steps where a phase other than the first begins (= where the one before it ends):
    the states trials and `lr-find --from` start from."""
    return {ph.begin for ph in plan.phases[1:]}


def checkpoints_kept(steps: list[int], starts: set[int], policy: str, finished: bool) -> set[int]:
    """Which of the checkpoints at `steps` `[run] keep_checkpoints = policy` keeps.

    | policy | while running | once finished (model.pt written) |
    |---|---|---|
    | "boundaries" (default) | the newest + the phase starts | the phase starts |
    | "all" | every one written | every one written |
    | "last" | the newest | the newest (the final state, optimizer included) |
    | "none" | the newest (for resume) | none |
    """
    if policy not in KEEP_CHECKPOINTS:
        raise ValueError(f"keep_checkpoints {policy!r} is not one of {KEEP_CHECKPOINTS}")
    if policy == "all" or not steps:
        return set(steps)
    newest = {max(steps)}
    at_starts = {s for s in steps if s in starts}
    if policy == "boundaries":
        return at_starts if finished else newest | at_starts
    if policy == "last":
        return newest
    return set() if finished else newest


@dataclass(frozen=True)
class ParamGroup:
    name: str
    group: str
    decay: bool
    params: tuple[str, ...]
    numel: int


@dataclass(frozen=True)
class GroupSpec:
    """A recipe group: its selectors as written and the parameters they cover."""

    name: str
    selectors: tuple[str, ...]
    numel: int


@dataclass(frozen=True)
class LRWindow:
    """A trained group's LR over a phase, from the trace (ftcompile/trace.py)."""

    first: float
    peak: float
    last: float


def lr_windows(table: Mapping[str, Mapping[str, float]]) -> dict[str, LRWindow]:
    """group -> its window, from plan.json."""
    return {g: LRWindow(**w) for g, w in table.items()}


@dataclass(frozen=True)
class TrialPlan:
    """One alternative of a trial phase: its values, LRs and the changes of its window."""

    k: int
    label: str
    values: dict[str, Any]  # trial key -> value
    train: tuple[str, ...]
    lr: dict[str, LRWindow]  # trained group -> its LR window
    changes: tuple[Change, ...]  # replace the phase's `trial` change when this alternative runs


@dataclass(frozen=True)
class Prune:
    """Successive halving inside a trial phase (`trials.prune`): at step `at[i]` every
    alternative still running is evaluated (an `evaluate` change in its own change list) and
    the best `keep[i]` of them on `select` go on (non-finite values rank last, ties keep the
    earlier); the others stop there. A survivor's steps and LR window are those it takes
    without pruning: pruning only decides who continues."""

    at: tuple[int, ...]  # rung steps (absolute), increasing, strictly inside the phase's window
    keep: tuple[int, ...]  # how many alternatives go on past each rung, decreasing, >= 1

    def stretches(self, n: int, begin: int, end: int) -> tuple[tuple[int, int, int], ...]:
        """(from step, to step, alternatives running) from the phase start rung by rung to its end."""
        points = (begin, *self.at, end)
        running = (n, *self.keep)
        return tuple((points[i], points[i + 1], running[i]) for i in range(len(running)))

    def steps(self, n: int, begin: int, end: int) -> int:
        """Optimizer steps the trial phase takes: every alternative to the first rung, the
        survivors of each rung to the next, the last survivors to the end."""
        return sum((b - a) * k for a, b, k in self.stretches(n, begin, end))


@dataclass(frozen=True)
class TrialsPlan:
    """The alternatives of a phase; each starts from the phase-start state, `select` picks one."""

    select: str  # val_top1 | val_top5 | val_loss
    mode: str
    keep: str  # winner | all: whose end checkpoints stay in trials/<phase>/<k>/
    alternatives: tuple[TrialPlan, ...]
    # successive halving: rung steps and how many go on at each
    prune: Prune | None = field(default=None, metadata=OPTIONAL_FIELD)

    def steps(self, begin: int, end: int) -> int:
        """Optimizer steps the phase's alternatives take together (every whole window without `prune`)."""
        n = len(self.alternatives)
        return self.prune.steps(n, begin, end) if self.prune else n * (end - begin)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrialsPlan:
        alts = tuple(
            TrialPlan(
                **{
                    **a,
                    "train": tuple(a["train"]),
                    "lr": lr_windows(a["lr"]),
                    "changes": tuple(Change.from_json(c) for c in a["changes"]),
                }
            )
            for a in data["alternatives"]
        )
        prune = data.get("prune")
        prune = Prune(at=tuple(prune["at"]), keep=tuple(prune["keep"])) if prune is not None else None
        return TrialsPlan(**{**data, "alternatives": alts, "prune": prune})


@dataclass(frozen=True)
class SchedulerSpec:
    """A phase's scheduler as the recipe gives it, its arguments resolved."""

    type: str  # a torch.optim.lr_scheduler class
    # Its keyword arguments, checked against the class signature by the compiler; a dict value
    # holds one value per group (from an `lr` expression).
    args: JSONObject


@dataclass(frozen=True)
class SchedulerStart:
    """The value of a `scheduler` change: a fresh scheduler over the phase's param groups,
    stepped until optimizer step `end` (apply.Executor)."""

    type: str
    param_groups: tuple[str, ...]
    args: JSONObject  # one value per argument, or a list of one per param group
    end: int


@dataclass(frozen=True)
class FeatureCacheSpec:
    """A phase's feature-cache decision (ftcompile/cache.py): whether the head trains on
    features of `module`'s input computed once, and why (or why not)."""

    on: bool
    why: str
    module: str | None  # the head module, or None where the head is not one module


@dataclass(frozen=True)
class StopEarlySpec:
    """End the phase after `patience` evaluations without an improvement > `min_delta` of `metric`."""

    metric: str
    patience: int
    min_delta: float


@dataclass(frozen=True)
class PhaseData:
    """A phase's own data (per-phase overrides): the batch of step s is batch
    (s - data_begin) % steps_per_epoch of epoch epoch_base + (s - data_begin) // steps_per_epoch."""

    image_size: int
    batch_size: int
    augment: list[JSONObject]  # as DataSpec.augment
    mix: MixSpec | None
    steps_per_epoch: int
    data_begin: int  # the step where this data segment begins
    epoch_base: int  # the epoch number of its first epoch

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> PhaseData:
        return PhaseData(**{**d, "mix": MixSpec(**d["mix"]) if d["mix"] else None})


@dataclass(frozen=True)
class PhasePlan:
    name: str
    after: tuple[str, ...]
    begin: int
    end: int
    epochs: float
    train: tuple[str, ...]
    trainable_params: int
    trainable_pct: float
    bn: str
    optimizer_state: str
    scheduler: SchedulerSpec | None
    lr: dict[str, LRWindow]  # trained group -> its LR window
    cache: FeatureCacheSpec
    # with stop_early, `end` is an upper bound
    stop_early: StopEarlySpec | None = field(default=None, metadata=OPTIONAL_FIELD)
    # the metric whose best evaluation the phase ends with
    restore_best: str | None = field(default=None, metadata=OPTIONAL_FIELD)
    # The phase's own data (per-phase overrides), or None: the recipe's [data] from step 0.
    data: PhaseData | None = field(default=None, metadata=OPTIONAL_FIELD)
    # the phase's fields are then its first alternative's
    trials: TrialsPlan | None = field(default=None, metadata=OPTIONAL_FIELD)

    @staticmethod
    def from_json(p: Mapping[str, Any]) -> PhasePlan:
        return PhasePlan(
            **{
                **p,
                "after": tuple(p["after"]),
                "train": tuple(p["train"]),
                "scheduler": SchedulerSpec(**p["scheduler"]) if p["scheduler"] else None,
                "lr": lr_windows(p["lr"]),
                "cache": FeatureCacheSpec(**p["cache"]),
                "stop_early": StopEarlySpec(**p["stop_early"]) if p.get("stop_early") else None,
                "data": PhaseData.from_json(p["data"]) if p.get("data") else None,
                "trials": TrialsPlan.from_dict(p["trials"]) if p.get("trials") else None,
            }
        )


# What a change sets: a param group field's number (set), a BatchNorm mode or a head module
# (bn, features), a scheduler to start (scheduler); None for the rest.
ChangeValue: TypeAlias = float | str | SchedulerStart | None


@dataclass(frozen=True)
class Change:
    """One generic record: at `step`, do `op` to `target` (a group, param group or phase)."""

    step: int
    op: Op
    target: str | None = None
    field: str | None = None
    value: ChangeValue = None

    @staticmethod
    def from_json(c: Mapping[str, Any]) -> Change:
        op, value = Op(c["op"]), c.get("value")
        if op is Op.SCHEDULER and value is not None:
            value = SchedulerStart(**{**value, "param_groups": tuple(value["param_groups"])})
        return Change(**{**c, "op": op, "value": value})


@dataclass(frozen=True)
class RecipeRecord:
    """The recipe a plan was compiled from."""

    name: str
    file: str  # its file name
    source_hash: str  # of its text
    overrides: tuple[str, ...] = field(default=(), metadata=OPTIONAL_FIELD)  # --set KEY=VALUE, in order


@dataclass(frozen=True)
class Plan:
    format: int
    recipe: RecipeRecord
    versions: dict[str, str]  # torch, torchvision, ftcompile
    seed: int
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec
    groups: tuple[GroupSpec, ...]
    param_groups: tuple[ParamGroup, ...]
    phases: tuple[PhasePlan, ...]
    changes: tuple[Change, ...]
    run: RunSpec
    total_steps: int
    hash: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.canonical_body())  # tuples -> lists, exactly as in the file
        return body

    def canonical_body(self) -> str:
        """canonical(asdict(self) without "hash"), without asdict's deep copy of every value:
        a plan of 1000 phases holds ~10^5 changes. `plan_hash(self.to_dict())` hashes this string."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hash"}
        return json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_dataclass_fields
        )

    def to_json(self) -> str:
        return json.dumps({**self.to_dict(), "hash": self.hash}, indent=1, sort_keys=True, allow_nan=False)

    @property
    def steps_with_trials(self) -> int:
        """Optimizer steps a run takes: every alternative runs its phase's whole window, or with
        `prune` up to the rung where it stops."""
        return self.total_steps + sum(
            ph.trials.steps(ph.begin, ph.end) - (ph.end - ph.begin) for ph in self.phases if ph.trials
        )

    def trial_changes(self, chosen: dict[str, int]) -> tuple[Change, ...]:
        """The change list with each trial phase's `trial` change replaced by the changes of
        alternative `chosen[phase]`; phases not in `chosen` keep their `trial` change."""
        if not chosen:
            return self.changes
        by_phase = {ph.name: ph.trials for ph in self.phases if ph.trials}
        out: list[Change] = []
        for c in self.changes:
            if c.op == Op.TRIAL and c.target in chosen:
                out.extend(by_phase[c.target].alternatives[chosen[c.target]].changes)
            else:
                out.append(c)
        return tuple(out)

    def evaluations(self, phase: str) -> int:
        """The evaluations the plan holds for a phase. A trial phase's are in its alternatives'
        change lists (the main list holds one `trial` change): every alternative runs the same
        window at the same cadence, so the first one's are counted."""
        chosen = {ph.name: 0 for ph in self.phases if ph.name == phase and ph.trials}
        return sum(1 for c in self.trial_changes(chosen) if c.op == Op.EVALUATE and c.target == phase)

    def phase_at(self, step: int) -> PhasePlan:
        for phase in self.phases:
            if phase.begin <= step < phase.end:
                return phase
        return self.phases[-1]

    @property
    def param_group_names(self) -> list[str]:
        return [pg.name for pg in self.param_groups]

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "plan.json") -> Plan:
        if data.get("format") != FORMAT:
            raise RecipeError(
                f"plan format {data.get('format')!r} is not {FORMAT}",
                file=source,
                key="format",
                suggestion="compile the recipe again with this ftcompile: ftcompile plan RECIPE -o plan.json",
            )
        stored = data.get("hash")
        # `plan --json --estimate` prints the cost estimate beside the plan: not part of it.
        body = {k: v for k, v in data.items() if k not in ("hash", "estimate")}
        if stored != plan_hash(body):
            raise RecipeError(
                "plan hash does not match its content (edited by hand or damaged)",
                file=source,
                key="hash",
                suggestion="do not edit plan.json; change the recipe and compile it again",
            )
        check_fields(body, source)
        try:
            recipe = body["recipe"]
            return Plan(
                **{
                    **body,
                    "recipe": RecipeRecord(**{**recipe, "overrides": tuple(recipe.get("overrides", ()))}),
                    "model": ModelSpec.from_json(body["model"]),
                    "data": DataSpec.from_json(body["data"]),
                    "optimizer": OptimizerSpec(**body["optimizer"]),
                    "run": RunSpec.from_json(body["run"]),
                    "groups": tuple(GroupSpec(**{**g, "selectors": tuple(g["selectors"])}) for g in body["groups"]),
                    "param_groups": tuple(
                        ParamGroup(**{**p, "params": tuple(p["params"])}) for p in body["param_groups"]
                    ),
                    "phases": tuple(PhasePlan.from_json(p) for p in body["phases"]),
                    "changes": tuple(Change.from_json(c) for c in body["changes"]),
                    "hash": stored,
                }
            )
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise RecipeError(
                f"not a plan: {exc}", file=source, suggestion="pass a file written by ftcompile plan -o"
            ) from None

    @staticmethod
    def load(path: str | Path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RecipeError(
                f"cannot read plan: {exc}", file=path, suggestion="pass a file written by ftcompile plan -o"
            ) from None
        if not isinstance(data, dict):
            raise RecipeError("not a plan", file=path)
        return Plan.from_dict(data, str(path))


def check_fields(body: dict[str, Any], source: str) -> None:
    """What the runtime turns into paths or seeds, checked as the compiler checks a recipe.

    The hash only proves that a plan is intact, not that ftcompile wrote it: anyone can
    recompute a sha256. So a plan.json naming its recipe `../../x` (the run directory is
    runs/<name>/) or a phase `../x` (trials/<phase>/), or carrying a seed numpy refuses, is
    refused here, before anything is made; so is an upstream plan embedded in it.
    """
    from ftcompile.schema import MAX_NAME, MAX_SEED, SLUG, folder_name_problem  # start-up time: pydantic, 0.9 s

    recipe = body.get("recipe")
    name = recipe.get("name") if isinstance(recipe, dict) else None
    slug = isinstance(name, str) and re.fullmatch(SLUG, name) and len(name) <= MAX_NAME
    # a slug may still be a Windows device: con
    problem = folder_name_problem(name) if slug and isinstance(name, str) else "is not a slug"
    if problem:
        raise RecipeError(
            f"recipe name {name!r} {problem} (it names the run directory runs/<name>/)",
            file=source,
            key="recipe.name",
            suggestion="use lower-case letters, digits, '.', '_' and '-'; compile the recipe with ftcompile plan -o",
        )
    seed = body.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise RecipeError(f"seed {seed!r} is not an integer in 0 .. 2**32 - 1", file=source, key="seed")
    phases = body.get("phases")
    for i, phase in enumerate(phases if isinstance(phases, list) else []):
        phase_name = phase.get("name") if isinstance(phase, dict) else None
        problem = folder_name_problem(phase_name) if isinstance(phase_name, str) else "is not a string"
        if problem:
            raise RecipeError(
                f"phase name {phase_name!r} {problem} (it names the folder trials/<phase>/)",
                file=source,
                key=f"phases[{i}].name",
                suggestion="compile the recipe with ftcompile plan -o",
            )
    model = body.get("model")
    weights = model.get("weights") if isinstance(model, dict) else None
    upstream = weights.get("plan") if isinstance(weights, dict) else None
    if isinstance(upstream, dict):
        check_fields(upstream, f"{source} (the upstream plan in model.weights)")


def optional_defaults(record: type) -> dict[str, Any]:
    """The fields of a plan record declared with `metadata=OPTIONAL_FIELD`, and their defaults."""
    return {
        f.name: f.default_factory() if f.default_factory is not MISSING else f.default
        for f in fields(record)
        if f.metadata.get("optional")
    }


def _is_record(obj: Any) -> bool:
    return isinstance(obj, type) and is_dataclass(obj)


# Every record of the plan (the dataclasses of this module) -> its optional fields and their
# defaults: each is left out of the JSON at its default value, so older plans keep their hash.
OPTIONAL: dict[type, dict[str, Any]] = {
    cls: declared
    for cls in list(globals().values())
    if _is_record(cls) and cls.__module__ == __name__ and (declared := optional_defaults(cls))
}
# How each record becomes JSON, by type (a plan holds ~10^5 changes: one dict lookup each).
_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _encoder(record: type) -> Callable[[Any], dict[str, Any]]:
    omit = optional_defaults(record)
    if not omit:
        return vars  # __dict__ is a frozen dataclass's fields
    return lambda obj: {k: v for k, v in vars(obj).items() if k not in omit or v != omit[k]}


def _dataclass_fields(obj: Any) -> dict[str, Any]:
    """json.dumps hook: a plan record as its fields, as asdict gives, less its optional fields
    at their defaults."""
    encode = _ENCODERS.get(type(obj))
    if encode is None:
        if not (is_dataclass(obj) and not isinstance(obj, type)):
            raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
        encode = _ENCODERS[type(obj)] = _encoder(type(obj))
    return encode(obj)


def as_json(obj: Any) -> Any:
    """A plan record (or anything holding records) as plan.json holds it: dicts and lists."""
    return json.loads(json.dumps(obj, default=_dataclass_fields))


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def plan_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(body).encode()).hexdigest()
