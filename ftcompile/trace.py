"""Stage 5b: the LR trace — every param group's LR at every step, from real torch schedulers.

The trace applies the plan's optimizer changes to a dummy optimizer of the recipe's class
through `apply.Executor`, the same code the runtime uses on the real one; that is why a
run's lr.csv equals `ftcompile plan --trace` byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from ftcompile.apply import Executor
from ftcompile.errors import RecipeError
from ftcompile.plan import OPTIMIZER_OPS, Change, Plan, PhasePlan, change_dict
from ftcompile.torch_args import dummy_optimizer


def lr_trace(plan: Plan) -> list[tuple[int, str, list[float]]]:
    """(step, phase, lr of every param group) for every optimizer step, from real schedulers."""
    return list(iter_lr_trace(plan))


def iter_lr_trace(plan: Plan) -> Iterator[tuple[int, str, list[float]]]:
    """`lr_trace` one row at a time: memory stays constant however many steps the plan has."""
    opt = dummy_optimizer(plan.optimizer.type, plan.optimizer.kwargs, len(plan.param_groups))
    for pg, group in zip(plan.param_groups, opt.param_groups):
        if not pg.decay:
            group["weight_decay"] = 0.0
    ex = Executor(opt, plan.param_group_names)
    changes = [c for c in plan.changes if c.op in OPTIMIZER_OPS]
    i = 0
    for step, phase in enumerate(_phase_per_step(plan)):
        while i < len(changes) and changes[i].step == step:
            _apply_checked(ex, changes[i])
            i += 1
        yield step, phase, ex.lrs()
        _step_checked(ex, step + 1, phase)


def _phase_per_step(plan: Plan) -> Iterator[str]:
    """`plan.phase_at(step).name` for every step, in one pass: the windows are consecutive."""
    phases = sorted(plan.phases, key=lambda ph: ph.begin)
    k = 0
    for step in range(plan.total_steps):
        while k < len(phases) - 1 and step >= phases[k].end:
            k += 1
        yield phases[k].name if phases[k].begin <= step < phases[k].end else plan.phase_at(step).name


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


def lr_summary(rows: Iterable[tuple[int, str, list[float]]], plan: Plan) -> list[PhasePlan]:
    """First, peak and last LR of every trained group in every phase, from the rows as they
    stream by (a plan of 10^7 steps never holds its trace in memory)."""
    first_pg: dict[str, int] = {}  # group -> index of its first param group
    for i, pg in enumerate(plan.param_groups):
        first_pg.setdefault(pg.group, i)
    stats: list[dict[str, dict[str, float]]] = [{} for _ in plan.phases]
    order = sorted(range(len(plan.phases)), key=lambda k: plan.phases[k].begin)  # consecutive windows
    pos = 0
    for step, _, lrs in rows:
        while pos < len(order) - 1 and step >= plan.phases[order[pos]].end:
            pos += 1
        k = order[pos]
        ph = plan.phases[k]
        if not ph.begin <= step < ph.end:
            continue
        for g in ph.train:
            value, seen = lrs[first_pg[g]], stats[k].get(g)
            if seen is None:
                stats[k][g] = {"first": value, "peak": value, "last": value}
            else:
                seen["peak"], seen["last"] = max(seen["peak"], value), value
    return [replace(ph, lr=stats[k]) for k, ph in enumerate(plan.phases)]
