"""summary.json: how a run went, without reading metrics.jsonl.

Written atomically at the start (status "running", with the PID and host that hold the run),
at each phase end, and at the end: "finished", "failed" with the error, or "interrupted" on
Ctrl-C. A run killed outright (SIGKILL, power loss) cannot write anything: its summary stays
"running", and `ftcompile runs` tells it from a live run by asking whether a live process
still holds the run directory (`runfiles.is_live`). summary.json is read back, with the
run's other files, by runtime/runfiles.py.

Per-phase metrics come from the evaluations themselves (a Session hook). On resume the
evaluations already in metrics.jsonl (truncated to the checkpoint) are read back first, so a
resumed run's summary is the same as an uninterrupted one's, except for the wall time,
which adds up over the attempts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftcompile.runtime.loop import Hooks, Session, StepInfo
from ftcompile.runtime.runfiles import (
    SUMMARY,
    Summary,
    as_continued,
    checked,
    chosen_alternatives,
    read_evals,
    read_summary,
)

from ftcompile import metrics
from ftcompile.errors import RecipeError
from ftcompile.outputs import write_json
from ftcompile.plan import Plan
from ftcompile.signals import signal_name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def phase_table(plan: Plan, evals: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase: its window, and its last evaluation (the one at its end once it is done).
    `evals` as the run went on (as_continued)."""
    last: dict[str, dict[str, Any]] = {}
    for rec in evals:
        last[rec["phase"]] = rec
    table = {}
    for ph in plan.phases:
        at_end = last.get(ph.name)
        done = at_end is not None and at_end["step"] >= ph.end
        table[ph.name] = {
            "begin": ph.begin,
            "end": ph.end,
            "done": done,
            "metrics": _metrics(at_end) if at_end else None,
        }
    return table


def _metrics(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in ("step", "val_loss", "top1", "top5") if k in rec}


def best_eval(evals: list[dict[str, Any]], name: str = "val_top1") -> dict[str, Any] | None:
    """The best evaluation on metric `name` (ftcompile/metrics.py), compared as keep_best
    compares (ties: the earliest; non-finite values never win). `evals` as the run went on
    (as_continued)."""
    best, best_value = None, None
    for rec in evals:
        value = metrics.value(rec, name)
        if metrics.improves(value, best_value, name):
            best, best_value = rec, value
    return best


def _previous(run_dir: Path) -> dict[str, Any]:
    """The summary an earlier attempt wrote (resume). A damaged one does not stop the run: it
    is derived state, written again here; only the wall time and attempts start over."""
    try:
        return read_summary(run_dir) or {}
    except RecipeError as err:
        print(
            f"warning: {str(err).splitlines()[0]}; writing it again (wall time and attempts start over)",
            file=sys.stderr,
        )
        return {}


class RunStatus(Hooks):
    """Keeps summary.json up to date while a run trains (rank 0 only)."""

    def __init__(self, run_dir: Path, plan: Plan, resume: dict[str, Any] | None = None) -> None:
        self.run_dir, self.plan = run_dir, plan
        previous = _previous(run_dir)
        self.before = float(previous.get("wall_s") or 0.0)  # earlier attempts (resume)
        self.attempts = int(previous.get("attempts") or 0) + 1
        self.started_at = previous.get("started") or _now()
        # What the checkpoint had logged (train() truncates metrics.jsonl to it); a new run: nothing.
        size = resume["logs"].get("metrics.jsonl") if resume is not None else 0
        self.evals = read_evals(run_dir, size) if size else []
        self.begun = time.perf_counter()
        self.step = int(resume["step"]) if resume is not None else 0
        self.ends = {ph.end for ph in plan.phases}

    def write(self, status: str, error: str | None = None) -> None:
        evals = as_continued(self.evals, chosen_alternatives(self.run_dir, self.plan))
        final = evals[-1] if evals else None
        best = best_eval(evals)
        phases = phase_table(self.plan, evals)
        write_json(
            self.run_dir / SUMMARY,
            checked(
                Summary,
                {
                    "status": status,
                    "error": error,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "recipe": self.plan.recipe.name,
                    "plan_hash": self.plan.hash,
                    "started": self.started_at,
                    "updated": _now(),
                    "attempts": self.attempts,
                    "wall_s": round(self.before + time.perf_counter() - self.begun, 3),
                    "step": self.step,
                    "total_steps": self.plan.total_steps,
                    "phases_done": [name for name, ph in phases.items() if ph["done"]],
                    "phases": phases,
                    "final": _metrics(final) if final and status == "finished" else None,
                    "last": _metrics(final) if final else None,
                    "best": {**_metrics(best), "phase": best["phase"]} if best else None,
                },
            ),
        )

    # Session hooks: the step count, and a new summary at each phase end.
    def on_step(self, session: Session, info: StepInfo) -> None:
        self.step = info.step + 1

    def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
        self.evals.append(record)
        if record["step"] in self.ends and record.get("trial") in (None, ""):
            self.write("running")

    @contextlib.contextmanager
    def tracking(self) -> Iterator[RunStatus]:
        """running at the start; finished, failed (with the error) or interrupted at the end."""
        self.write("running")
        try:
            yield self
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (ftcompile.signals), wherever it came
            self.write("interrupted", f"interrupted ({signal_name(exc)})")
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised unchanged
            self.write("failed", _error_text(exc))
            raise
        self.write("finished")


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RecipeError):
        return str(exc)
    if isinstance(exc, SystemExit):
        return f"exited with code {exc.code}"
    return f"{type(exc).__name__}: {exc}"
