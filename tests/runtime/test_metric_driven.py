"""Metric-driven phases: stop_early ends a phase at a known evaluation and the next phase
starts at its planned step with its planned LRs; restore_best goes back to the best
evaluation's model and optimizer moments; keep_best writes best.pt; resume is bitwise
across the stop and the restore."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from ftcompile.runtime import checkpoint
from ftcompile.runtime.loop import Hooks, Session, observe
from runtime_helpers import cli, load_tensors, metrics, recipe_text, write_recipe

from ftcompile.compiler import compile_recipe
from ftcompile.plan import Plan
from ftcompile.trace import lr_trace

# Phase a cannot improve val_loss (~1.1 for 3 classes) by min_delta = 1.0 within 2 steps:
# its first evaluation (step 2) is its best, the second (step 4) is the first without an
# improvement, so with patience 1 it stops at step 4 and the run jumps to b's first step, 8.
PHASES = """
[phases.a]
train = ["head"]
steps = 8
lr = { head = 0.05 }
bn = "frozen"
stop_early = { metric = "val_loss", patience = 1, min_delta = 1.0 }
restore_best = true

[phases.b]
after = ["a"]
train = ["head"]
steps = 3
lr = { head = 0.01 }
bn = "frozen"
scheduler = { type = "LinearLR", start_factor = 0.1 }
"""
RUN = 'eval_every = "2 steps"\ncheckpoint_every = "2 steps"\nkeep_best = "val_top1"'


def recipe(folder: Path) -> Path:
    return write_recipe(folder, recipe_text("stops", PHASES, run=RUN))


class Seen(Hooks):
    """Model and optimizer state at every evaluation and checkpoint."""

    def __init__(self) -> None:
        self.at_eval: dict[int, dict[str, Any]] = {}
        self.at_checkpoint: dict[int, dict[str, Any]] = {}

    def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
        self.at_eval[record["step"]] = copy.deepcopy(
            {"model": session.model.state_dict(), "optimizer": session.optimizer.state_dict()["state"]}
        )

    def on_checkpoint(self, session: Session, step: int, state: dict[str, Any]) -> None:
        self.at_checkpoint[step] = copy.deepcopy({"model": state["model"], "optimizer": state["optimizer"]["state"]})


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert a == b


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Seen]:
    folder = tmp_path_factory.mktemp("stops")
    seen = Seen()
    with observe(seen):
        assert cli(None, "run", recipe(folder), "--out", folder / "run").rc == 0
    return folder / "run", seen


@pytest.mark.slow
def test_stop_early_jumps_to_the_next_phase_with_its_planned_lrs(stopped: tuple[Path, Seen]) -> None:
    run_dir, _ = stopped
    plan = Plan.load(run_dir / "plan.json")
    recs = metrics(run_dir)
    assert [r["step"] for r in recs if r["type"] == "eval"] == [2, 4, 10, 11]
    stop = [r for r in recs if r["type"] == "stop"]
    assert stop == [
        {
            "type": "stop",
            "step": 4,
            "phase": "a",
            "metric": "val_loss",
            "best": stop[0]["best"],
            "best_step": 2,
            "evaluations_without_improvement": 1,
            "next_step": 8,
        }
    ]
    # lr.csv lacks the skipped steps 4..7; b's rows equal the plan's trace exactly.
    rows = list(csv.DictReader((run_dir / "lr.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 8, 9, 10]
    trace = {step: lrs for step, _, lrs, _ in lr_trace(plan)}
    for row in rows:
        assert [float(row[n]) for n in plan.param_group_names] == trace[int(row["step"])]
    assert [r["phase"] for r in rows] == ["a"] * 4 + ["b"] * 3


@pytest.mark.slow
def test_restore_best_goes_back_to_the_best_evaluation(stopped: tuple[Path, Seen]) -> None:
    run_dir, seen = stopped
    restore = [r for r in metrics(run_dir) if r["type"] == "restore"]
    assert [(r["step"], r["phase"], r["from_step"]) for r in restore] == [(8, "a", 2)]
    # The checkpoint written at the jump holds the model and moments of step 2, not step 4.
    assert_same(seen.at_checkpoint[8], seen.at_eval[2])
    assert not torch.equal(seen.at_eval[4]["model"]["fc.weight"], seen.at_eval[2]["model"]["fc.weight"])
    # Step 4's checkpoint is written before the evaluation that stops the phase (a resume from
    # it evaluates again and stops the same way); step 6's was skipped with the phase's rest.
    assert sorted(seen.at_checkpoint) == [2, 4, 8, 10, 11]


@pytest.mark.slow
def test_keep_best_writes_the_runs_best_evaluation(stopped: tuple[Path, Seen]) -> None:
    run_dir, seen = stopped
    evals = [r for r in metrics(run_dir) if r["type"] == "eval"]
    best = max(evals, key=lambda r: (r["top1"], -r["step"]))  # ties: the earlier evaluation
    saved = torch.load(run_dir / "best.pt", weights_only=True)
    assert (saved["step"], saved["metric"], saved["value"]) == (best["step"], "val_top1", best["top1"])
    assert_same(saved["model"], seen.at_eval[best["step"]]["model"])


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return compile_recipe(recipe(tmp_path_factory.mktemp("plan")))


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 3, 8, 10], ids=["best-eval", "before-stop", "after-stop", "next-phase"])
def test_resume_is_bitwise_across_the_stop_and_the_restore(
    plan: Plan, stopped: tuple[Path, Seen], k: int, tmp_path: Path
) -> None:
    run_dir, _ = stopped
    first = Session(plan, Path("."))
    first.run(0, k)
    # Through a checkpoint file: what resume loads (weights_only=True).
    saved = checkpoint.load_newest(checkpoint.save(tmp_path, k, first.state()).parent)
    assert saved is not None
    second = Session(plan, Path("."))
    second.load_state(saved)
    second.run(k, plan.total_steps)
    assert_same(second.model.state_dict(), load_tensors(run_dir / "model.pt"))


def test_plan_shows_the_metric_driven_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = cli(capsys, "plan", recipe(tmp_path))
    assert res.rc == 0
    assert "  a  stop_early val_loss patience 1 min_delta 1 (4 evaluations planned); restore_best val_loss" in res.out
    assert "keep_best val_top1: best.pt holds the run's best evaluation" in res.out


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('metric = "val_loss"', 'metric = "val_acc"', "phases.a.stop_early.metric: unknown metric 'val_acc'"),
        ('metric = "val_loss"', 'metric = "val_top5"', "val_top5 needs at least 6 classes; the model has 3"),
        ("patience = 1", "patience = 0", "phases.a.stop_early.patience"),
        ("min_delta = 1.0", "min_delta = -1.0", "phases.a.stop_early.min_delta"),
        ("restore_best = true", 'restore_best = "yes"', "phases.a.restore_best"),
        ('keep_best = "val_top1"', 'keep_best = "top1"', "run.keep_best: unknown metric 'top1'"),
    ],
)
def test_bad_metric_driven_fields_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    text = recipe_text("stops", PHASES, run=RUN)
    assert old in text
    res = cli(capsys, "check", write_recipe(tmp_path, text.replace(old, new)))
    assert res.rc == 2
    assert message in res.out and "Traceback" not in res.out + res.err


# head learns at lr 0.05 (evaluations at steps 2, 4, 6), then lr 5 spoils it (step 8): on
# digits 0-2 the best val_loss and the best top-1 are both step 4's, neither the first nor
# the last evaluation.
KEEP = """
[phases.learn]
train = ["head"]
steps = 6
lr = { head = 0.05 }
cache_features = false

[phases.spoil]
after = ["learn"]
train = ["head"]
steps = 2
lr = { head = 5.0 }
cache_features = false
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, key, larger", [("val_loss", "val_loss", False), ("val_top1", "top1", True)])
def test_best_pt_is_the_best_evaluation_when_it_is_neither_the_first_nor_the_last(
    tmp_path: Path, name: str, key: str, larger: bool
) -> None:
    run = f'eval_every = "2 steps"\ncheckpoint_every = "100 steps"\nkeep_best = "{name}"'
    recipe = write_recipe(tmp_path, recipe_text("keep", KEEP, run=run))
    seen = Seen()
    with observe(seen):
        assert cli(None, "run", recipe, "--out", tmp_path / "run").rc == 0
    evals = [r for r in metrics(tmp_path / "run") if r["type"] == "eval"]
    values = [r[key] for r in evals]
    best = values.index(max(values) if larger else min(values))  # ties: the earlier evaluation
    assert 0 < best < len(evals) - 1, values  # what the test is about
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert (saved["step"], saved["metric"], saved["value"]) == (evals[best]["step"], name, values[best])
    assert_same(saved["model"], seen.at_eval[evals[best]["step"]]["model"])
