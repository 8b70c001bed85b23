"""Trials at run time: every alternative of a phase from the phase-start state; the best goes on.

In the plan a trial phase is one `trial` change; its alternatives' own changes sit in
`PhasePlan.trials`. `TrialState` knows which alternative each finished trial phase chose and
which one runs now, so the change list the session follows (and replays in `load_state`) is
the one that really ran. It is part of every checkpoint, so a run resumes inside an
alternative, between two, or after the choice, and goes on exactly as it would have.

Files (rank 0): trials/<phase>/fork.pt, the phase-start state, until the choice;
trials/<phase>/<k>/metrics.json and end.pt for each finished alternative (after the choice
the winner's end.pt only, unless keep = "all"); one trials.csv row per alternative.
A crash inside an alternative loses neither the phase-start state nor the finished ones.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ftcompile.runtime import checkpoint

from ftcompile import metrics, outputs
from ftcompile.errors import RecipeError
from ftcompile.plan import Plan, TrialsPlan

if TYPE_CHECKING:
    from ftcompile.runtime.features import FeatureCache

# The functions below take the loop's Session (typed Any: loop imports this module).


class Diverged(RecipeError):
    """The loss became inf or nan. Inside a trial the alternative ranks last; elsewhere it is
    the user error it always was."""


@dataclass
class Running:
    """The alternative that runs now, and what the finished ones of its phase scored."""

    phase: str
    begin: int
    end: int
    k: int
    results: list[dict[str, Any]] = field(default_factory=list)  # {"k", "val_loss", "top1", ...} per finished one
    # (every metric of ftcompile/metrics.py the evaluation reported, under its record key)


class TrialState:
    """Which alternatives ran and were chosen; plain data, stored in every checkpoint."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.specs: dict[str, TrialsPlan] = {ph.name: ph.trials for ph in plan.phases if ph.trials}
        self.chosen: dict[str, int] = {}  # trial phase -> winning alternative
        self.running: Running | None = None
        self.fork: dict[str, Any] | None = None  # the running phase's start state (memory copy)
        self.best: tuple[int, dict[str, Any]] | None = None  # best finished alternative's end state
        self.features: FeatureCache | None = None  # computed at the phase start: valid for every alternative

    @property
    def k(self) -> int | None:
        return self.running.k if self.running else None

    def label(self) -> str | None:
        """The running alternative as trials.csv names it (`k=1 layer4=head / 10`), or None."""
        r = self.running
        return None if r is None else f"k={r.k} {self.specs[r.phase].alternatives[r.k].label}"

    def at_end(self, step: int) -> bool:
        return self.running is not None and step == self.running.end

    def record(self) -> dict[str, Any]:
        return {"chosen": dict(self.chosen), "running": asdict(self.running) if self.running else None}

    def restore(self, record: dict[str, Any] | None) -> None:
        record = record or {}
        self.chosen = dict(record.get("chosen") or {})
        running = record.get("running")
        self.running = Running(**{**running, "results": [dict(r) for r in running["results"]]}) if running else None

    def changes(self) -> tuple[Any, ...]:
        """The plan's changes with the chosen (and the running) alternatives in place."""
        chosen = dict(self.chosen)
        if self.running is not None:
            chosen[self.running.phase] = self.running.k
        return self.plan.trial_changes(chosen)

    def shared_features(self, step: int, module: str | None) -> FeatureCache | None:
        if self.running and step == self.running.begin and self.features and self.features.module == module:
            return self.features
        return None

    def offer_features(self, step: int, features: FeatureCache) -> None:
        if self.running and step == self.running.begin:
            self.features = features


def folder(session: Any, phase: str) -> Path | None:
    return session.run_dir / "trials" / phase if session.run_dir is not None else None


def _write(session: Any, obj: Any, path: Path | None) -> None:
    if session.d.main and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_save(obj, path)


def start(session: Any, phase: str) -> None:
    """At a trial phase's start: keep the state (memory and disk), run the first alternative."""
    ts = session.trials
    spec = next(ph for ph in session.plan.phases if ph.name == phase)
    ts.fork, ts.best, ts.features = session.state(), None, None
    where = folder(session, phase)
    _write(session, ts.fork, where / "fork.pt" if where else None)
    _enter(session, Running(phase, spec.begin, spec.end, 0))


def _enter(session: Any, running: Running) -> None:
    """Back to the phase start, with this alternative's changes in the change list."""
    ts = session.trials
    if ts.fork is None:  # resumed: the fork was saved before the interruption
        where = folder(session, running.phase)
        assert where is not None, "a resumed trial needs its run directory"
        ts.fork = torch.load(where / "fork.pt", map_location="cpu", weights_only=True)
    executed = session.executed
    session.load_state(ts.fork)
    session.executed = executed
    ts.running = running
    session.changes = ts.changes()


