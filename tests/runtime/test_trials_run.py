"""Trials at run time: each alternative starts from the phase-start state bitwise, the choice
follows `select`, lr.csv equals `plan --trace` with the trial rows, a cached head-only trial
phase computes its features once, and a run killed inside the second alternative of a trial
phase resumes bitwise."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from ftcompile.runtime import features as features_module
from ftcompile.runtime.loop import Hooks, Session, StepInfo, observe
from ftcompile.runtime.search import pick
from runtime_helpers import assert_same_tensors, cli, load_tensors, metrics, metrics_bytes, recipe_text, write_recipe

# warm: head only, cached features. head2: head only (cached), two LRs, select val_loss: lr 5
# makes the linear head's logits huge (an overconfident, high val loss), lr 1e-8 leaves it
# where warm left it, so the second alternative is known to win.
# late: how deep to unfreeze (head / late+head), select val_top1. 14 optimizer steps in all.
PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }
bn = "frozen"

[phases.head2]
after = ["warm"]
train = ["head"]
steps = 3
lr = { head = 0.05 }
bn = "frozen"
[phases.head2.trials]
"lr.head" = [5.0, 1e-8]
select = "val_loss"

[phases.late]
after = ["head2"]
train = ["late", "head"]
steps = 3
lr = { head = 0.02, late = "head / 10" }
scheduler = { type = "CosineAnnealingLR" }
[phases.late.trials]
train = [["head"], ["late", "head"]]
keep = "all"
"""
RUN = 'checkpoint_every = "2 steps"\neval_every = "100 steps"'


