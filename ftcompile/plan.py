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
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ftcompile.errors import RecipeError

FORMAT = 1


class Op(str, Enum):
    """What a change does. A str enum: it is its own JSON value ("set", ...)."""

    PHASE = "phase"  # a phase begins (for logs)
    FREEZE = "freeze"  # requires_grad off, gradient cleared
    UNFREEZE = "unfreeze"
    BN = "bn"  # BatchNorm of a group in eval ("frozen") or train mode
    FEATURES = "features"  # train the head on cached inputs (value: head module) or stop (None)
    SET = "set"  # a param group's field (lr, weight_decay, momentum) = value
    RESET_STATE = "reset_state"  # clear a param group's optimizer state
    SCHEDULER = "scheduler"  # start a scheduler (value: its spec) or none
    EVALUATE = "evaluate"
    CHECKPOINT = "checkpoint"
    TRIAL = "trial"  # the phase's alternatives run here (target: phase); see PhasePlan.trials

    def __str__(self) -> str:
        return self.value


# Change ops that act on the optimizer (the rest act on the model or the loop).
OPTIMIZER_OPS = (Op.SET, Op.SCHEDULER, Op.RESET_STATE)


@dataclass(frozen=True)
class WeightsSpec:
    """Where the starting weights come from: `kind` torchvision | file | recipe | none.

    For kind "recipe", `plan` is the upstream recipe's whole plan (its hash covers it) and
    `root` that recipe's folder relative to this one's.
    """

    kind: str
    value: str | None
    root: str | None = None
    plan: dict[str, Any] | None = None

    def json_fields(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None or k == "value"}


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    weights: WeightsSpec
    num_classes: int
    head: dict[str, Any] | None  # the [model.head] table as validated, or None (a single Linear)
    total_params: int
    builder_args: dict[str, Any] = field(default_factory=dict)  # extra torchvision builder kwargs
    head_weights: str = "new"  # "load": the weights file's head tensors are loaded too


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
class DataSpec:
    """The [data] table as validated, plus what the compiler counted and derived."""

    train: str | None
    val: str | None
    builtin: str | None
    classes: list[str]
    image_size: int
    batch_size: int
    workers: int
    augment: list[dict[str, Any]]
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
    mix: dict[str, float] | None = None  # MixUp/CutMix: mixup_alpha, cutmix_alpha, prob, switch_prob
    val_resize: int | None = None  # shorter side before the val centre crop; None: image_size / 0.875
    val_crop: int | None = None  # None: image_size
    # data.val = { split, seed }: the files of each split, "class/relative/path", as the compiler
    # chose them (ftcompile/split.py); the runtime reads exactly these. None: no split, or
    # compiled where the folder is absent (the runtime then makes the split from the folder).
    split_files: dict[str, list[str]] | None = None

    def sources(self) -> dict[str, Any]:
        """Where the samples come from, as `datasets.resolve_splits` / `count_data` read it."""
        return {
            "builtin": self.builtin,
            "train": self.train,
            "val": self.val,
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
    kwargs: dict[str, Any]  # its arguments, checked against its signature
    no_decay: str | list[str]
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None


DEFAULT_LOG = ("jsonl",)


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
    bn_modules: dict[str, str]
    keep_best: str | None = None  # metric of best.pt (None: no best.pt)
    keep_checkpoints: str = "boundaries"  # "boundaries" | "all" | "last" | "none"
    log: list[str] = field(default_factory=lambda: list(DEFAULT_LOG))  # "jsonl" always; "tensorboard"
    accumulate: int = 1  # micro-batches per optimizer step
    ema: dict[str, Any] | None = None  # {"decay", "every" (steps), "warmup"}
    sync_bn: bool = False
    reproducible: str = "machine"  # "portable": pinned instruction sets and threads (ftcompile/portable.py)


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
class TrialPlan:
    """One alternative of a trial phase: its values, LRs and the changes of its window."""

    k: int
    label: str
    values: dict[str, Any]  # trial key -> value
    train: tuple[str, ...]
    lr: dict[str, dict[str, float]]  # group -> {"first", "peak", "last"}
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
    prune: Prune | None = None  # successive halving: rung steps and how many go on at each

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
                    "changes": tuple(Change(**{**c, "op": Op(c["op"])}) for c in a["changes"]),
                }
            )
            for a in data["alternatives"]
        )
        prune = data.get("prune")
        prune = Prune(at=tuple(prune["at"]), keep=tuple(prune["keep"])) if prune is not None else None
        return TrialsPlan(**{**data, "alternatives": alts, "prune": prune})


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
    scheduler: dict[str, Any] | None
    lr: dict[str, dict[str, float]]  # group -> {"first", "peak", "last"}
    cache: dict[str, Any]  # feature cache: {"on", "why", "module"}
    stop_early: dict[str, Any] | None = None  # {"metric", "patience", "min_delta"}: end = an upper bound
    restore_best: str | None = None  # metric whose best evaluation the phase ends with
    # The phase's own data (per-phase overrides), or None: the recipe's [data] from step 0.
    # {"image_size", "batch_size", "augment", "mix", "steps_per_epoch", "data_begin", "epoch_base"}:
    # the batch of step s is batch (s - data_begin) % steps_per_epoch of epoch
    # epoch_base + (s - data_begin) // steps_per_epoch.
    data: dict[str, Any] | None = None
    trials: TrialsPlan | None = None  # the phase's fields are then its first alternative's