def result(rec: dict[str, Any]) -> dict[str, Any]:
    """What an alternative's last evaluation scored: every metric a recipe can name (the
    METRICS table) that the evaluation reported, so `select` can be any of them."""
    return {"k": rec["trial"], **{m.key: rec[m.key] for m in metrics.METRICS.values() if m.key in rec}}


def next_alternative(session: Any, diverged: bool = False) -> None:
    """The running alternative is done (or diverged): keep its end, then run the next or choose."""
    ts = session.trials
    r = ts.running
    assert r is not None
    where = folder(session, r.phase)
    if diverged:
        r.results.append({"k": r.k, "val_loss": math.nan, "top1": math.nan, "diverged": True})
    else:
        end = session.state()
        _write(session, end, where / str(r.k) / "end.pt" if where else None)
        if pick(r.results, ts.specs[r.phase].select) == r.k:
            ts.best = (r.k, end)
    if where is not None and session.d.main:
        (where / str(r.k)).mkdir(parents=True, exist_ok=True)
        outputs.write_text(where / str(r.k) / "metrics.json", json.dumps(r.results[-1], allow_nan=True) + "\n")
    if r.k + 1 < len(ts.specs[r.phase].alternatives):
        _enter(session, Running(r.phase, r.begin, r.end, r.k + 1, r.results))
    else:
        choose(session)


def pick(results: list[dict[str, Any]], select: str) -> int | None:
    """The best alternative on `select` (a metric name); ties go to the earlier, a missing or
    non-finite value ranks last. The comparison is the one keep_best and stop_early use."""
    best, best_value = None, None
    for res in results:
        value = metrics.value(res, select)
        if metrics.improves(value, best_value, select):
            best, best_value = res["k"], value
    return best


def choose(session: Any) -> None:
    """Load the winner's end state and go on with its changes; record and show the choice."""
    ts = session.trials
    r = ts.running
    assert r is not None
    spec = ts.specs[r.phase]
    winner = pick(r.results, spec.select)
    if winner is None:
        raise RecipeError(
            f"every alternative of the trial phase {r.phase!r} diverged (the loss became inf or nan)",
            key=f"phases.{r.phase}.trials",
            suggestion="lower the learning rates of the alternatives",
        )
    where = folder(session, r.phase)
    if ts.best is not None and ts.best[0] == winner:
        state = ts.best[1]
    else:  # resumed after the winner finished: its end state is on disk
        assert where is not None
        state = torch.load(where / str(winner) / "end.pt", map_location="cpu", weights_only=True)
    executed = session.executed
    session.load_state(state)
    session.executed = executed
    ts.chosen[r.phase] = winner
    ts.running, ts.fork, ts.best, ts.features = None, None, None, None
    session.changes = ts.changes()
    # The run's evaluations of this phase are the winner's.
    session.evals = [e for e in session.evals if e.get("phase") != r.phase or e.get("trial") == winner]
    rows = [
        {
            "phase": r.phase,
            "k": res["k"],
            "label": spec.alternatives[res["k"]].label,
            **{m.name: _num(res[m.key]) for m in metrics.METRICS.values() if m.key in res},
            "chosen": str(res["k"] == winner).lower(),
        }
        for res in r.results
    ]
    if session.logs:
        session.logs.trial_results(rows)
    if session.d.main:
        print_table(r.phase, spec, r.results, winner)
        if where is not None:
            where.joinpath("fork.pt").unlink(missing_ok=True)
            # keep_best: the winner's improvements (runtime/best.py) are now the run's best.pt.
            if (where / str(winner) / "best.pt").is_file():
                os.replace(where / str(winner) / "best.pt", session.run_dir / "best.pt")
            for res in r.results:
                if res["k"] != winner and spec.keep != "all":
                    (where / str(res["k"]) / "end.pt").unlink(missing_ok=True)
                    (where / str(res["k"]) / "best.pt").unlink(missing_ok=True)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def print_table(phase: str, spec: TrialsPlan, results: list[dict[str, Any]], winner: int) -> None:
    """A small table per trial phase, the winner marked: one column per metric reported
    (val_loss, top1, top5, and the EMA's with [run] ema)."""
    shown = [m for m in metrics.METRICS.values() if any(m.key in res for res in results)]

    def cell(res: dict[str, Any], m: metrics.Metric) -> str:
        value = res.get(m.key)
        if value is None or not math.isfinite(value):
            return "diverged" if m.key == "val_loss" else "-"
        return f"{100 * value:.2f}%" if m.maximise else f"{value:.4f}"

    rows = [["", "k", "alternative", *(m.key for m in shown)]]
    for res in results:
        rows.append(
            [
                "*" if res["k"] == winner else "",
                str(res["k"]),
                spec.alternatives[res["k"]].label,
                *(cell(res, m) for m in shown),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\ntrials of {phase} (select {spec.select}; * = chosen, continues):", file=sys.stdout)
    for row in rows:
        print(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip(),
            file=sys.stdout,
            flush=True,
        )