class Starts(Hooks):
    """The model before the first optimizer step of each alternative, and feature-cache builds."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def on_start(self, session: Session) -> None:
        def before(*_: Any) -> None:
            r = session.trials.running
            if r is not None and session.step == r.begin:
                self.first[(r.phase, r.k)] = {k: v.detach().clone() for k, v in session.model.state_dict().items()}

        session.optimizer.register_step_pre_hook(before)


class Kill(Hooks):
    """Stop the run after step `at` of alternative `k` of `phase` (a checkpoint lies before it)."""

    def __init__(self, phase: str, k: int, at: int) -> None:
        self.phase, self.k, self.at = phase, k, at

    def on_step(self, session: Session, info: StepInfo) -> None:
        r = session.trials.running
        if r is not None and r.phase == self.phase and r.k == self.k and info.step == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("trials")
    recipe = write_recipe(tmp, recipe_text("trials", PHASES, run=RUN))
    starts, builds = Starts(), []
    real_build = features_module.FeatureCache.build

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        builds.append(1)
        return real_build(*args, **kwargs)

    features_module.FeatureCache.build = counting_build  # type: ignore[method-assign]
    try:
        with observe(starts):
            assert cli(None, "run", recipe, "--out", tmp / "full").rc == 0
    finally:
        features_module.FeatureCache.build = real_build  # type: ignore[method-assign]
    kills = {
        "killed": Kill("late", 1, 7),  # inside the second alternative, after its checkpoint at step 7
        "killed-between": Kill("head2", 1, 2),  # the first step of head2's second alternative: the first has ended
        "killed-after-choice": Kill("late", 0, 5),  # the first step after head2's choice
    }
    for name, kill in kills.items():
        with observe(kill):
            assert cli(None, "run", recipe, "--out", tmp / name).rc == 130
        assert cli(None, "resume", tmp / name).rc == 0
    assert cli(None, "rerun", tmp / "full", "--out", tmp / "rerun").rc == 0
    return {
        "tmp": tmp,
        "recipe": recipe,
        "full": tmp / "full",
        "starts": starts.first,
        "builds": len(builds),
        **{name: tmp / name for name in (*kills, "rerun")},
    }


def test_alternatives_start_from_the_same_state(runs: dict[str, Any]) -> None:
    first = runs["starts"]
    assert set(first) == {("head2", 0), ("head2", 1), ("late", 0), ("late", 1)}
    assert_same_tensors(first[("head2", 0)], first[("head2", 1)])
    assert_same_tensors(first[("late", 0)], first[("late", 1)])


def trials_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_choice_follows_select(runs: dict[str, Any]) -> None:
    rows = trials_rows(runs["full"])
    assert [(r["phase"], r["k"]) for r in rows] == [("head2", "0"), ("head2", "1"), ("late", "0"), ("late", "1")]
    head2 = rows[:2]
    # lr 1e-8 leaves the head where warm left it; lr 5 blows its logits up: the second wins.
    assert float(head2[1]["val_loss"]) < float(head2[0]["val_loss"])
    assert [r["chosen"] for r in head2] == ["false", "true"]
    late = rows[2:]
    best = max(range(2), key=lambda i: (float(late[i]["val_top1"]), -i))  # ties: the earlier one
    assert [r["chosen"] for r in late] == ["true" if i == best else "false" for i in range(2)]
    # The run went on from the winner's end state: its final model is what the winner left
    # after the last phase, and keep = "all" kept both end states of `late`.
    end = torch.load(runs["full"] / "trials" / "late" / str(best) / "end.pt", weights_only=True)
    assert_same_tensors(end["model"], load_tensors(runs["full"] / "model.pt"))
    assert (runs["full"] / "trials" / "late" / str(1 - best) / "end.pt").is_file()
    assert not (runs["full"] / "trials" / "head2" / "0" / "end.pt").exists()  # keep = "winner"
    assert not (runs["full"] / "trials" / "head2" / "fork.pt").exists()


def test_lr_csv_equals_the_trace_with_trial_rows(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    trace = runs["tmp"] / "trace.csv"
    assert cli(capsys, "plan", runs["recipe"], "--trace", trace).rc == 0
    assert (runs["full"] / "lr.csv").read_bytes() == trace.read_bytes()
    trials = [line.split(",")[2] for line in trace.read_text().splitlines()[1:]]
    assert trials == [""] * 2 + ["0"] * 3 + ["1"] * 3 + ["0"] * 3 + ["1"] * 3
    steps = [r for r in metrics(runs["full"]) if r["type"] == "step"]
    assert [r.get("trial") for r in steps] == [None] * 2 + [0] * 3 + [1] * 3 + [0] * 3 + [1] * 3


def test_a_cached_trial_phase_computes_features_once(runs: dict[str, Any]) -> None:
    assert runs["builds"] == 2  # warm, then head2 once for both alternatives


@pytest.mark.parametrize("other", ["killed", "killed-between", "killed-after-choice", "rerun"])
def test_resume_at_any_point_of_a_trial_and_rerun_are_bitwise(runs: dict[str, Any], other: str) -> None:
    """Killed inside an alternative, between two, or right after a choice, then resumed; or
    rerun from the stored plan: the same choices, model, logs and trials.csv."""
    full, killed = runs["full"], runs[other]
    assert_same_tensors(load_tensors(full / "model.pt"), load_tensors(killed / "model.pt"))
    for name in ("lr.csv", "trials.csv"):
        assert (full / name).read_bytes() == (killed / name).read_bytes(), name
    assert metrics_bytes(full) == metrics_bytes(killed)  # all but the steps' wall-clock timing


def test_pick_ranks_non_finite_last_and_ties_to_the_earlier() -> None:
    nan = math.nan
    assert pick([{"k": 0, "top1": 0.5}, {"k": 1, "top1": 0.5}], "val_top1") == 0
    assert pick([{"k": 0, "top1": nan}, {"k": 1, "top1": 0.1}], "val_top1") == 1
    assert pick([{"k": 0, "val_loss": 0.3}, {"k": 1, "val_loss": 0.2}, {"k": 2, "val_loss": math.inf}], "val_loss") == 1
    assert pick([{"k": 0, "val_loss": nan}, {"k": 1, "val_loss": nan}], "val_loss") is None


# tune stops early in each alternative: its evaluations at steps 4 and 6 (eval_every 2) cannot
# improve val_loss by min_delta 1.0, so with patience 1 it stops at 6 and goes back to step 4.
STOPPING = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }
bn = "frozen"

[phases.tune]
after = ["warm"]
train = ["head"]
steps = 8
lr = { head = 0.05 }
bn = "frozen"
stop_early = { metric = "val_loss", patience = 1, min_delta = 1.0 }
restore_best = true
[phases.tune.trials]
"lr.head" = [0.05, 0.01]
select = "val_loss"

[phases.last]
after = ["tune"]
train = ["head"]
steps = 2
lr = { head = 0.01 }
bn = "frozen"
"""


