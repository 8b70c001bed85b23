"""Stage 5: the execution plan — plain data with a format version and a stable hash.

The runtime applies `changes` in order, each when `step` optimizer steps have been taken,
so "at step S" means "after S steps, before step S+1". Evaluations and checkpoints at a
phase boundary come before the next phase's changes. Every optimizer param group is named
(`head`, `head.no_decay`, ...); a group's no-decay part has weight_decay 0 for the whole run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from ftcompile.errors import RecipeError
from ftcompile.resolve import Resolved, ResolvedPhase

FORMAT = 1
# Change ops that act on the optimizer (the rest act on the model or the loop).
OPTIMIZER_OPS = ("set", "scheduler", "reset_state")


@dataclass(frozen=True)
class ParamGroup:
    name: str
    group: str
    decay: bool
    params: tuple[str, ...]
    numel: int


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


@dataclass(frozen=True)
class Change:
    """One generic record: at `step`, do `op` to `target` (a group, param group or phase)."""

    step: int
    op: str  # phase | freeze | unfreeze | bn | features | set | reset_state | scheduler | evaluate | checkpoint
    target: str | None = None
    field: str | None = None
    value: Any = None


@dataclass(frozen=True)
class Plan:
    format: int
    recipe: dict[str, Any]
    versions: dict[str, str]
    seed: int
    model: dict[str, Any]
    data: dict[str, Any]
    optimizer: dict[str, Any]
    groups: tuple[dict[str, Any], ...]
    param_groups: tuple[ParamGroup, ...]
    phases: tuple[PhasePlan, ...]
    changes: tuple[Change, ...]
    run: dict[str, Any]
    total_steps: int
    hash: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.canonical_body())  # tuples -> lists, exactly as in the file

    def canonical_body(self) -> str:
        """canonical(asdict(self) without "hash"), without asdict's deep copy of every value:
        a plan of 1000 phases holds ~10^5 changes. `plan_hash(self.to_dict())` hashes this string."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hash"}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=_dataclass_fields)

    def to_json(self) -> str:
        return json.dumps({**self.to_dict(), "hash": self.hash}, indent=1, sort_keys=True, allow_nan=False)

    def phase_at(self, step: int) -> PhasePlan:
        for phase in self.phases:
            if phase.begin <= step < phase.end:
                return phase
        return self.phases[-1]

    @property
    def param_group_names(self) -> list[str]:
        return [pg.name for pg in self.param_groups]

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "plan.json") -> "Plan":
        if data.get("format") != FORMAT:
            raise RecipeError(
                f"plan format {data.get('format')!r} is not {FORMAT}",
                file=source,
                key="format",
                suggestion="compile the recipe again with this ftcompile: ftcompile plan RECIPE -o plan.json",
            )
        stored = data.get("hash")
        body = {k: v for k, v in data.items() if k != "hash"}
        if stored != plan_hash(body):
            raise RecipeError(
                "plan hash does not match its content (edited by hand or damaged)",
                file=source,
                key="hash",
                suggestion="do not edit plan.json; change the recipe and compile it again",
            )
        try:
            return Plan(
                **{
                    **body,
                    "groups": tuple(body["groups"]),
                    "param_groups": tuple(ParamGroup(**{**p, "params": tuple(p["params"])}) for p in body["param_groups"]),
                    "phases": tuple(
                        PhasePlan(**{**p, "after": tuple(p["after"]), "train": tuple(p["train"])}) for p in body["phases"]
                    ),
                    "changes": tuple(Change(**c) for c in body["changes"]),
                    "hash": stored,
                }
            )
        except (TypeError, KeyError) as exc:
            raise RecipeError(f"not a plan: {exc}", file=source, suggestion="pass a file written by ftcompile plan -o") from None

    @staticmethod
    def load(path: str | Path) -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RecipeError(f"cannot read plan: {exc}", file=path, suggestion="pass a file written by ftcompile plan -o") from None
        if not isinstance(data, dict):
            raise RecipeError("not a plan", file=path)
        return Plan.from_dict(data, str(path))


def _dataclass_fields(obj: Any) -> dict[str, Any]:
    """json.dumps hook: a nested dataclass (ParamGroup, PhasePlan, Change) as its fields, as asdict gives."""
    if type(obj) in (Change, ParamGroup, PhasePlan):  # plain frozen dataclasses: __dict__ is their fields
        return vars(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in fields(obj)}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def plan_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(body).encode()).hexdigest()


# ---------------------------------------------------------------- building


def param_groups(resolved: Resolved) -> tuple[ParamGroup, ...]:
    """Each recipe group splits into its decay part and its no-decay part (when non-empty)."""
    out = []
    for g in resolved.groups:
        decay = tuple(p for p in g.params if p not in resolved.no_decay)
        plain = tuple(p for p in g.params if p in resolved.no_decay)
        for part, is_decay, name in ((decay, True, g.name), (plain, False, f"{g.name}.no_decay")):
            if part:
                out.append(ParamGroup(name, g.name, is_decay, part, sum(resolved.numels[p] for p in part)))
    return tuple(out)


