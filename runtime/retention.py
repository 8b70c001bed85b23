"""Which checkpoints stay on disk: `[run] keep_checkpoints` applied to checkpoints/.

A resnet18 checkpoint with SGD momentum is ~90 MB, so a run keeps only what something will
read back: resume needs the newest checkpoint while the run is unfinished; trials and
`lr-find --from` start from a phase's start (the end of every phase but the last); the end
of the last phase is model.pt. The policy itself is `plan.checkpoints_kept` (the plan
output states it); this module deletes files. Kept apart from checkpoint.py (which writes
and verifies files) so either can change alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ftcompile.runtime.checkpoint import is_good, list_checkpoints, set_aside, step_of

from ftcompile.plan import Plan, checkpoints_kept, phase_starts


def prune(folder: Path, plan: Plan, finished: bool) -> list[Path]:
    """Delete the checkpoints the plan's policy does not keep; returns what was deleted."""
    # A damaged file never counts toward what is kept: it is moved aside, not deleted.
    files = [p for p in list_checkpoints(folder) if is_good(p) or not set_aside(p)]
    if any(ph.trials for ph in plan.phases):
        # Files are numbered by optimizer steps taken in all (alternatives go back to a phase
        # start): a phase start is a file at a plan phase start taken outside any alternative.
        starts = {step_of(p) for p in files if phase_start_of(p, plan) is not None}
    else:
        starts = {step_of(p) for p in files if step_of(p) in phase_starts(plan)}
    keep = checkpoints_kept([step_of(p) for p in files], starts, plan.run.keep_checkpoints, finished)
    gone = [p for p in files if step_of(p) not in keep]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def phase_start_of(path: Path, plan: Plan) -> int | None:
    """The plan step of checkpoint `path` when it holds a phase's start state (not inside a
    trial alternative), else None. Reads only the step and the trial record: the file is
    memory-mapped, its tensors are not read."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    step, running = state.get("step"), (state.get("trials") or {}).get("running")
    return step if running is None and step in phase_starts(plan) else None


def find_phase_start(folder: Path, plan: Plan, step: int) -> Path | None:
    """The checkpoint in `folder` holding the state at phase start `step`, or None."""
    if not any(ph.trials for ph in plan.phases):
        path = folder / f"step-{step:08d}.pt"
        return path if path.is_file() else None
    return next((p for p in list_checkpoints(folder) if phase_start_of(p, plan) == step), None)