@pytest.mark.slow
def test_an_alternative_that_stops_early_is_judged_on_the_state_it_ends_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(
        tmp_path, recipe_text("trialstop", STOPPING, run='eval_every = "2 steps"\ncheckpoint_every = "2 steps"')
    )
    res = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert res.rc == 0, res.err
    recs = metrics(tmp_path / "run")
    # Each eval line of the trial phase names its alternative as trials.csv does (issue 21).
    evals = [line for line in res.out.splitlines() if line.startswith("eval  step")]
    labels = {
        k: next(r["label"] for r in csv.DictReader((tmp_path / "run" / "trials.csv").open()) if r["k"] == str(k))
        for k in (0, 1)
    }
    for r, line in zip([r for r in recs if r["type"] == "eval"], evals, strict=True):
        assert f"[k={r['trial']} {labels[r['trial']]}]" in line if "trial" in r else "[" not in line
    stops = [(r["step"], r.get("trial"), r["next_step"]) for r in recs if r["type"] == "stop"]
    assert [(s, n) for s, _, n in stops] == [(6, 10), (6, 10)]
    assert [(r["from_step"]) for r in recs if r["type"] == "restore"] == [4, 4]
    # Each alternative ran steps 2..5 only; the next phase starts at its planned step 10.
    rows = list(csv.DictReader((tmp_path / "run" / "lr.csv").open()))
    assert [(int(r["step"]), r["trial"]) for r in rows] == [
        (0, ""),
        (1, ""),
        (2, "0"),
        (3, "0"),
        (4, "0"),
        (5, "0"),
        (2, "1"),
        (3, "1"),
        (4, "1"),
        (5, "1"),
        (10, ""),
        (11, ""),
    ]
    # Each alternative is judged on its step-4 evaluation: the state restore_best went back to.
    at4 = {r["trial"]: r["val_loss"] for r in recs if r["type"] == "eval" and r["step"] == 4}
    table = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    assert {int(r["k"]): float(r["val_loss"]) for r in table} == pytest.approx(at4, rel=1e-9)
    winner = min(at4, key=lambda k: (at4[k], k))
    assert [r["chosen"] for r in table] == ["true" if k == winner else "false" for k in range(2)]
    assert (tmp_path / "run" / "model.pt").is_file()


