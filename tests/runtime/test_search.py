"""Successive halving inside a trial phase (issue 19 §1) and the search's seam (issue 18 §2).

`tune` has four alternatives (the LR cut of `late`) over 8 steps, pruned at 25% and 50% of its
window (steps 4 and 6), keeping half each time: 4 alternatives run [2, 4), 2 run [4, 6), 1 runs
[6, 10). The same recipe without `prune` is the reference: every alternative that reaches a
rung point took bitwise the steps it takes there, and the winner's end state is its end state
without `prune`. Runs killed between two stretches of a rung, between rungs, and inside the
last survivor's stretch after the cuts resume bitwise (after a choice: tests/runtime/test_trials_run.py); a search whose stretches run through `run_stretch` (each in a fresh
session from the run directory, as a Ray task runs it) gives the run the in-process one gives.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from ftcompile.runtime import search, stretch
from ftcompile.runtime.loop import Hooks, Session, StepInfo, observe
from ftcompile.runtime.search import Stretch, StretchResult
from ftcompile.runtime.trials import Running
from runtime_helpers import assert_same_tensors, cli, load_tensors, metrics, metrics_bytes, recipe_text, write_recipe

CUTS = '["head / 3", "head / 10", "head / 30", "head / 100"]'
PHASES = f"""
[phases.warm]
train = ["head"]
steps = 2
lr = {{ head = 0.05 }}

[phases.tune]
after = ["warm"]
train = ["late", "head"]
steps = 8
lr = {{ head = 0.05, late = "head / 3" }}
scheduler = {{ type = "CosineAnnealingLR" }}
[phases.tune.trials]
"lr.late" = {CUTS}
select = "val_top1"
keep = "all"
PRUNE

