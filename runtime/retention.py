"""Which checkpoints stay on disk: `[run] keep_checkpoints` applied to checkpoints/.

A resnet18 checkpoint with SGD momentum is ~90 MB, so a run keeps only what something will
read back:
- resume needs the newest checkpoint while the run is unfinished;
- trials and `lr-find --from` start from a phase's start, i.e. the end of every phase but
  the last ("phase starts"); the end of the last phase is model.pt.

| keep_checkpoints | while running | once finished (model.pt written) |
|---|---|---|
| "boundaries" (default) | the newest + the phase starts | the phase starts |
| "all" | every one written | every one written |
| "last" | the newest | the newest (the final state, optimizer included) |
| "none" | the newest | none |

Kept apart from checkpoint.py (which writes and verifies files) so either can change alone.
"""

from __future__ import annotations

from pathlib import Path

from ftcompile.plan import Plan
from ftcompile.runtime.checkpoint import list_checkpoints, step_of

POLICIES = ("boundaries", "all", "last", "none")


def phase_starts(plan: Plan) -> set[int]:
    """Steps where a phase other than the first begins (= where the one before it ends)."""
    return {ph.begin for ph in plan.phases[1:]}


def kept(steps: list[int], starts: set[int], policy: str, finished: bool) -> set[int]:
    """The checkpoint steps `policy` keeps, of those on disk (`steps`)."""
    if policy not in POLICIES:
        raise ValueError(f"keep_checkpoints {policy!r} is not one of {POLICIES}")
    if policy == "all" or not steps:
        return set(steps)
    newest = {max(steps)}
    at_starts = {s for s in steps if s in starts}
    if policy == "boundaries":
        return at_starts if finished else newest | at_starts
    if policy == "last":
        return newest
    return set() if finished else newest  # "none"


def prune(folder: Path, plan: Plan, finished: bool) -> list[Path]:
    """Delete the checkpoints the plan's policy does not keep; returns what was deleted."""
    files = list_checkpoints(folder)
    keep = kept([step_of(p) for p in files], phase_starts(plan), plan.run.keep_checkpoints, finished)
    gone = [p for p in files if step_of(p) not in keep]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def describe(plan: Plan) -> str:
    """One line for `ftcompile plan`: which checkpoints are written and which are kept."""
    steps = sorted({c.step for c in plan.changes if c.op == "checkpoint"})
    policy = plan.run.keep_checkpoints
    if not steps:
        return f"checkpoints: none written (keep_checkpoints = {policy!r}); an interrupted run starts again at step 0"
    final = kept(steps, phase_starts(plan), policy, finished=True)
    every = plan.run.checkpoint_every
    written = f"every {every} steps and at phase ends" if every else "at phase ends only"
    after = ("none" if not final else "steps " + ", ".join(map(str, sorted(final))))
    running = {"boundaries": "the newest + phase starts", "all": "all", "last": "the newest", "none": "the newest"}[policy]
    return (f"checkpoints: {len(steps)} written ({written}); kept while running: {running}; "
            f"kept once finished: {after} (keep_checkpoints = {policy!r})")
