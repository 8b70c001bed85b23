"""Stage 5b: the LR trace — every param group's LR at every step, from real torch schedulers.

The trace applies the plan's optimizer changes to a dummy optimizer of the recipe's class
through `apply.Executor`, the same code the runtime uses on the real one; that is why a
run's lr.csv equals `ftcompile plan --trace` byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ftcompile.apply import Executor
from ftcompile.errors import RecipeError
from ftcompile.plan import OPTIMIZER_OPS, Change, Plan, PhasePlan, change_dict
from ftcompile.torch_args import dummy_optimizer


def lr_trace(plan: Plan) -> list[tuple[int, str, list[float]]]:
    """(step, phase, lr of every param group) for every optimizer step, from real schedulers."""
    opt = dummy_optimizer(plan.optimizer.type, plan.optimizer.kwargs, len(plan.param_groups))
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


def lr_summary(rows: list[tuple[int, str, list[float]]], plan: Plan) -> list[PhasePlan]:
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