class _Tracker:
    """Emits a `set` only when the value differs from what the optimizer holds."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}
        self.changes: list[Change] = []

    def set(self, step: int, target: str, field: str, value: Any, force: bool = False) -> None:
        if force or self.values.get((target, field)) != value:
            self.changes.append(Change(step, "set", target, field, value))
        self.values[(target, field)] = value


def _base(opt: dict[str, Any], name: str) -> float | None:
    from ftcompile.apply import optimizer_class
    from ftcompile.resolve import _init_params

    kwargs = opt["kwargs"]
    if name in kwargs:
        return kwargs[name]
    if name == "momentum" and "betas" in kwargs:
        return kwargs["betas"][0]
    params = _init_params(optimizer_class(opt["type"]))
    if name in params:
        default = params[name].default
        return default if isinstance(default, (int, float)) else None
    if name == "momentum" and "betas" in params:
        return params["betas"].default[0]
    return None


def _phase_changes(
    ph: ResolvedPhase,
    resolved: Resolved,
    pgs: tuple[ParamGroup, ...],
    state: dict[str, Any],
    tracker: _Tracker,
) -> None:
    s = ph.begin
    train = set(ph.train)
    tracker.changes.append(Change(s, "phase", ph.name))
    bn_groups = set(resolved.bn_groups.values())
    for g in resolved.groups:
        trained = g.name in train
        if state["trained"].get(g.name) != trained:
            tracker.changes.append(Change(s, "unfreeze" if trained else "freeze", g.name))
            state["trained"][g.name] = trained
        mode = "frozen" if (ph.bn == "frozen" and not trained) else "train"
        if g.name in bn_groups and state["bn"].get(g.name) != mode:
            tracker.changes.append(Change(s, "bn", g.name, value=mode))
            state["bn"][g.name] = mode
    cache = ph.cache["module"] if ph.cache["on"] else None
    if cache != state.get("cache"):
        # Train the head on features of the frozen part computed once (None: stop doing so).
        tracker.changes.append(Change(s, "features", ph.name, value=cache))
        state["cache"] = cache
    base_wd, base_mom = state["base_wd"], state["base_mom"]
    for pg in pgs:
        trained = pg.group in train
        # A scheduler may have moved lr (and momentum) during the last phase: set them again.
        tracker.set(s, pg.name, "lr", ph.lr[pg.group] if trained else 0.0, force=trained)
        if pg.decay and base_wd is not None:
            tracker.set(s, pg.name, "weight_decay", ph.weight_decay.get(pg.group, base_wd))
        if base_mom is not None and trained:
            tracker.set(s, pg.name, "momentum", ph.momentum.get(pg.group, base_mom), force=True)
    trained_pgs = [pg for pg in pgs if pg.group in train]
    if ph.optimizer_state == "reset":
        tracker.changes += [Change(s, "reset_state", pg.name) for pg in trained_pgs]
    tracker.changes.append(Change(s, "scheduler", ph.name, value=_scheduler_spec(ph, trained_pgs)))


def _scheduler_spec(ph: ResolvedPhase, pgs: list[ParamGroup]) -> dict[str, Any] | None:
    """Per-group arguments (from `lr` expressions) become one value per param group; when
    all are equal, a scalar, which every torch scheduler accepts."""
    if ph.scheduler is None:
        return None
    args = {}
    for key, value in ph.scheduler["args"].items():
        if isinstance(value, dict):
            values = [value[pg.group] for pg in pgs]
            value = values[0] if len(set(values)) == 1 else values
        args[key] = value
    return {"type": ph.scheduler["type"], "param_groups": [pg.name for pg in pgs], "args": args, "end": ph.end}


def _boundaries(ph: ResolvedPhase, every: int) -> list[int]:
    return [*range(ph.begin + every, ph.end, every), ph.end]


def build_changes(resolved: Resolved, pgs: tuple[ParamGroup, ...]) -> tuple[Change, ...]:
    state: dict[str, Any] = {
        "trained": {},
        "bn": {},
        "base_wd": _base(resolved.optimizer, "weight_decay"),
        "base_mom": _base(resolved.optimizer, "momentum"),
    }
    tracker = _Tracker()
    for pg in pgs:
        if not pg.decay:
            tracker.values[(pg.name, "weight_decay")] = 0.0
    for ph in resolved.phases:
        _phase_changes(ph, resolved, pgs, state, tracker)
        evals = set(_boundaries(ph, resolved.eval_every))
        ckpts = set(_boundaries(ph, resolved.checkpoint_every))
        for step in sorted(evals | ckpts):
            if step in evals:
                tracker.changes.append(Change(step, "evaluate", ph.name))
            if step in ckpts:
                tracker.changes.append(Change(step, "checkpoint", ph.name))
    return tuple(tracker.changes)


def lr_trace(plan: Plan) -> list[tuple[int, str, list[float]]]:
    """(step, phase, lr of every param group) for every optimizer step, from real schedulers."""
    from ftcompile.apply import Executor, dummy_optimizer

    opt = dummy_optimizer(plan.optimizer["type"], plan.optimizer["kwargs"], len(plan.param_groups))
    for pg, group in zip(plan.param_groups, opt.param_groups):
        if not pg.decay:
            group["weight_decay"] = 0.0
    ex = Executor(opt, plan.param_group_names)
    changes = [c for c in plan.changes if c.op in OPTIMIZER_OPS]
    phase_names = _phase_per_step(plan)
    rows = []
    i = 0
    for step in range(plan.total_steps):
        while i < len(changes) and changes[i].step == step:
            _apply_checked(ex, changes[i])
            i += 1
        rows.append((step, phase_names[step], ex.lrs()))
        _step_checked(ex, step + 1, phase_names[step])
    return rows


def _phase_per_step(plan: Plan) -> list[str]:
    """`plan.phase_at(step).name` for every step, in one pass instead of a scan per step."""
    names = [plan.phases[-1].name] * plan.total_steps
    for phase in reversed(plan.phases):  # the first phase that holds a step wins, as in phase_at
        lo, hi = max(phase.begin, 0), min(phase.end, plan.total_steps)
        names[lo:hi] = [phase.name] * max(0, hi - lo)
    return names


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


def _apply_checked(ex: Any, change: Change) -> None:
    try:
        ex.apply(change_dict(change))
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise RecipeError(
            f"{change.value['type'] if isinstance(change.value, dict) else change.op} rejects its arguments: {exc}",
            key=f"phases.{change.target}.scheduler" if change.op == "scheduler" else "optimizer",
            suggestion="check the scheduler arguments against the torch.optim.lr_scheduler documentation",
        ) from None


def _step_checked(ex: Any, steps_done: int, phase: str) -> None:
    """A scheduler whose arguments only fail (or overflow) when it steps is a recipe error too."""
    key = f"phases.{phase}.scheduler"
    try:
        ex.after_step(steps_done)
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise RecipeError(
            f"the scheduler fails at step {steps_done}: {exc}",
            key=key,
            suggestion="check the scheduler arguments against the torch.optim.lr_scheduler documentation",
        ) from None
    if not all(math.isfinite(lr) for lr in ex.lrs()):
        raise RecipeError(
            f"the scheduler drives an LR to {ex.lrs()} at step {steps_done}",
            key=key,
            suggestion="check the scheduler arguments (gamma, factors); every LR must stay finite",
        )


def _lr_summary(rows: list[tuple[int, str, list[float]]], plan: Plan) -> list[PhasePlan]:
    first_pg: dict[str, int] = {}  # group -> index of its first param group
    for i, pg in enumerate(plan.param_groups):
        first_pg.setdefault(pg.group, i)
    out = []
    for ph in plan.phases:
        window = rows[ph.begin : ph.end]
        lr = {}
        for g in ph.train:
            idx = first_pg[g]
            values = [r[2][idx] for r in window]
            lr[g] = {"first": values[0], "peak": max(values), "last": values[-1]}
        out.append(replace(ph, lr=lr))
    return out


def build_plan(resolved: Resolved, recipe: Any, source_name: str, source_hash: str) -> Plan:
    import torch
    import torchvision

    import ftcompile

    pgs = param_groups(resolved)
    total = resolved.model["total_params"]
    group_numel = {g.name: g.numel for g in resolved.groups}
    changes = build_changes(resolved, pgs)
    phases = tuple(
        PhasePlan(
            name=ph.name,
            after=ph.after,
            begin=ph.begin,
            end=ph.end,
            epochs=float(ph.epochs),
            train=ph.train,
            trainable_params=sum(group_numel[g] for g in ph.train),
            trainable_pct=round(100.0 * sum(group_numel[g] for g in ph.train) / max(total, 1), 2),
            bn=ph.bn,
            optimizer_state=ph.optimizer_state,
            scheduler=ph.scheduler and {"type": ph.scheduler["type"], "args": ph.scheduler["args"]},
            lr={},
            cache=ph.cache,
        )
        for ph in resolved.phases
    )
    draft = Plan(
        format=FORMAT,
        recipe={"name": recipe.name, "file": source_name, "source_hash": source_hash},
        versions={"torch": torch.__version__, "torchvision": torchvision.__version__, "ftcompile": ftcompile.__version__},
        seed=recipe.seed,
        model=resolved.model,
        data=resolved.data,
        optimizer=resolved.optimizer,
        groups=tuple({"name": g.name, "selectors": list(g.selectors), "numel": g.numel} for g in resolved.groups),
        param_groups=pgs,
        phases=phases,
        changes=changes,
        run={
            **recipe.run.model_dump(),
            "eval_every": resolved.eval_every,
            "checkpoint_every": resolved.checkpoint_every,
            "bn_modules": resolved.bn_groups,
        },
        total_steps=resolved.total_steps,
    )
    final = Plan(**{**_shallow(draft), "phases": tuple(_lr_summary(lr_trace(draft), draft))})
    # == plan_hash(final.to_dict()): canonical JSON is unchanged by a JSON round trip.
    return Plan(**{**_shallow(final), "hash": hashlib.sha256(final.canonical_body().encode()).hexdigest()})


def _shallow(plan: Plan) -> dict[str, Any]:
    return {f: getattr(plan, f) for f in plan.__dataclass_fields__}