@dataclass(frozen=True)
class Change:
    """One generic record: at `step`, do `op` to `target` (a group, param group or phase)."""

    step: int
    op: Op
    target: str | None = None
    field: str | None = None
    value: Any = None


@dataclass(frozen=True)
class Plan:
    format: int
    recipe: dict[str, Any]
    versions: dict[str, str]
    seed: int
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec
    groups: tuple[dict[str, Any], ...]
    param_groups: tuple[ParamGroup, ...]
    phases: tuple[PhasePlan, ...]
    changes: tuple[Change, ...]
    run: RunSpec
    total_steps: int
    hash: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.canonical_body())  # tuples -> lists, exactly as in the file

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
            return Plan(
                **{
                    **body,
                    "model": ModelSpec(**{**body["model"], "weights": WeightsSpec(**body["model"]["weights"])}),
                    "data": DataSpec(**body["data"]),
                    "optimizer": OptimizerSpec(**body["optimizer"]),
                    "run": RunSpec(**body["run"]),
                    "groups": tuple(body["groups"]),
                    "param_groups": tuple(
                        ParamGroup(**{**p, "params": tuple(p["params"])}) for p in body["param_groups"]
                    ),
                    "phases": tuple(
                        PhasePlan(
                            **{
                                **p,
                                "after": tuple(p["after"]),
                                "train": tuple(p["train"]),
                                "trials": TrialsPlan.from_dict(p["trials"]) if p.get("trials") else None,
                            }
                        )
                        for p in body["phases"]
                    ),
                    "changes": tuple(Change(**{**c, "op": Op(c["op"])}) for c in body["changes"]),
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
    from ftcompile.schema import MAX_NAME, MAX_SEED, SLUG, folder_name_problem

    recipe = body.get("recipe")
    name = recipe.get("name") if isinstance(recipe, dict) else None
    slug = isinstance(name, str) and re.fullmatch(SLUG, name) and len(name) <= MAX_NAME
    problem = folder_name_problem(name) if slug else "is not a slug"  # a slug may still be a Windows device: con
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


def _dataclass_fields(obj: Any) -> dict[str, Any]:
    """json.dumps hook: a nested dataclass (ParamGroup, PhasePlan, Change, the sections) as its
    fields, as asdict gives, or as its own `json_fields()` where it leaves out empty ones."""
    if type(obj) in OPTIONAL:  # fields added later are left out at their default: older plans keep their hash
        return {k: v for k, v in vars(obj).items() if k not in OPTIONAL[type(obj)] or v != OPTIONAL[type(obj)][k]}
    if type(obj) in (
        Change,
        ParamGroup,
        PhasePlan,
        ModelSpec,
        DataSpec,
        OptimizerSpec,
        RunSpec,
    ):  # __dict__ is their fields
        return vars(obj)
    if hasattr(obj, "json_fields"):
        return obj.json_fields()
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in fields(obj)}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# Fields added after format 1's first plans (training knobs, metric-driven phases, retention,
# logging): each is left out of the JSON at its default value, so older plans keep their hash.
OPTIONAL: dict[type, dict[str, Any]] = {
    ModelSpec: {"builder_args": {}, "head_weights": "new"},
    DataSpec: {"mix": None, "val_resize": None, "val_crop": None, "split_files": None},
    OptimizerSpec: {"clip_grad_norm": None, "clip_grad_value": None},
    RunSpec: {
        "accumulate": 1,
        "ema": None,
        "sync_bn": False,
        "keep_best": None,
        "keep_checkpoints": "boundaries",
        "log": list(DEFAULT_LOG),
        "reproducible": "machine",
    },
    PhasePlan: {"data": None, "stop_early": None, "restore_best": None, "trials": None},
    TrialsPlan: {"prune": None},
}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def plan_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def change_dict(change: Change) -> dict[str, Any]:
    """`asdict(change)` for the Executor; only a container value (a scheduler spec) is copied,
    not every float of ~10^5 `set` changes."""
    value = change.value
    return {
        "step": change.step,
        "op": change.op,
        "target": change.target,
        "field": change.field,
        "value": _copied(value),
    }


def _copied(value: Any) -> Any:
    """What asdict does to a JSON-like value: containers copied, scalars shared."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    return value
