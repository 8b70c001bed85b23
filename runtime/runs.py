"""`ftcompile runs [ROOT]`: one line per run directory, from what each run recorded.

A run directory is a folder holding plan.json and env.json (`runs/<name>/<n>-<hash8>/`);
trial sub-folders inside a run are not runs. Status, phases and metrics come from the run's
summary.json (written by runtime/status.py), so they are exact; "running" versus
"interrupted" is whether a live process holds the directory. Every file is read through
runtime/runfiles.py: a run with a damaged or hand-edited file is listed as "unreadable" with
the file, field and reason, the others as usual, and the exit status stays 0 (the listing
itself worked; a damaged run is a fact about that run, as "failed" is).

Only pure-Python modules are imported here, never torch: `ftcompile runs` over many runs
starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ftcompile.runtime.runfiles import continued_evals, status_of

from ftcompile.errors import RecipeError
from ftcompile.plan import Plan


def find_runs(root: Path) -> list[Path]:
    """Run directories below `root` (or `root` itself), sorted by path; never inside a run."""
    if not root.is_dir():
        raise RecipeError(
            f"{root} is not a folder", file=root, suggestion="give the folder that holds runs/<name>/..., default runs/"
        )
    found = []
    for dirpath, dirs, files in os.walk(root):
        if "plan.json" in files and "env.json" in files:
            found.append(Path(dirpath))
            dirs.clear()  # trials/, checkpoints/ inside a run are not runs
        else:
            dirs.sort()
    return sorted(found, key=lambda p: (p.parent.as_posix(), _number(p.name), p.name))


def _number(name: str) -> int:
    head = name.split("-")[0]
    return int(head) if head.isdigit() else 0


def describe(run_dir: Path) -> dict[str, Any]:
    """One run as a row: recipe, plan hash, status (+ error), phases done, best / final top-1,
    wall time. A run whose files cannot be read (runtime/runfiles.py) is a row too, status
    "unreadable" and the reason as its error: one damaged run never hides the others."""
    try:
        return _row(run_dir)
    except RecipeError as err:
        return {**dict.fromkeys(COLUMNS), "path": str(run_dir), "status": "unreadable", "error": str(err)}


COLUMNS = (
    "path",
    "recipe",
    "plan_hash",
    "status",
    "error",
    "phases_done",
    "phases",
    "step",
    "total_steps",
    "best_top1",
    "final_top1",
    "wall_s",
)


def _row(run_dir: Path) -> dict[str, Any]:
    plan = Plan.load(run_dir / "plan.json")
    status, summary = status_of(run_dir)
    if summary is None:  # written before summary.json existed: what metrics.jsonl says
        tops = [r["top1"] for r in continued_evals(run_dir, plan)]
        best = max(tops) if tops else None
        final = tops[-1] if tops and status == "finished" else None
        done = None
    else:
        best = (summary["best"] or {}).get("top1")
        final = (summary["final"] or {}).get("top1")
        done = len(summary["phases_done"])
    s = summary or {}
    return {
        "path": str(run_dir),
        "recipe": plan.recipe.name,
        "plan_hash": plan.hash,
        "status": status,
        "error": s.get("error") if status in ("failed", "interrupted") else None,
        "phases_done": done,
        "phases": len(plan.phases),
        "step": s.get("step"),
        "total_steps": plan.total_steps,
        "best_top1": best,
        "final_top1": final,
        "wall_s": s.get("wall_s"),
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    table = [["run", "recipe", "plan", "status", "phases", "best top1", "final top1", "wall"]]
    errors = []
    for r in rows:
        unreadable = r["status"] == "unreadable"
        phases = "-" if unreadable else "?" if r["phases_done"] is None else f"{r['phases_done']}/{r['phases']}"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}s"
        table.append(
            [
                r["path"],
                r["recipe"] or "?",
                (r["plan_hash"] or "?")[:8],
                r["status"],
                phases,
                pct(r["best_top1"]),
                pct(r["final_top1"]),
                wall,
            ]
        )
        if r["error"]:  # an unreadable run's error names its file (inside the run's path) itself
            errors.append(f"  {'' if unreadable else r['path'] + ': '}{r['error'].splitlines()[0]}")
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in table]
    if errors:
        lines += ["", "errors:", *errors]
    return "\n".join(lines)


def runs_command(root: Path, as_json: bool) -> int:
    rows = [describe(d) for d in find_runs(root)]
    if as_json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no run directories under {root}")
    else:
        print(format_rows(rows))
    return 0
