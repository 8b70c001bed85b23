"""summary.json: how a run went, without reading metrics.jsonl.

Written atomically at the start (status "running", with the PID and host that hold the run),
at each phase end, and at the end: "finished", "failed" with the error, or "interrupted" on
Ctrl-C. A run killed outright (SIGKILL, power loss) cannot write anything: its summary stays
"running", and `ftcompile runs` tells it from a live run by asking whether a live process
still holds the run directory (`is_live`).

Per-phase metrics come from the evaluations themselves (a Session hook). On resume the
evaluations already in metrics.jsonl (truncated to the checkpoint) are read back first, so a
resumed run's summary is the same as an uninterrupted one's, except for the wall time,
which adds up over the attempts.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftcompile.plan import Plan
from ftcompile.runtime.loop import Hooks, Session, StepInfo
from ftcompile.signals import signal_name

SUMMARY = "summary.json"
LOCK_FILE = ".lock"  # the run-directory lock (runtime/lock.py, when present) holds a flock on it
SELECT = {"top1": max, "val_loss": min}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    """Atomic: a reader (ftcompile runs, report) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n")
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_evals(run_dir: Path, size: int | None = None) -> list[dict[str, Any]]:
    """The eval records of metrics.jsonl, or of its first `size` bytes (a half-written last
    line is skipped)."""
    out = []
    try:
        with open(run_dir / "metrics.jsonl", "rb") as fh:
            lines = fh.read(size if size is not None else -1).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") == "eval":
            out.append(rec)
    return out


def chosen_alternatives(run_dir: Path) -> dict[str, int]:
    """phase -> the alternative chosen there (trials.csv), for the trial phases decided so far."""
    try:
        with open(run_dir / "trials.csv", newline="") as fh:
            return {row["phase"]: int(row["k"]) for row in csv.DictReader(fh) if row.get("chosen") == "true"}
    except (OSError, ValueError, KeyError):
        return {}


def as_continued(evals: list[dict[str, Any]], chosen: dict[str, int]) -> list[dict[str, Any]]:
    """The evaluations of the run as it went on: those outside trial phases, and in each
    decided trial phase its chosen alternative's. (The other alternatives, and those of a
    trial phase still running, are left out; `trial` 0 is an alternative like the others.)"""
    return [r for r in evals if r.get("trial") in (None, "") or chosen.get(r["phase"]) == r["trial"]]


def continued_evals(run_dir: Path, size: int | None = None) -> list[dict[str, Any]]:
    """read_evals(), as the run went on (see as_continued)."""
    return as_continued(read_evals(run_dir, size), chosen_alternatives(run_dir))


def phase_table(plan: Plan, evals: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase: its window, and its last evaluation (the one at its end once it is done).
    `evals` as the run went on (as_continued)."""
    last: dict[str, dict[str, Any]] = {}
    for rec in evals:
        last[rec["phase"]] = rec
    table = {}
    for ph in plan.phases:
        rec = last.get(ph.name)
        done = rec is not None and rec["step"] >= ph.end
        table[ph.name] = {"begin": ph.begin, "end": ph.end, "done": done,
                          "metrics": _metrics(rec) if rec else None}
    return table


def _metrics(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in ("step", "val_loss", "top1", "top5") if k in rec}


def best_eval(evals: list[dict[str, Any]], key: str = "top1") -> dict[str, Any] | None:
    """The best evaluation by `key` (ties: the earliest); non-finite values never win.
    `evals` as the run went on (as_continued)."""
    pick = SELECT[key]
    finite = [r for r in evals if key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    if not finite:
        return None
    target = pick(r[key] for r in finite)
    return next(r for r in finite if r[key] == target)


class RunStatus(Hooks):
    """Keeps summary.json up to date while a run trains (rank 0 only)."""

    def __init__(self, run_dir: Path, plan: Plan, resume: dict[str, Any] | None = None) -> None:
        self.run_dir, self.plan = run_dir, plan
        previous = read_summary(run_dir) or {}
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
        evals = as_continued(self.evals, chosen_alternatives(self.run_dir))
        final = evals[-1] if evals else None
        best = best_eval(evals)
        phases = phase_table(self.plan, evals)
        write_json(self.run_dir / SUMMARY, {
            "status": status,
            "error": error,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "recipe": self.plan.recipe.get("name"),
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
        })

    # Session hooks: the step count, and a new summary at each phase end.
    def on_step(self, session: Session, info: StepInfo) -> None:
        self.step = info.step + 1

    def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
        self.evals.append(record)
        if record["step"] in self.ends and record.get("trial") in (None, ""):
            self.write("running")

    @contextlib.contextmanager
    def tracking(self) -> Iterator["RunStatus"]:
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
    from ftcompile.errors import RecipeError

    if isinstance(exc, RecipeError):
        return str(exc)
    if isinstance(exc, SystemExit):
        return f"exited with code {exc.code}"
    return f"{type(exc).__name__}: {exc}"


def is_live(run_dir: Path, summary: dict[str, Any] | None) -> bool:
    """Whether a live process holds the run directory.

    Exact where the run-directory lock exists (`.lock`, flock held by the running process:
    the kernel drops it when that process dies, however it dies). Otherwise: the PID that
    summary.json recorded is alive on this host (a recycled PID could fool this fallback).
    """
    lock = run_dir / LOCK_FILE
    if lock.is_file():
        held = _flock_held(lock)
        if held is not None:
            return held
    if not summary or summary.get("host") != socket.gethostname():
        return False
    pid = summary.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _flock_held(lock: Path) -> bool | None:
    """True / False: another process holds / nobody holds the lock; None: cannot tell."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without flock
        return None
    finally:
        os.close(fd)  # closing drops the shared lock at once
    return False


def status_of(run_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """finished | running | interrupted | failed | unknown (no summary.json: an older run)."""
    summary = read_summary(run_dir)
    if summary is None:
        return ("finished" if (run_dir / "model.pt").is_file() else "unknown"), None
    status = summary.get("status", "unknown")
    if status == "running" and not is_live(run_dir, summary):
        status = "interrupted"
    return status, summary