def test_a_finished_trial_run_keeps_its_phase_start_checkpoints_only(runs: dict[str, Any]) -> None:
    """keep_checkpoints = "boundaries" with trials: files are numbered by steps taken in all;
    once finished, what stays is the phase start taken outside any alternative: warm's end,
    step 2. head2's end (step 5) is only reached inside head2's alternatives; the state the
    run went on from is trials/head2/<winner>/end.pt."""
    kept = []
    for path in sorted((runs["full"] / "checkpoints").glob("step-*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        kept.append((state["step"], state["trials"]["running"]))
    assert kept == [(2, None)]
    assert (runs["full"] / "trials" / "head2" / "1" / "end.pt").is_file()  # the winner (lr 1e-8)


# `tune` trains `late` and the head; the head has SGD momentum from `warm` at the fork, so an
# alternative started from a fork that an earlier alternative changed would show it.
FORK_PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }

[phases.tune]
after = ["warm"]
train = ["late", "head"]
steps = 3
lr = { head = 0.05, late = "head / 3" }
"""


@pytest.mark.slow
def test_every_alternative_equals_its_phase_run_without_trials(tmp_path: Path) -> None:
    """Alternative k of a trial phase is bitwise the run whose phase has k's values and no
    trials: same step losses, same final model (the first alternative trivially; the later
    ones only if the earlier ones left the phase-start state untouched, momentum included)."""
    trials = FORK_PHASES + '[phases.tune.trials]\n"lr.late" = ["head / 3", "head / 10", "head / 30"]\nkeep = "all"\n'
    run = 'eval_every = "100 steps"\ncheckpoint_every = "100 steps"'
    tri = write_recipe(tmp_path / "tri", recipe_text("tri", trials, run=run))
    assert cli(None, "run", tri, "--out", tmp_path / "tri" / "run").rc == 0
    for k, cut in enumerate(["head / 3", "head / 10", "head / 30"]):
        plain = write_recipe(
            tmp_path / f"plain{k}", recipe_text(f"plain{k}", FORK_PHASES.replace('"head / 3"', f'"{cut}"'), run=run)
        )
        assert cli(None, "run", plain, "--out", tmp_path / f"plain{k}" / "run").rc == 0
        got = [
            (r["step"], r["loss"])
            for r in metrics(tmp_path / "tri" / "run")
            if r["type"] == "step" and r.get("trial", k) == k
        ]
        want = [(r["step"], r["loss"]) for r in metrics(tmp_path / f"plain{k}" / "run") if r["type"] == "step"]
        assert got == want, k
        end = torch.load(tmp_path / "tri" / "run" / "trials" / "tune" / str(k) / "end.pt", weights_only=True)
        assert_same_tensors(end["model"], load_tensors(tmp_path / f"plain{k}" / "run" / "model.pt"))


# How deep to unfreeze, zipped with the head's LR: alternative 0 (late + head at lr 1e-8)
# leaves the model where warm left it, alternative 1 (head alone at lr 5) blows the head's
# logits up (a high val loss, as head2 above), so with select = val_loss the winner is the
# first alternative, not the last one run; it unfreezes two groups where the last unfreezes
# one, so the two alternatives' change lists differ in length before the phase after them.
DEPTH = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }
cache_features = false

[phases.depth]
after = ["warm"]
train = ["late", "head"]
steps = 2
lr = { head = 1e-8, late = "head" }
cache_features = false
[phases.depth.trials]
train = [["late", "head"], ["head"]]
"lr.head" = [1e-8, 5.0]
mode = "zip"
select = "val_loss"

[phases.last]
after = ["depth"]
train = ["head"]
steps = 3
lr = { head = 0.01 }
cache_features = false
scheduler = { type = "LinearLR", start_factor = 0.1 }
"""


@pytest.mark.slow
def test_the_run_goes_on_with_the_winners_changes_when_it_is_not_the_last_alternative(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The choice is recorded, not only loaded: after it the run follows the winner's change
    list (lr.csv equals `plan --trace`, so the next phase's first changes and name are
    there) and a checkpoint written after the choice records the winner."""
    run = 'eval_every = "100 steps"\ncheckpoint_every = "1 step"\nkeep_checkpoints = "all"'
    recipe = write_recipe(tmp_path, recipe_text("depth", DEPTH, run=run))
    assert cli(capsys, "run", recipe, "--out", tmp_path / "run").rc == 0
    assert [r["chosen"] for r in trials_rows(tmp_path / "run")] == ["true", "false"]  # the first, not the last
    assert cli(capsys, "plan", recipe, "--trace", tmp_path / "trace.csv").rc == 0
    assert (tmp_path / "run" / "lr.csv").read_text() == (tmp_path / "trace.csv").read_text()
    rows = list(csv.DictReader((tmp_path / "run" / "lr.csv").open()))
    assert [(r["step"], r["phase"]) for r in rows][-3:] == [("4", "last"), ("5", "last"), ("6", "last")]
    after = [
        torch.load(p, map_location="cpu", weights_only=True)
        for p in sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    ]
    after = [s for s in after if s["step"] > 4 and s["trials"]["running"] is None]
    assert after and all(s["trials"]["chosen"] == {"depth": 0} for s in after)


def test_an_eval_line_names_what_it_evaluated_when_the_phase_alone_would_mislead() -> None:
    from ftcompile.runtime.logs import eval_line

    rec = {"step": 46, "epoch": 2.0, "phase": "layer4", "val_loss": 0.5, "top1": 0.9}
    assert eval_line(rec) == "eval  step     46  epoch   2.00  layer4       val_loss 0.5000  top1  90.00%"
    assert eval_line(rec, "k=1 layer4=head / 10") == (
        "eval  step     46  epoch   2.00  layer4       [k=1 layer4=head / 10]   val_loss 0.5000  top1  90.00%"
    )
