"""A trial phase at run time: fork, run the alternatives, judge, go on with the winner.

Every alternative of a trial phase starts from the phase-start state, the fork. Without
`prune` each runs the phase's whole window; with `prune` (successive halving) they go rung
by rung: every alternative still in runs to the next rung point and saves its state there,
the best `keep` of them on `select` go on, each from its own saved state, the others stop.
Pruning only decides who continues: a survivor takes the steps it takes without `prune`.
The alternative best on `select` at the phase's end wins; the run goes on from its end state
with its changes. Everything deciding lives here: scores, ranking, choice.

The unit of work is a `Stretch`: alternative k from step `begin` (the phase start or a rung
point) to step `end` (a rung point or the phase's end). A `Backend` runs the stretches of a
rung and says what each scored: `InProcess` (the default) one after another on the live
session, its logs and checkpoints the run's own, so a run interrupted inside a stretch
resumes inside it; other backends (runtime/ray_backend.py) call `run_stretch` (runtime/stretch.py) in other
processes and the driver merges the log rows they wrote, in stretch order. The driver is the
session's process: it builds a rung's stretches, judges, prunes and continues.

The search sees the training session only through `Trainer`. Files (rank 0), under
trials/<phase>/: fork.pt, the phase-start state, until the choice; <k>/at-<step>.pt, the
state alternative k reached at a rung point, and <k>/end.pt at the phase's end (after the
choice the winner's end.pt only, unless keep = "all"); <k>/metrics.json, what its last
stretch scored; <k>/logs-<step>/, the log rows of a stretch run by another process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from ftcompile.runtime import checkpoint, search_cost
from ftcompile.runtime.trials import Diverged, Running, TrialState

from ftcompile import metrics, outputs
from ftcompile.errors import RecipeError
from ftcompile.plan import Plan, TrialsPlan

if TYPE_CHECKING:
    from ftcompile.runtime.distributed import Dist
    from ftcompile.runtime.logs import Logs


@dataclass(frozen=True)
class Stretch:
    """Alternative `k` of trial phase `phase` from step `begin` to step `end`."""

    phase: str
    k: int
    begin: int
    end: int


@dataclass
class StretchResult:
    stretch: Stretch
    score: dict[str, Any]  # {"k", <eval record key>: value, ...}; {"k", ..., "diverged": True} for one that diverged
    step: int  # where the alternative stands: the stretch's end, or its phase's end when it stopped early
    logs: Path | None = None  # its metrics.jsonl / lr.csv rows for the driver to merge; None: in the run's logs


class Trainer(Protocol):
    """What a search needs of the training session (runtime/loop.py's `Session`)."""

    plan: Plan
    run_dir: Path | None
    d: Dist
    logs: Logs | None
    trials: TrialState  # the session's change list follows it; its checkpoints store it
    step: int

    def state(self) -> dict[str, Any]:
        """A snapshot of everything the next step depends on."""
        ...

    def enter(self, state: dict[str, Any], chosen: dict[str, int], running: Running | None) -> None:
        """Go to `state` following the alternatives `chosen` and `running`, keeping the count of steps taken."""
        ...

    def window(self, begin: int, end: int) -> None:
        """Train and evaluate the plan's steps [begin, end) from where the session is."""
        ...

    def last_evaluation(self) -> dict[str, Any] | None:
        """The evaluation of the model as it is (restore_best: the one gone back to); None since `enter`."""
        ...


class Backend(Protocol):
    def run(self, run_dir: Path | None, stretches: Sequence[Stretch]) -> list[StretchResult]:
        """Run the stretches (the survivors of one rung, k ascending); their results in that order."""
        ...


# ---------------------------------------------------------------- judging


def score(rec: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation scored: every metric a recipe can name (the METRICS table) that it
    reported, so `select` can be any of them."""
    return {"k": rec["trial"], **{m.key: rec[m.key] for m in metrics.METRICS.values() if m.key in rec}}


def diverged(k: int) -> dict[str, Any]:
    return {"k": k, "val_loss": math.nan, "top1": math.nan, "diverged": True}


def pick(results: list[dict[str, Any]], select: str) -> int | None:
    """The best alternative on `select` (a metric name); ties go to the earlier, a missing or
    non-finite value ranks last. The comparison is the one keep_best and stop_early use."""
    best, best_value = None, None
    for res in results:
        value = metrics.value(res, select)
        if metrics.improves(value, best_value, select):
            best, best_value = res["k"], value
    return best


def rank(results: list[dict[str, Any]], select: str) -> list[int]:
    """The alternatives best first, by `pick` (ties: the earlier; non-finite: last, in order)."""
    rest, order = list(results), list[int]()
    while rest:
        best = pick(rest, select)
        if best is None:
            return order + [r["k"] for r in rest]
        order.append(best)
        rest = [r for r in rest if r["k"] != best]
    return order


def rung_points(plan: Plan, phase: str) -> tuple[int, ...]:
    """The phase's start, its rung points (`prune.at`) and its end."""
    ph = next(p for p in plan.phases if p.name == phase)
    assert ph.trials is not None
    return (ph.begin, *(ph.trials.prune.at if ph.trials.prune else ()), ph.end)


def survivors(spec: TrialsPlan, r: Running) -> list[int]:
    """The alternatives that run rung `r.rung`: all at the first; then the best `keep` of the
    rung before (one that diverged never goes on), k ascending."""
    if r.rung == 0:
        return list(range(len(spec.alternatives)))
    assert spec.prune is not None
    before = r.rungs[-1]
    out = {k for k in rank(before, spec.select)[: spec.prune.keep[r.rung - 1]]}
    return sorted(k for k in out if not next(res for res in before if res["k"] == k).get("diverged"))


# ---------------------------------------------------------------- files


def folder(run_dir: Path | None, phase: str) -> Path | None:
    return run_dir / "trials" / phase if run_dir is not None else None


def state_file(run_dir: Path, phase: str, k: int, step: int, plan: Plan) -> Path:
    """Where alternative k's state at `step` is kept: at-<step>.pt at a rung point, end.pt at the phase's end."""
    end = next(p.end for p in plan.phases if p.name == phase)
    return run_dir / "trials" / phase / str(k) / ("end.pt" if step == end else f"at-{step}.pt")


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _save(obj: Any, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_save(obj, path)


def _write_score(where: Path | None, res: dict[str, Any]) -> None:
    if where is not None:
        (where / str(res["k"])).mkdir(parents=True, exist_ok=True)
        outputs.write_text(where / str(res["k"]) / "metrics.json", json.dumps(res, allow_nan=True) + "\n")


# ---------------------------------------------------------------- the driver


def run_phase(trainer: Trainer, phase: str, backend: Backend | None = None) -> None:
    """At a trial phase's start (its `trial` change next): keep the state (memory and disk),
    run the alternatives rung by rung, go on with the winner. The session ends at the phase's
    end with the winner's state and changes."""
    ts = trainer.trials
    ts.fork, ts.best, ts.features = trainer.state(), None, None
    where = folder(trainer.run_dir, phase)
    if trainer.d.main:
        _save(ts.fork, where / "fork.pt" if where else None)
    points = rung_points(trainer.plan, phase)
    ts.running = Running(phase, points[0], points[1], 0)
    _drive(trainer, backend or InProcess(trainer))


def resume(trainer: Trainer, backend: Backend | None = None) -> None:
    """The session was loaded inside a trial phase (a checkpoint inside a stretch): that
    stretch goes on from where it is, then the rest of the search."""
    r = trainer.trials.running
    assert r is not None
    live = InProcess(trainer, live=Stretch(r.phase, r.k, r.begin, r.end))
    _drive(trainer, live if backend is None else _LiveFirst(live, backend))


def _drive(trainer: Trainer, backend: Backend) -> None:
    ts = trainer.trials
    r = ts.running
    assert r is not None
    spec, points = ts.specs[r.phase], rung_points(trainer.plan, r.phase)
    while True:
        done = {res["k"] for res in r.results}
        for k in survivors(spec, r):  # an alternative stopped early is at the phase's end: its score stands
            if k in r.stopped and k not in done:
                r.results.append(next(res for res in r.rungs[-1] if res["k"] == k))
        done = {res["k"] for res in r.results}
        todo = [Stretch(r.phase, k, points[r.rung], points[r.rung + 1]) for k in survivors(spec, r) if k not in done]
        for result in backend.run(trainer.run_dir, todo):
            if result.logs is not None and trainer.logs is not None:
                trainer.logs.merge(result.logs)
            _take(r, result, points[-1])
        r.results.sort(key=lambda res: res["k"])
        if r.rung + 2 == len(points):
            break
        r.rungs.append(r.results)
        r.results, r.rung = [], r.rung + 1
    choose(trainer)


def _take(r: Running, result: StretchResult, phase_end: int) -> None:
    """A finished stretch's score goes into the search's record (once: the in-process backend
    records each as it ends, so checkpoints of the next stretch hold it)."""
    k = result.stretch.k
    if any(res["k"] == k for res in r.results):
        return
    r.results.append(result.score)
    if result.step == phase_end and result.stretch.end < phase_end and k not in r.stopped:
        r.stopped.append(k)


def choose(trainer: Trainer) -> None:
    """Load the winner's end state and go on with its changes; record and show the choice."""
    ts = trainer.trials
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
    where = folder(trainer.run_dir, r.phase)
    if ts.best is not None and ts.best[0] == winner:
        state = ts.best[1]
    else:  # resumed after the winner finished (or it ran elsewhere): its end state is on disk
        assert where is not None and trainer.run_dir is not None
        state = load(state_file(trainer.run_dir, r.phase, winner, rung_points(trainer.plan, r.phase)[-1], ts.plan))
    trainer.enter(state, {**ts.chosen, r.phase: winner}, None)
    ts.fork, ts.best, ts.features = None, None, None
    rows = trial_rows(spec, r, winner, rung_points(trainer.plan, r.phase))
    if trainer.logs:
        trainer.logs.trial_results(rows)
    if not trainer.d.main:
        return
    final = [last_score(r, k) for k in range(len(spec.alternatives))]
    print_table(r.phase, spec, final, winner, reached(r, rung_points(trainer.plan, r.phase)) if spec.prune else None)
    search_cost.say(trainer.plan, trainer.run_dir, r.phase, trainer.logs)  # steps and seconds beside a full grid
    if where is None or trainer.run_dir is None:
        return
    where.joinpath("fork.pt").unlink(missing_ok=True)
    # keep_best: the winner's improvements (runtime/best.py) are now the run's best.pt.
    if (where / str(winner) / "best.pt").is_file():
        os.replace(where / str(winner) / "best.pt", trainer.run_dir / "best.pt")
    for k in range(len(spec.alternatives)):
        alt = where / str(k)
        for path in alt.glob("at-*.pt") if spec.keep != "all" else ():
            path.unlink(missing_ok=True)
        for path in alt.glob("logs-*"):
            shutil.rmtree(path, ignore_errors=True)
        if k != winner and spec.keep != "all":
            (alt / "end.pt").unlink(missing_ok=True)
            (alt / "best.pt").unlink(missing_ok=True)


def last_score(r: Running, k: int) -> dict[str, Any]:
    """What alternative k scored where it stopped (its last rung)."""
    for rung in [r.results, *reversed(r.rungs)]:
        for res in rung:
            if res["k"] == k:
                return res
    raise KeyError(k)


def reached(r: Running, points: tuple[int, ...]) -> dict[int, int]:
    """The step each alternative reached: the rung point where it stopped, or the phase's end."""
    out: dict[int, int] = {}
    for i, rung in enumerate([*r.rungs, r.results]):
        for res in rung:
            out[res["k"]] = points[-1] if res["k"] in r.stopped else points[i + 1]
    return out


def trial_rows(spec: TrialsPlan, r: Running, winner: int, points: tuple[int, ...]) -> list[dict[str, Any]]:
    """trials.csv's rows of the phase, k ascending: each alternative's last score; with
    `prune` also the step it reached and its `select` value at each rung point it reached."""
    at = reached(r, points)
    rows = []
    for k in range(len(spec.alternatives)):
        res = last_score(r, k)
        row = {
            "phase": r.phase,
            "k": k,
            "label": spec.alternatives[k].label,
            **{m.name: _num(res[m.key]) for m in metrics.METRICS.values() if m.key in res},
            "chosen": str(k == winner).lower(),
        }
        if spec.prune:
            row["reached"] = str(at[k])
            for i, rung in enumerate(r.rungs):
                mine = [res for res in rung if res["k"] == k]
                row[f"rung{i + 1}"] = _num(metrics.value(mine[0], spec.select)) if mine else ""
        rows.append(row)
    return rows


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def print_table(
    phase: str,
    spec: TrialsPlan,
    results: list[dict[str, Any]],
    winner: int,
    reached: dict[int, int] | None = None,
) -> None:
    """A small table per trial phase, the winner marked: one column per metric reported
    (val_loss, top1, top5, and the EMA's with [run] ema); with `prune`, the step each
    alternative reached."""
    shown = [m for m in metrics.METRICS.values() if any(m.key in res for res in results)]

    def cell(res: dict[str, Any], m: metrics.Metric) -> str:
        value = res.get(m.key)
        if value is None or not math.isfinite(value):
            return "diverged" if m.key == "val_loss" else "-"
        return f"{100 * value:.2f}%" if m.maximise else f"{value:.4f}"

    rows = [["", "k", "alternative", *(m.key for m in shown), *(["reached"] if reached else [])]]
    for res in results:
        rows.append(
            [
                "*" if res["k"] == winner else "",
                str(res["k"]),
                spec.alternatives[res["k"]].label,
                *(cell(res, m) for m in shown),
                *([f"step {reached[res['k']]}"] if reached else []),
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


# ---------------------------------------------------------------- backends


class InProcess:
    """The stretches one after another on the live session: its logs and checkpoints are the
    run's own, so a run interrupted inside a stretch resumes inside it (`live`: the stretch the
    session is inside after such a resume, which goes on from where it is)."""

    def __init__(self, trainer: Trainer, live: Stretch | None = None) -> None:
        self.trainer, self.live = trainer, live
        self.held: dict[int, dict[str, Any]] = {}  # without a run directory: states at the rung point

    def run(self, run_dir: Path | None, stretches: Sequence[Stretch]) -> list[StretchResult]:
        return [self._one(s) for s in stretches]

    def _one(self, s: Stretch) -> StretchResult:
        t, ts = self.trainer, self.trainer.trials
        r = ts.running
        assert r is not None
        if s != self.live:
            start = self._start_state(s)
            r.k, r.begin, r.end = s.k, s.begin, s.end
            t.enter(start, ts.chosen, r)
        self.live = None
        result, state = run_here(t, s, t.run_dir)
        end_of_phase = rung_points(t.plan, s.phase)[-1]
        if state is not None and t.run_dir is None and result.step != end_of_phase:
            self.held[s.k] = state  # no run directory: the rung's states stay in memory
        if state is not None and result.step == end_of_phase:
            if pick([*r.results, result.score], ts.specs[s.phase].select) == s.k:
                ts.best = (s.k, state)  # the best end state so far, kept in memory for the choice
        _take(r, result, end_of_phase)
        return result

    def _start_state(self, s: Stretch) -> dict[str, Any]:
        """The fork at the phase start; at a rung point, the state the alternative saved there."""
        t, ts = self.trainer, self.trainer.trials
        if s.begin == rung_points(t.plan, s.phase)[0]:
            if ts.fork is None:  # resumed: the fork was saved before the interruption
                where = folder(t.run_dir, s.phase)
                assert where is not None, "a resumed trial needs its run directory"
                ts.fork = load(where / "fork.pt")
            return ts.fork
        if s.k in self.held:
            return self.held.pop(s.k)
        assert t.run_dir is not None, "a resumed trial needs its run directory"
        return load(state_file(t.run_dir, s.phase, s.k, s.begin, t.plan))


class _LiveFirst:
    """Another backend, after the stretch the resumed session is inside has ended in process."""

    def __init__(self, live: InProcess, then: Backend) -> None:
        self.live, self.then = live, then

    def run(self, run_dir: Path | None, stretches: Sequence[Stretch]) -> list[StretchResult]:
        if self.live.live is None or self.live.live not in stretches:
            return self.then.run(run_dir, stretches)
        first = [self.live.run(run_dir, [self.live.live])[0]]
        return first + self.then.run(run_dir, [s for s in stretches if s != first[0].stretch])


def run_here(t: Trainer, s: Stretch, run_dir: Path | None) -> tuple[StretchResult, dict[str, Any] | None]:
    """Run stretch `s` from where the session is (it has entered the stretch's start state):
    its steps and evaluations, then its score and its state at the end (None: it diverged),
    kept (rank 0) in trials/<phase>/<k>/ with metrics.json."""
    where = folder(run_dir, s.phase)
    try:
        t.window(t.step, s.end)
    except Diverged:  # a diverged alternative ranks last
        res, step, state = diverged(s.k), s.end, None
    else:
        rec = t.last_evaluation()
        if rec is None or rec.get("trial") != s.k or rec["phase"] != s.phase:
            raise AssertionError(f"alternative {s.k} of {s.phase} ended at step {t.step} with no evaluation")
        res, step, state = score(rec), t.step, t.state()
        if t.d.main and run_dir is not None:
            _save(state, state_file(run_dir, s.phase, s.k, step, t.plan))
    if t.d.main:
        _write_score(where, res)
    return StretchResult(s, res, step), state
