"""Stage 5b: the LR trace — every param group's LR at every step, from real torch schedulers.

The trace applies the plan's optimizer changes to a dummy optimizer of the recipe's class
through `apply.Executor`, the same code the runtime uses on the real one; that is why a
run's lr.csv equals `ftcompile plan --trace` byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

from ftcompile.apply import Executor
from ftcompile.errors import RecipeError
from ftcompile.plan import OPTIMIZER_OPS, Change, LRWindow, Op, PhasePlan, Plan, SchedulerStart
from ftcompile.torch_args import dummy_optimizer


def lr_trace(plan: Plan) -> list[tuple[int, str, list[float], int | None]]:
    """(step, phase, lr of every param group, trial) for every optimizer step a run takes.

    A trial phase's window appears once per alternative (trial = its index), each from the
    optimizer as it was at the phase start, in the order a run takes them; `trial` is None
    outside trial phases.
    """
    opt = dummy_optimizer(plan.optimizer.type, plan.optimizer.kwargs, len(plan.param_groups))
    for pg, group in zip(plan.param_groups, opt.param_groups, strict=False):
        if not pg.decay:
            group["weight_decay"] = 0.0
    ex = Executor(opt, plan.param_group_names)
    names = list(_phase_per_step(plan))
    phases = {ph.name: ph for ph in plan.phases}
    rows: list[tuple[int, str, list[float], int | None]] = []
    step = 0
    segment: list[Change] = []  # the optimizer changes since the last trial phase
    for change in plan.changes:
        if change.op == Op.TRIAL:
            _window(ex, segment, step, change.step, names, None, rows)
            ph = phases[change.target or ""]
            assert ph.trials is not None
            fork = [dict(g) for g in opt.param_groups]
            for alt in ph.trials.alternatives:
                for group, saved in zip(opt.param_groups, fork, strict=False):  # the optimizer as at the phase start
                    group.clear()
                    group.update(saved)
                ex.scheduler = None
                alt_changes = [c for c in alt.changes if c.op in OPTIMIZER_OPS]
                _window(ex, alt_changes, ph.begin, ph.end, names, alt.k, rows)
            step, segment = ph.end, []
        elif change.op in OPTIMIZER_OPS:
            segment.append(change)
    _window(ex, segment, step, plan.total_steps, names, None, rows)
    return rows


def _window(
    ex: Executor,
    changes: list[Change],
    begin: int,
    end: int,
    names: list[str],
    trial: int | None,
    rows: list[tuple[int, str, list[float], int | None]],
) -> None:
    """Steps [begin, end): apply each change when its step comes, record the LRs, step."""
    i = 0
    for step in range(begin, end):
        while i < len(changes) and changes[i].step == step:
            _apply_checked(ex, changes[i])
            i += 1
        rows.append((step, names[step], ex.lrs(), trial))
        _step_checked(ex, step + 1, names[step])


def _phase_per_step(plan: Plan) -> Iterator[str]:
    """`plan.phase_at(step).name` for every step, in one pass: the windows are consecutive."""
    phases = sorted(plan.phases, key=lambda ph: ph.begin)
    k = 0
    for step in range(plan.total_steps):
        while k < len(phases) - 1 and step >= phases[k].end:
            k += 1
        yield phases[k].name if phases[k].begin <= step < phases[k].end else plan.phase_at(step).name


def _apply_checked(ex: Executor, change: Change) -> None:
    try:
        ex.apply(change)
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise RecipeError(
            f"{change.value.type if isinstance(change.value, SchedulerStart) else change.op} rejects its arguments: {exc}",
            key=f"phases.{change.target}.scheduler" if change.op == Op.SCHEDULER else "optimizer",
            suggestion="check the scheduler arguments against the torch.optim.lr_scheduler documentation",
        ) from None


def _step_checked(ex: Executor, steps_done: int, phase: str) -> None:
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


def lr_summary(rows: list[tuple[int, str, list[float], int | None]], plan: Plan) -> list[PhasePlan]:
    """Each phase's LRs (first / peak / last per trained group); a trial phase gets them per
    alternative, and its own are its first alternative's."""
    first_pg: dict[str, int] = {}  # group -> index of its first param group
    for i, pg in enumerate(plan.param_groups):
        first_pg.setdefault(pg.group, i)
    windows: dict[tuple[str, int | None], list[list[float]]] = {}
    for _, phase, lrs, trial in rows:  # one pass: a plan may hold 10^5 steps
        windows.setdefault((phase, trial), []).append(lrs)

    def summary(train: tuple[str, ...], window: list[list[float]]) -> dict[str, LRWindow]:
        lr = {}
        for g in train:
            values = [r[first_pg[g]] for r in window]
            lr[g] = LRWindow(first=values[0], peak=max(values), last=values[-1])
        return lr

    out = []
    for ph in plan.phases:
        if ph.trials is None:
            out.append(replace(ph, lr=summary(ph.train, windows[(ph.name, None)])))
            continue
        alts = tuple(replace(a, lr=summary(a.train, windows[(ph.name, a.k)])) for a in ph.trials.alternatives)
        out.append(replace(ph, lr=alts[0].lr, trials=replace(ph.trials, alternatives=alts)))
    return out
