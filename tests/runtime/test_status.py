"""What summary.json, `ftcompile runs`, curves.png and the end-of-run table read of a trial
phase: the evaluations of the alternative chosen there, never of the others (alternative 0
included: its `trial` is 0, which is not "no trial")."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from ftcompile.runtime.runfiles import as_continued, chosen_alternatives, continued_evals
from ftcompile.runtime.status import best_eval
from runtime_helpers import recipe_text, write_recipe

from ftcompile.compiler import CompileOptions, compile_checked
from ftcompile.plan import Plan

EVALS = [
    {"type": "eval", "step": 2, "epoch": 1.0, "phase": "warm", "val_loss": 0.9, "top1": 0.5},
    {"type": "eval", "step": 4, "epoch": 2.0, "phase": "tune", "val_loss": 0.2, "top1": 0.9, "trial": 0},
    {"type": "eval", "step": 4, "epoch": 2.0, "phase": "tune", "val_loss": 0.5, "top1": 0.7, "trial": 1},
    {"type": "eval", "step": 4, "epoch": 2.0, "phase": "tune", "val_loss": 0.6, "top1": 0.6, "trial": 2},
    {"type": "eval", "step": 6, "epoch": 3.0, "phase": "last", "val_loss": 0.4, "top1": 0.8},
]
PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }

[phases.tune]
after = ["warm"]
train = ["head"]
steps = 2
lr = { head = 0.05 }
[phases.tune.trials]
"lr.head" = [0.1, 0.01, 0.001]

[phases.last]
after = ["tune"]
train = ["head"]
steps = 2
lr = { head = 0.01 }
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """warm, tune (3 alternatives), last: the plan the records above belong to."""
    recipe = write_recipe(tmp_path_factory.mktemp("plan"), recipe_text("status", PHASES))
    return compile_checked(recipe, CompileOptions()).plan


def write_run(folder: Path, plan: Plan, chosen: int | None) -> Path:
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVALS))
    labels = [alt.label for alt in plan.phases[1].trials.alternatives]
    with open(folder / "trials.csv", "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["phase", "k", "label", "val_loss", "val_top1", "val_top5", "chosen"])
        if chosen is not None:
            out.writerows([["tune", k, labels[k], 0, 0, "", str(k == chosen).lower()] for k in range(3)])
    return folder


def test_the_chosen_alternative_stands_for_its_phase(tmp_path: Path, plan: Plan) -> None:
    # alternative 1 was chosen (e.g. on val_loss of another metric); 0 and 2 are left out
    run = write_run(tmp_path / "run", plan, chosen=1)
    assert chosen_alternatives(run, plan) == {"tune": 1}
    assert [(r["phase"], r.get("trial")) for r in continued_evals(run, plan)] == [
        ("warm", None),
        ("tune", 1),
        ("last", None),
    ]
    # the best evaluation of the run is not alternative 0's 0.9, which did not continue
    assert best_eval(continued_evals(run, plan))["top1"] == 0.8


def test_alternative_0_chosen_and_a_phase_still_running(tmp_path: Path, plan: Plan) -> None:
    run = write_run(tmp_path / "run", plan, chosen=0)
    assert [r["top1"] for r in continued_evals(run, plan)] == [0.5, 0.9, 0.8]
    # undecided (no trials.csv rows yet): no alternative stands for the phase
    assert [r["phase"] for r in as_continued(EVALS, {})] == ["warm", "last"]


def test_curves_follow_the_chosen_alternative(tmp_path: Path, plan: Plan) -> None:
    """curves.png's train loss (and the report's) of a trial phase is the chosen alternative's
    steps: alternative 0's were drawn whatever was chosen (its `trial` 0 read as "no trial")."""
    from ftcompile.runtime.curves import CurveData

    run = write_run(tmp_path / "run", plan, chosen=1)
    (run / "plan.json").write_text(plan.to_json() + "\n")
    step = {"type": "step", "lr": {}, "seconds": 0.1, "images_per_s": 100.0}
    steps = [{**step, "step": 0, "phase": "warm", "loss": 1.0}]
    steps += [{**step, "step": 2, "phase": "tune", "loss": 0.5 + k, "trial": k} for k in range(3)]
    with open(run / "metrics.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in steps)
    curves = CurveData(run)
    assert [(r["phase"], r.get("trial")) for r in curves.steps] == [("warm", None), ("tune", 1)]
    assert [r["top1"] for r in curves.evals] == [0.5, 0.7, 0.8]