[phases.last]
after = ["tune"]
train = ["head"]
steps = 2
lr = {{ head = 0.01 }}
"""
PRUNE = "prune = { at = [0.25, 0.5], keep = 0.5 }"
RUN = 'eval_every = "100 steps"\ncheckpoint_every = "2 steps"'


class Kill(Hooks):
    """Stop the run after step `at` taken in rung `rung` of the search (by alternative `k`)."""

    def __init__(self, rung: int, at: int, k: int | None = None) -> None:
        self.rung, self.at, self.k = rung, at, k

    def on_step(self, session: Session, info: StepInfo) -> None:
        r = session.trials.running
        if r and r.rung == self.rung and info.step == self.at and self.k in (None, r.k):
            raise KeyboardInterrupt


class Elsewhere:
    """A backend that runs every stretch through run_stretch: a fresh session built from the
    run directory, its logs in trials/<phase>/<k>/logs-<end>/ (what a Ray task does)."""

    def __init__(self) -> None:
        self.ran: list[Stretch] = []

    def run(self, run_dir: Path | None, stretches: Sequence[Stretch]) -> list[StretchResult]:
        assert run_dir is not None
        self.ran += stretches
        return [stretch.run_stretch(run_dir, s) for s in stretches]


class UseBackend(Hooks):
    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def on_start(self, session: Session) -> None:
        if session.run_dir is not None:  # the driver's session, not run_stretch's
            session.search_backend = self.backend


# Checkpoints every 2 steps: the newest before each kill is k=0's at the end of its first
# stretch (step 4), the first rung's last stretch's (step 4), and one inside the last stretch (8).
KILLS = {
    "between-stretches": Kill(0, 3, k=1),
    "between-rungs": Kill(1, 4),  # the first step of the second rung
    "inside-after-cut": Kill(2, 9),  # inside the last survivor's stretch
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("search")
    pruned = write_recipe(tmp / "pruned", recipe_text("pruned", PHASES.replace("PRUNE", PRUNE), run=RUN))
    full = write_recipe(tmp / "full", recipe_text("full", PHASES.replace("PRUNE", ""), run=RUN))
    assert cli(None, "run", pruned, "--out", tmp / "pruned-run").rc == 0
    assert cli(None, "run", full, "--out", tmp / "full-run").rc == 0
    for name, kill in KILLS.items():
        with observe(kill):
            assert cli(None, "run", pruned, "--out", tmp / name).rc == 130, name
        assert cli(None, "resume", tmp / name).rc == 0, name
    elsewhere = Elsewhere()
    with observe(UseBackend(elsewhere)):
        assert cli(None, "run", pruned, "--out", tmp / "elsewhere").rc == 0
    return {
        "tmp": tmp,
        "recipe": pruned,
        "pruned": tmp / "pruned-run",
        "full": tmp / "full-run",
        "elsewhere": tmp / "elsewhere",
        "ran elsewhere": elsewhere.ran,
        **{name: tmp / name for name in KILLS},
    }


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def steps_of(run_dir: Path, k: int) -> list[tuple[int, float, dict[str, float]]]:
    return [(r["step"], r["loss"], r["lr"]) for r in metrics(run_dir) if r["type"] == "step" and r.get("trial") == k]


def test_the_rungs_run_4_then_2_then_1_and_the_survivors_are_the_best_half(runs: dict[str, Any]) -> None:
    lr = rows(runs["pruned"] / "lr.csv")
    ran = [(int(r["step"]), r["trial"]) for r in lr if r["phase"] == "tune"]
    first = [(s, str(k)) for k in range(4) for s in (2, 3)]
    assert ran[:8] == first
    evals = [r for r in metrics(runs["pruned"]) if r["type"] == "eval" and r["phase"] == "tune"]
    at4 = [r for r in evals if r["step"] == 4]
    assert [r["trial"] for r in at4] == [0, 1, 2, 3]  # every alternative evaluated at the first rung
    by_top1 = sorted(at4, key=lambda r: (-r["top1"], r["trial"]))  # ties: the earlier
    second = sorted(r["trial"] for r in by_top1[:2])
    assert ran[8:12] == [(s, str(k)) for k in second for s in (4, 5)]
    at6 = [r for r in evals if r["step"] == 6]
    assert [r["trial"] for r in at6] == second
    winner = sorted(at6, key=lambda r: (-r["top1"], r["trial"]))[0]["trial"]
    assert ran[12:] == [(s, str(winner)) for s in range(6, 10)]
    table = rows(runs["pruned"] / "trials.csv")
    assert [r["chosen"] for r in table] == ["true" if k == winner else "false" for k in range(4)]


def test_a_survivor_trains_bitwise_as_without_prune(runs: dict[str, Any]) -> None:
    """Every stretch an alternative ran with `prune` is bitwise the same steps (losses, LRs)
    as its run without `prune`, and the winner's end state is its end state without prune."""
    table = rows(runs["pruned"] / "trials.csv")
    for k in range(4):
        got = steps_of(runs["pruned"], k)
        want = steps_of(runs["full"], k)
        assert len(got) == int(table[k]["reached"]) - 2 and got == want[: len(got)], k
    winner = next(int(r["k"]) for r in table if r["chosen"] == "true")
    end = load_tensors(runs["pruned"] / "trials" / "tune" / str(winner) / "end.pt")
    assert_same_tensors(end["model"], load_tensors(runs["full"] / "trials" / "tune" / str(winner) / "end.pt")["model"])
    # the LR window is not compressed: the winner's lr.csv rows are those without prune
    lr_full = [r for r in rows(runs["full"] / "lr.csv") if r["trial"] == str(winner)]
    assert [r for r in rows(runs["pruned"] / "lr.csv") if r["trial"] == str(winner)] == lr_full


def test_trials_csv_records_the_step_reached_and_the_metric_at_each_rung(runs: dict[str, Any]) -> None:
    header = (runs["pruned"] / "trials.csv").read_text().splitlines()[0]
    assert header == "phase,k,label,val_loss,val_top1,val_top5,chosen,reached,rung1,rung2"
    evals = {(r["step"], r["trial"]): r for r in metrics(runs["pruned"]) if r["type"] == "eval" and "trial" in r}
    for row in rows(runs["pruned"] / "trials.csv"):
        k, reached = int(row["k"]), int(row["reached"])
        assert reached in (4, 6, 10)
        for i, step in enumerate((4, 6)):
            cell = row[f"rung{i + 1}"]
            assert cell == (repr(evals[(step, k)]["top1"]) if step <= reached else ""), (k, i)
        last = evals[(reached, k)]  # the metrics columns: where it stopped
        assert float(row["val_top1"]) == last["top1"] and float(row["val_loss"]) == last["val_loss"]
    # without prune, trials.csv keeps its columns
    header = (runs["full"] / "trials.csv").read_text().splitlines()[0]
    assert header == "phase,k,label,val_loss,val_top1,val_top5,chosen"


