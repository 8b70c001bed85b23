"""Every metric a recipe can name (ftcompile/metrics.py, one table) works wherever a metric is
named: trials' `select`, `stop_early`, `keep_best`.

One tiny run on all 10 digits (top-5 reported) with an EMA (its metrics reported), trials of
the head's LR selected on `val_top1_ema` (which once trained every alternative and then
exited 2, "every alternative ... diverged": the trials code kept three metrics), and
`keep_best = "val_loss_ema"`. Then, per metric, the decisions of the real code (`pick`,
keep_best's and stop_early's `Watch`) on that run's real evaluation records, against the
answer written out here from the metric's record key and direction.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from typing import Any

import pytest
import torch
from ftcompile.runtime import search
from ftcompile.runtime.best import Watch
from runtime_helpers import cli, metrics, recipe_text, write_recipe

from ftcompile.metrics import METRICS
from ftcompile.plan import Plan, StopEarlySpec

# Per metric: the eval record's key and whether larger is better, written out (not read from
# the table under test).
EXPECTED = {
    "val_loss": ("val_loss", False),
    "val_top1": ("top1", True),
    "val_top5": ("top5", True),
    "val_loss_ema": ("val_loss_ema", False),
    "val_top1_ema": ("top1_ema", True),
    "val_top5_ema": ("top5_ema", True),
}

# No feature cache (cache_features = false): its one-off pass over the train set costs more
# than the 6 steps. Evaluations at 2 (warm's end), 4 and 6 in each alternative.
PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }
cache_features = false

[phases.tune]
after = ["warm"]
train = ["head"]
steps = 4
lr = { head = 0.05 }
cache_features = false
[phases.tune.trials]
"lr.head" = [0.5, 0.02]
select = "val_top1_ema"
"""
RUN = 'eval_every = "2 steps"\ncheckpoint_every = "100 steps"\nema = { decay = 0.5 }\nkeep_best = "val_loss_ema"'


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("metrics")
    recipe = write_recipe(folder, recipe_text("emat", PHASES, classes="[]", run=RUN))
    rc = cli(None, "run", recipe, "--out", folder / "run").rc
    run_dir = folder / "run"
    return {
        "rc": rc,
        "run": run_dir,
        "plan": Plan.load(run_dir / "plan.json"),
        "evals": [r for r in metrics(run_dir) if r["type"] == "eval"],
    }


def test_the_table_is_the_expected_one() -> None:
    assert {name: (m.key, m.maximise) for name, m in METRICS.items()} == EXPECTED


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METRICS))
def test_every_evaluation_reports_the_metric(ema_run: dict[str, Any], name: str) -> None:
    key, _ = EXPECTED[name]
    assert len(ema_run["evals"]) == 5
    assert all(isinstance(r.get(key), float) and math.isfinite(r[key]) for r in ema_run["evals"]), key


def best_index(values: list[float], larger: bool) -> int:
    """The first index of the best value (ties: the earlier)."""
    target = max(values) if larger else min(values)
    return values.index(target)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METRICS))
def test_pick_keep_best_and_stop_early_follow_the_metric(ema_run: dict[str, Any], name: str) -> None:
    """The run's 5 evaluations in order, as 5 trial alternatives (pick), as a run's evaluations
    (keep_best) and as one phase's (stop_early, patience 1)."""
    key, larger = EXPECTED[name]
    evals = ema_run["evals"]
    values = [r[key] for r in evals]
    best = best_index(values, larger)
    # The records tell the directions apart, or the test would show nothing.
    assert best != best_index(values, not larger), values

    # pick: the alternatives' results as the run keeps them.
    results = [search.score({**rec, "trial": i}) for i, rec in enumerate(evals)]
    assert search.pick(results, name) == best

    # keep_best: the first evaluation with the best value.
    plan: Plan = ema_run["plan"]
    plan = dataclasses.replace(plan, run=dataclasses.replace(plan.run, keep_best=name))
    phase = dataclasses.replace(
        plan.phases[0], end=10**9, stop_early=StopEarlySpec(metric=name, patience=1, min_delta=0.0), restore_best=None
    )
    watch = Watch(plan, None, writes=False)
    stops = [watch.evaluated(rec, phase, None, None) for rec in evals]
    assert watch.run_best == {"step": evals[best]["step"], "metric": name, "value": values[best]}

    # stop_early with patience 1: at the first evaluation that does not beat the best so far.
    better = (lambda a, b: a > b) if larger else (lambda a, b: a < b)
    first_worse = next(
        i for i in range(1, len(values)) if not better(values[i], values[best_index(values[:i], larger)])
    )
    assert stops.index(True) == first_worse, (values, stops)


@pytest.mark.slow
def test_select_val_top1_ema_chooses_by_the_ema_weights(ema_run: dict[str, Any]) -> None:
    assert ema_run["rc"] == 0
    run_dir = ema_run["run"]
    last = {r["trial"]: r for r in ema_run["evals"] if r.get("trial") is not None and r["step"] == 6}
    winner = best_index([last[0]["top1_ema"], last[1]["top1_ema"]], larger=True)
    with open(run_dir / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["chosen"] for r in rows] == ["true" if k == winner else "false" for k in range(2)]
    # trials.csv holds every metric the run reports, the EMA's included.
    for row in rows:
        for name, (key, _) in EXPECTED.items():
            assert float(row[name]) == last[int(row["k"])][key], name


@pytest.mark.slow
def test_keep_best_is_the_best_evaluation_of_the_run_as_it_went_on(ema_run: dict[str, Any]) -> None:
    """best.pt: the best val_loss_ema among the evaluations outside the trial phase and the
    chosen alternative's; an alternative that was not chosen never leaves its best.pt."""
    run_dir = ema_run["run"]
    with open(run_dir / "trials.csv", newline="") as fh:
        winner = next(int(r["k"]) for r in csv.DictReader(fh) if r["chosen"] == "true")
    went_on = [r for r in ema_run["evals"] if r.get("trial") in (None, winner)]
    best = went_on[best_index([r["val_loss_ema"] for r in went_on], larger=False)]
    saved = torch.load(run_dir / "best.pt", weights_only=True)
    assert (saved["step"], saved["metric"], saved["value"]) == (best["step"], "val_loss_ema", best["val_loss_ema"])
    assert not list((run_dir / "trials").rglob("best.pt"))
