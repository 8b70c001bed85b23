"""Trials at run time, the record: which alternative each trial phase chose, and where the
search of the phase running now stands. What runs and judges them is runtime/search.py.

In the plan a trial phase is one `trial` change; its alternatives' own changes sit in
`PhasePlan.trials`. `TrialState` knows which alternative each finished trial phase chose and
which one runs now, so the change list the session follows (and replays in `load_state`) is
the one that really ran. It is part of every checkpoint, so a run resumes inside an
alternative, between two, between two rungs, or after the choice, and goes on exactly as it
would have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ftcompile.errors import RecipeError
from ftcompile.plan import Plan, TrialsPlan

if TYPE_CHECKING:
    from ftcompile.runtime.features import FeatureCache


def rung_count(plan: Plan) -> int:
    """The most rung points (`prune.at`) of one trial phase of the plan; 0 without prune."""
    return max((len(ph.trials.prune.at) for ph in plan.phases if ph.trials and ph.trials.prune), default=0)


class Diverged(RecipeError):
    """The loss became inf or nan. Inside a trial the alternative ranks last; elsewhere it is
    the user error it always was."""


@dataclass
class Running:
    """The trial phase being searched: the stretch running now (alternative `k` from step
    `begin` to step `end`, a rung point or the phase's end), what the stretches of this rung
    finished so far scored, and what each earlier rung scored."""

    phase: str
    begin: int
    end: int
    k: int
    # {"k", <eval record key>: value, ...} per finished stretch of this rung, in the order run
    # (every metric of ftcompile/metrics.py the evaluation reported; "diverged": True for one that did)
    results: list[dict[str, Any]] = field(default_factory=list)
    rung: int = 0  # 0: from the phase start to its first rung point (to its end without prune)
    rungs: list[list[dict[str, Any]]] = field(default_factory=list)  # the results of each earlier rung
    stopped: list[int] = field(default_factory=list)  # alternatives at the phase's end already (stop_early)


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

    def record(self) -> dict[str, Any]:
        return {"chosen": dict(self.chosen), "running": asdict(self.running) if self.running else None}

    def restore(self, record: dict[str, Any] | None) -> None:
        record = record or {}
        self.chosen = dict(record.get("chosen") or {})
        running = record.get("running")
        self.running = (
            Running(
                **{
                    **running,
                    "results": [dict(r) for r in running["results"]],
                    "rungs": [[dict(r) for r in rung] for rung in running.get("rungs", [])],
                    "stopped": list(running.get("stopped", [])),
                }
            )
            if running
            else None
        )

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