@pytest.mark.parametrize("other", [*KILLS, "elsewhere"])
def test_resume_at_every_kind_of_point_and_run_stretch_are_bitwise(runs: dict[str, Any], other: str) -> None:
    pruned, run = runs["pruned"], runs[other]
    assert_same_tensors(load_tensors(pruned / "model.pt"), load_tensors(run / "model.pt"))
    for name in ("lr.csv", "trials.csv"):
        assert (pruned / name).read_bytes() == (run / name).read_bytes(), name
    assert metrics_bytes(pruned) == metrics_bytes(run)


def test_run_stretch_ran_the_rungs_stretches_in_order(runs: dict[str, Any]) -> None:
    ran = runs["ran elsewhere"]
    assert [(s.k, s.begin, s.end) for s in ran[:4]] == [(k, 2, 4) for k in range(4)]
    assert [(s.begin, s.end) for s in ran[4:]] == [(4, 6), (4, 6), (6, 10)]
    assert not list((runs["elsewhere"] / "trials").rglob("logs-*"))  # merged, then removed


def test_the_report_shows_where_each_alternative_stopped(runs: dict[str, Any], capsys: Any) -> None:
    out = runs["tmp"] / "report.html"
    assert cli(capsys, "report", runs["pruned"], "-o", out).rc == 0
    html = out.read_text()
    table = rows(runs["pruned"] / "trials.csv")
    assert "Rungs at steps 4, 6 of [2, 10), select val_top1" in html
    for step, where in ((4, "stopped at step 4"), (6, "stopped at step 6"), (10, "ran to the end")):
        ks = ", ".join(f"k={r['k']} ({r['label']})" for r in table if r["reached"] == str(step))
        assert f"{where}: {ks}" in html


def test_rank_puts_non_finite_last_and_ties_keep_the_earlier() -> None:
    nan = math.nan
    results = [
        {"k": 0, "top1": 0.5},
        {"k": 1, "top1": nan, "diverged": True},
        {"k": 2, "top1": 0.5},
        {"k": 3, "top1": 0.7},
        {"k": 4},  # not reported
    ]
    assert search.rank(results, "val_top1") == [3, 0, 2, 1, 4]
    assert search.rank([{"k": 0, "val_loss": math.inf}, {"k": 1, "val_loss": 2.0}], "val_loss") == [1, 0]


def test_survivors_are_the_best_keep_never_a_diverged_one() -> None:
    from ftcompile.plan import Prune, TrialsPlan

    spec = TrialsPlan(
        select="val_loss", mode="grid", keep="winner", alternatives=(), prune=Prune(at=(4, 6), keep=(3, 1))
    )
    r = Running("tune", 4, 6, 0, rung=1)
    r.rungs = [
        [
            {"k": 0, "val_loss": 0.9},
            {"k": 1, "val_loss": math.nan, "top1": math.nan, "diverged": True},
            {"k": 2, "val_loss": 0.4},
            {"k": 3, "val_loss": 0.4},
        ]
    ]
    assert search.survivors(spec, r) == [0, 2, 3]
    r.rungs[0][0]["val_loss"] = math.inf  # with keep 3 of 4, a non-finite one is kept only over a diverged one
    assert search.survivors(spec, r) == [0, 2, 3]
    spec2 = TrialsPlan(
        select="val_loss", mode="grid", keep="winner", alternatives=(), prune=Prune(at=(4, 6), keep=(2, 1))
    )
    assert search.survivors(spec2, r) == [2, 3]


def test_an_alternative_that_stopped_early_at_a_rung_keeps_its_score(tmp_path: Path) -> None:
    """_take: a stretch that ended at its phase's end before its rung point (stop_early) is
    marked stopped; the next rung carries its score without running it."""
    r = Running("tune", 2, 4, 0)
    search._take(r, StretchResult(Stretch("tune", 0, 2, 4), {"k": 0, "top1": 0.9}, 10), phase_end=10)
    search._take(r, StretchResult(Stretch("tune", 1, 2, 4), {"k": 1, "top1": 0.5}, 4), phase_end=10)
    search._take(r, StretchResult(Stretch("tune", 1, 2, 4), {"k": 1, "top1": 0.1}, 4), phase_end=10)  # once
    assert r.results == [{"k": 0, "top1": 0.9}, {"k": 1, "top1": 0.5}] and r.stopped == [0]
    assert search.reached(r, (2, 4, 10)) == {0: 10, 1: 4}
