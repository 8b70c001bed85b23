"""Stage 5a: the change list — what the runtime does at which step, as generic records.

Each phase becomes its `phase`, freeze/unfreeze, BatchNorm-mode and feature-cache changes,
then one `set` per param group field (lr, weight_decay, momentum) that differs from what the
optimizer holds, then its scheduler; checkpoints and evaluations follow the phase's cadence (at a step where
both fall, the checkpoint comes first).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ftcompile.plan import Change, ChangeValue, Op, ParamGroup, SchedulerStart
from ftcompile.resolve import Resolved, ResolvedPhase
from ftcompile.torch_args import base_value


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


# What the cache state holds after a trial phase: unknown, so the next phase sets it again.
_UNKNOWN = "<after trials>"


@dataclass
class _State:
    """What the model and the optimizer hold after the changes so far."""

    base_wd: float | None  # the optimizer's weight_decay, None when it has none
    base_mom: float | None  # its momentum (or beta1)
    trained: dict[str, bool] = field(default_factory=dict)  # group -> trainable
    bn: dict[str, str] = field(default_factory=dict)  # group -> BatchNorm mode
    cache: str | None = None  # the head module trained on cached features, or None


class _Tracker:
    """Emits a `set` only when the value differs from what the optimizer holds."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], ChangeValue] = {}
        self.changes: list[Change] = []

    def set(self, step: int, target: str, field: str, value: float, force: bool = False) -> None:
        if force or self.values.get((target, field)) != value:
            self.changes.append(Change(step, Op.SET, target, field, value))
        self.values[(target, field)] = value


def _phase_changes(
    ph: ResolvedPhase,
    resolved: Resolved,
    pgs: tuple[ParamGroup, ...],
    state: _State,
    tracker: _Tracker,
) -> None:
    s = ph.begin
    train = set(ph.train)
    tracker.changes.append(Change(s, Op.PHASE, ph.name))
    bn_groups = set(resolved.bn_groups.values())
    for g in resolved.groups:
        trained = g.name in train
        if state.trained.get(g.name) != trained:
            tracker.changes.append(Change(s, Op.UNFREEZE if trained else Op.FREEZE, g.name))
            state.trained[g.name] = trained
        mode = "frozen" if (ph.bn == "frozen" and not trained) else "train"
        if g.name in bn_groups and state.bn.get(g.name) != mode:
            tracker.changes.append(Change(s, Op.BN, g.name, value=mode))
            state.bn[g.name] = mode
    cache = ph.cache.module if ph.cache.on else None
    if cache != state.cache:
        # Train the head on features of the frozen part computed once (None: stop doing so).
        tracker.changes.append(Change(s, Op.FEATURES, ph.name, value=cache))
        state.cache = cache
    base_wd, base_mom = state.base_wd, state.base_mom
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
        tracker.changes += [Change(s, Op.RESET_STATE, pg.name) for pg in trained_pgs]
    tracker.changes.append(Change(s, Op.SCHEDULER, ph.name, value=_scheduler_spec(ph, trained_pgs)))


def _scheduler_spec(ph: ResolvedPhase, pgs: list[ParamGroup]) -> SchedulerStart | None:
    """Per-group arguments (from `lr` expressions) become one value per param group; when
    all are equal, a scalar, which every torch scheduler accepts."""
    if ph.scheduler is None:
        return None
    args = {}
    for key, value in ph.scheduler.args.items():
        if isinstance(value, dict):
            values = [value[pg.group] for pg in pgs]
            value = values[0] if len(set(values)) == 1 else values
        args[key] = value
    return SchedulerStart(type=ph.scheduler.type, param_groups=tuple(pg.name for pg in pgs), args=args, end=ph.end)


def _boundaries(ph: ResolvedPhase, every: int) -> list[int]:
    return [*range(ph.begin + every, ph.end, every), ph.end]


def checkpoint_steps(ph: ResolvedPhase, resolved: Resolved) -> list[int]:
    """Where a phase writes checkpoints. `checkpoint_every = "never"` (0) writes only the
    phase ends that `keep_checkpoints` keeps once the run is finished: phase starts for
    "boundaries" (trials, lr-find --from), every phase end for "all" / "last" (so the run
    resumes from a phase end), none for "none" (an interrupted run starts again)."""
    if resolved.checkpoint_every:
        return _boundaries(ph, resolved.checkpoint_every)
    keep = resolved.keep_checkpoints
    if keep == "none" or (keep == "boundaries" and ph.end == resolved.total_steps):
        return []
    return [ph.end]


def build_changes(resolved: Resolved, pgs: tuple[ParamGroup, ...]) -> tuple[Change, ...]:
    return build_all_changes(resolved, pgs)[0]


def build_all_changes(
    resolved: Resolved, pgs: tuple[ParamGroup, ...]
) -> tuple[tuple[Change, ...], dict[str, list[tuple[Change, ...]]]]:
    """The change list, and for each trial phase the change list of each alternative's window.

    The main list holds one `trial` change where a trial phase begins. Every alternative's
    changes are made from the same state (the one before the phase); after a trial phase the
    next phase sets every group's state again, so what follows does not depend on the winner.
    """
    opt = resolved.optimizer
    state = _State(
        base_wd=base_value(opt.type, opt.kwargs, "weight_decay"),
        base_mom=base_value(opt.type, opt.kwargs, "momentum"),
    )
    tracker = _Tracker()
    for pg in pgs:
        if not pg.decay:
            tracker.values[(pg.name, "weight_decay")] = 0.0
    trials: dict[str, list[tuple[Change, ...]]] = {}
    for ph in resolved.phases:
        if ph.trials is None:
            _phase_changes(ph, resolved, pgs, state, tracker)
            _cadence(ph, resolved, tracker.changes)
            continue
        tracker.changes.append(Change(ph.begin, Op.TRIAL, ph.name))
        trials[ph.name] = []
        for _, alt in ph.trials.alternatives:
            fork = _Tracker()
            fork.values = dict(tracker.values)
            _phase_changes(alt, resolved, pgs, copy.deepcopy(state), fork)
            prune = ph.trials.prune  # every alternative is evaluated at each rung it may reach
            _cadence(alt, resolved, fork.changes, prune.at if prune else ())
            trials[ph.name].append(tuple(fork.changes))
        _forget(state, tracker, pgs)
    return tuple(tracker.changes), trials


def _cadence(ph: ResolvedPhase, resolved: Resolved, changes: list[Change], rungs: tuple[int, ...] = ()) -> None:
    """The phase's evaluations and checkpoints; both always at its end (and evaluations at a
    trial phase's rung points)."""
    evals = set(_boundaries(ph, resolved.eval_every)) | set(rungs)
    ckpts = set(checkpoint_steps(ph, resolved))
    for step in sorted(evals | ckpts):
        # Checkpoint first where both fall: an evaluation that fails (an unreadable val
        # image, say) must not cost the steps since the last checkpoint.
        if step in ckpts:
            changes.append(Change(step, Op.CHECKPOINT, ph.name))
        if step in evals:
            changes.append(Change(step, Op.EVALUATE, ph.name))


def _forget(state: _State, tracker: _Tracker, pgs: tuple[ParamGroup, ...]) -> None:
    """After a trial phase the optimizer and model hold the winner's settings, unknown here:
    the next phase sets every group's trainability, BatchNorm mode, cache, lr and weight decay."""
    state.trained, state.bn, state.cache = {}, {}, _UNKNOWN
    tracker.values = {(pg.name, "weight_decay"): 0.0 for pg in pgs if not pg.decay}
