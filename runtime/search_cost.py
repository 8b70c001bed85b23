"""What a run's search cost, beside what a full grid would have: one computation for the
terminal (at the end of each trial phase) and the report.

A trial phase's search cost is what its alternatives ran: the optimizer steps of its step
records in metrics.jsonl (each alternative up to where it stopped, with `prune`), and the
seconds those steps took (the records' `seconds`: data, forward, backward, optimizer step;
evaluations and checkpoints are not counted; summed over alternatives, so alternatives run
side by side on several workers took less wall time). The step records are the run's own,
kept across a resume (a resume cuts them back to its checkpoint), so the figures of a
resumed run are those of the run.

A full grid is the same search done by hand: every combination of the alternatives of the
run's trial phases, each a run of the plan's length from scratch, so
    grid steps = (alternatives of phase 1 x alternatives of phase 2 x ...) x plan.total_steps
(every alternative of a phase covers the same step window, ftcompile/trials.py).

No torch here: `ftcompile report` reads it (STYLE 19).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcompile.runtime.runfiles import read_records

from ftcompile.plan import Plan


@dataclass(frozen=True)
class PhaseCost:
    phase: str
    alternatives: int
    steps: int  # optimizer steps its alternatives took, all together
    seconds: float  # their step time, summed


@dataclass(frozen=True)
class SearchCost:
    phases: tuple[PhaseCost, ...]  # the run's trial phases, in plan order (0 steps: not reached)
    run_steps: int  # every optimizer step the run took (trial phases and the others)
    run_seconds: float
    run_length: int  # plan.total_steps: the steps of one combination from scratch
    combinations: int  # of the alternatives of every trial phase

    @property
    def grid_steps(self) -> int:
        return self.combinations * self.run_length

    def phase(self, name: str) -> PhaseCost:
        return next(p for p in self.phases if p.phase == name)


def search_cost(plan: Plan, steps: Iterable[dict[str, Any]]) -> SearchCost:
    """The cost of the run whose step records (metrics.jsonl's `step` records) are `steps`."""
    trial_phases = [ph for ph in plan.phases if ph.trials]
    counted: dict[str, list[float]] = {ph.name: [0, 0.0] for ph in trial_phases}
    run_steps, run_seconds = 0, 0.0
    for rec in steps:
        run_steps += 1
        run_seconds += rec["seconds"]
        if rec["phase"] in counted:
            counted[rec["phase"]][0] += 1
            counted[rec["phase"]][1] += rec["seconds"]
    return SearchCost(
        phases=tuple(
            PhaseCost(ph.name, len(ph.trials.alternatives), int(counted[ph.name][0]), counted[ph.name][1])
            for ph in trial_phases
            if ph.trials is not None
        ),
        run_steps=run_steps,
        run_seconds=run_seconds,
        run_length=plan.total_steps,
        combinations=math.prod([len(ph.trials.alternatives) for ph in trial_phases if ph.trials is not None]),
    )


def of_run(plan: Plan, run_dir: Path) -> SearchCost:
    """The cost of the run in `run_dir`, from its metrics.jsonl as written so far."""
    return search_cost(plan, read_records(run_dir, "step"))


def grid_text(cost: SearchCost) -> str:
    """`a full grid, the 9 combinations (3 x 3) each 230 steps from scratch, takes 2070 steps`."""
    counts = " x ".join(str(p.alternatives) for p in cost.phases)
    shape = f" ({counts})" if len(cost.phases) > 1 else ""
    return (
        f"a full grid, the {cost.combinations} combinations{shape} each {cost.run_length} steps from scratch, "
        f"takes {cost.grid_steps} steps"
    )


def say(plan: Plan, run_dir: Path | None, phase: str, logs: Any = None) -> None:
    """Print `phase_line` at the end of trial phase `phase` (a run with a run directory).
    `logs` (the run's open logs, if any) are flushed first, so the file holds every step taken."""
    if run_dir is None:
        return
    if logs is not None:
        logs.sizes()  # flushes metrics.jsonl
    print(phase_line(plan, run_dir, phase), flush=True)


def phase_line(plan: Plan, run_dir: Path, phase: str) -> str:
    """`search cost of layer4: 69 steps in 3 alternatives (12.3 s of steps); the run so far 92
    steps; a full grid, ...`"""
    cost = of_run(plan, run_dir)
    p = cost.phase(phase)
    return (
        f"search cost of {phase}: {p.steps} steps in {p.alternatives} alternatives ({p.seconds:.1f} s of steps); "
        f"the run so far {cost.run_steps} steps; {grid_text(cost)}"
    )


def report_text(cost: SearchCost, finished: bool) -> str:
    """The report's paragraph (plain text; the report escapes it)."""
    phases = ", ".join(f"{p.phase} {p.steps} steps ({p.seconds:.1f} s)" for p in cost.phases)
    run = "the run" if finished else "the run so far"
    ratio = f", {cost.grid_steps / cost.run_steps:.2f}x this run's" if finished and cost.run_steps else ""
    return (
        f"Search cost: {phases}; {run} {cost.run_steps} steps ({cost.run_seconds:.1f} s of steps). "
        f"For comparison, {grid_text(cost)}{ratio}."
    )
