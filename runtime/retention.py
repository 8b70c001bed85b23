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

from ftcompile.plan import Plan, checkpoints_kept, phase_starts
from ftcompile.runtime.checkpoint import is_good, list_checkpoints, set_aside, step_of


def prune(folder: Path, plan: Plan, finished: bool) -> list[Path]:
    """Delete the checkpoints the plan's policy does not keep; returns what was deleted.

    A run with trials numbers its files by optimizer steps taken in all (alternatives go back
    to a phase start), not by plan steps, so the phase-start policy cannot place them: such
    a run keeps every checkpoint it writes (a known gap, see README "Trials")."""
    if any(ph.trials for ph in plan.phases):
        return []
    # A damaged file never counts toward what is kept: it is moved aside, not deleted.
    files = [p for p in list_checkpoints(folder) if is_good(p) or not set_aside(p)]
    keep = checkpoints_kept([step_of(p) for p in files], phase_starts(plan), plan.run.keep_checkpoints, finished)
    gone = [p for p in files if step_of(p) not in keep]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone
