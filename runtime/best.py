"""Metric-driven phases at run time: `stop_early`, `restore_best` and `keep_best`.

The plan stays static; what is decided here is decided at each evaluation, from the eval
record alone, so a resumed run that evaluates the same model decides the same. Everything a
decision depends on (the phase's best value and step, evaluations since an improvement, the
best state for `restore_best`, the run's best for best.pt) is in `state()`, which the
session stores in every checkpoint.

best.pt is the best evaluation of the run as it went on: outside trial phases and in each
trial phase its chosen alternative. An alternative's improvements go to
trials/<phase>/<k>/best.pt (each alternative starts from the phase-start state, the run's
best so far included); the winner's becomes best.pt when it is chosen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcompile.runtime import checkpoint

from ftcompile import metrics
from ftcompile.plan import PhasePlan, Plan


@dataclass
class PhaseBest:
    """The best evaluation of the phase running now."""

    phase: str
    metric: str
    value: float | None = None
    step: int | None = None
    bad: int = 0  # evaluations since the last improvement
    snapshot: dict[str, Any] | None = None  # model + optimizer state at `step` (restore_best)
    record: dict[str, Any] | None = None  # the evaluation at `step`


class Watch:
    def __init__(self, plan: Plan, run_dir: Path | None, writes: bool) -> None:
        self.plan, self.run_dir, self.writes = plan, run_dir, writes
        self.current: PhaseBest | None = None
        self.run_best: dict[str, Any] | None = None  # {"step", "metric", "value"} of best.pt
        # The evaluation of the model as it is (restore_best: the one gone back to); what a
        # trial's alternative is judged on (runtime/search.py).
        self.last: dict[str, Any] | None = None

    # ------------------------------------------------------------ decisions

    def evaluated(self, rec: dict[str, Any], phase: PhasePlan, model: Any, optimizer: Any) -> bool:
        """Take in one evaluation; True when the phase must stop early now."""
        self.last = rec
        self._keep_best(rec, model)
        name = phase.stop_early.metric if phase.stop_early else phase.restore_best
        if name is None:
            return False
        if self.current is None or self.current.phase != phase.name:
            self.current = PhaseBest(phase.name, name)
        best = self.current
        new = metrics.value(rec, name)
        min_delta = phase.stop_early.min_delta if phase.stop_early else 0.0
        if metrics.improves(new, best.value, name, min_delta):
            best.value, best.step, best.bad, best.record = new, rec["step"], 0, rec
            if phase.restore_best:
                best.snapshot = {
                    "model": copy.deepcopy(model.state_dict()),
                    "optimizer": copy.deepcopy(optimizer.state_dict()["state"]),
                }
        else:
            best.bad += 1
        return phase.stop_early is not None and best.bad >= phase.stop_early.patience and rec["step"] < phase.end

    def best_state(self, phase: PhasePlan, step: int) -> dict[str, Any] | None:
        """The state to go back to at the end of `phase` (None: the model is already its best,
        or the phase never had a finite evaluation). Handed over once: the phase is over."""
        best = self.current
        if not phase.restore_best or best is None or best.phase != phase.name or best.snapshot is None:
            return None
        snapshot, best.snapshot = best.snapshot, None
        if best.step == step:
            return None
        self.last = best.record
        return snapshot

    def _keep_best(self, rec: dict[str, Any], model: Any) -> None:
        name = self.plan.run.keep_best
        if name is None:
            return
        new = metrics.value(rec, name)
        if not metrics.improves(new, self.run_best["value"] if self.run_best else None, name):
            return
        self.run_best = {"step": rec["step"], "metric": name, "value": new}
        if self.writes and self.run_dir is not None:
            path = self.run_dir / "best.pt"
            if rec.get("trial") is not None:  # an alternative's: best.pt once it is chosen (search.choose)
                path = self.run_dir / "trials" / rec["phase"] / str(rec["trial"]) / "best.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.atomic_save({"model": model.state_dict(), **self.run_best}, path)

    # ------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {
            "phase": dict(vars(self.current)) if self.current else None,
            "run_best": copy.copy(self.run_best),
            "last": copy.copy(self.last),
        }

    def load_state(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.current = PhaseBest(**state["phase"]) if state.get("phase") else None
        self.run_best = copy.copy(state.get("run_best"))
        self.last = copy.copy(state.get("last"))
