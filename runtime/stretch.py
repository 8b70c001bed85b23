"""One stretch of a trial alternative in a process of its own: what a Ray task runs.

runtime/search.py decides (fork, judge, prune, continue) and runs stretches in the driver's
session; this module builds a fresh session from the run directory alone for one stretch, so
the search itself never imports the loop that drives it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ftcompile.runtime import search
from ftcompile.runtime.logs import Logs
from ftcompile.runtime.loop import Session
from ftcompile.runtime.runfiles import RUNS, finished_upstream, open_run
from ftcompile.runtime.trials import Running

from ftcompile.errors import RecipeError


def run_stretch(run_dir: Path, stretch: search.Stretch) -> search.StretchResult:
    """Run one stretch in this process from the run directory alone (plan.json, env.json's data
    root, the stretch's start state: fork.pt or trials/<phase>/<k>/at-<begin>.pt); what a Ray
    task calls. Writes only under trials/<phase>/<k>/: the state at its end, metrics.json, and
    its log rows in logs-<end>/ (metrics.jsonl, lr.csv) for the driver to merge. No
    checkpoints: the driver's run holds those. Results do not depend on the process."""
    plan, env = open_run(run_dir)
    root = Path(env.get("data_root") or ".")
    upstream = finished_upstream(plan)
    if upstream is None and plan.model.weights.kind == "recipe":
        raise RecipeError(
            f"the upstream run of {plan.model.weights.value} (its model.pt, under {RUNS}/) is not visible here",
            file=run_dir,
            key="model.weights",
            suggestion="start the driver where the workers see the same runs/ folder (shared storage)",
        )
    session = Session(plan, root, None, upstream=upstream)
    # The alternative's keep_best improvements go to trials/<phase>/<k>/best.pt (runtime/best.py).
    session.watch.run_dir, session.watch.writes = run_dir, session.d.main
    logs_dir = run_dir / "trials" / stretch.phase / str(stretch.k) / f"logs-{stretch.end}"
    shutil.rmtree(logs_dir, ignore_errors=True)  # a retried task starts its logs again
    logs_dir.mkdir(parents=True)
    session.logs = Logs(logs_dir, plan.param_group_names, ema=plan.run.ema is not None)
    try:
        if stretch.begin == search.rung_points(plan, stretch.phase)[0]:
            start = search.load(run_dir / "trials" / stretch.phase / "fork.pt")
        else:
            start = search.load(search.state_file(run_dir, stretch.phase, stretch.k, stretch.begin, plan))
        running = Running(stretch.phase, stretch.begin, stretch.end, stretch.k)
        session.enter(start, dict((start.get("trials") or {}).get("chosen") or {}), running)
        result, _ = search.run_here(session, stretch, run_dir)
    finally:
        session.close()
    result.logs = logs_dir
    return result
