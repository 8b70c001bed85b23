"""A run measures its own peak memory per phase (metrics.jsonl "memory" records) and ends
with a table of estimate against measurement (runtime/cost.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ftcompile.runtime.runfiles import read_records
from runtime_helpers import cli, metrics, recipe_text, write_recipe

from ftcompile import calibrate, estimate
from ftcompile.plan import Plan

PHASES = """
[phases.head]
train = ["head"]
steps = 3
lr = { head = 0.1 }

[phases.all]
after = ["head"]
train = ["early", "late", "head"]
steps = 3
lr = { head = 0.01, late = "head / 10", early = "late / 10" }
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cost")
    recipe = write_recipe(folder, recipe_text("cost", PHASES))
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(folder / "xdg"))  # no profile: the table says how to get one
    try:
        result = cli(None, "run", recipe, "--out", folder / "run")
    finally:
        mp.undo()
    assert result.rc == 0
    return folder / "run"


def test_one_memory_record_per_phase_within_15_percent_of_the_estimate(run: Path) -> None:
    run_dir = run
    records = [r for r in metrics(run_dir) if r["type"] == "memory"]
    assert [(r["phase"], r["step"], r["tensor_step"], r["measure"]) for r in records] == [
        ("head", 2, 1, "tensors"),  # the phase's second step: the first with the optimizer state made
        ("all", 5, 4, "tensors"),
    ]
    plan = Plan.load(run_dir / "plan.json")
    est = {p.phase: p for p in estimate.estimate(plan).phases}
    for r in records:
        assert 0.85 <= r["peak_bytes"] / est[r["phase"]].peak <= 1.15, r
        assert r["rss_peak_bytes"] >= r["rss_start_bytes"] > 0  # Linux: VmHWM reset at the phase start
    # The record type is one the run-file reader knows (runs, report and status read the log).
    assert len(read_records(run_dir, "memory")) == 2


def test_run_prints_estimate_against_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # A device profile as `calibrate` leaves one (made-up rates): the run compares with it and adds an entry.
    made_up = calibrate.Rates(1e9, 1e9, 1e7, (0.7, 1.3), "resnet18", 16, 16, calibrate.now(), "calibrate")
    profile = calibrate.store("cpu", "fp32", made_up)
    text = recipe_text("cost-trials", PHASES + '\n[phases.all.trials]\n"lr.head" = [0.01, 0.001]\n')
    recipe = write_recipe(tmp_path, text)
    result = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert result.rc == 0, result.err
    table = result.out.split("cost: estimate")[1].splitlines()
    assert "measured / estimate" in table[0]
    rows = {line.split()[0]: line.split() for line in table[2:5]}
    assert set(rows) == {"head", "all/0", "all/1"}
    for row in rows.values():
        assert "(tensors," in row and float(row[-1]) > 0  # measured / estimated step time
    assert f"device profile updated from this run's steps: {profile}" in result.out
    entries = calibrate.load(profile)["entries"]
    assert [e["source"] for e in entries] == ["calibrate", f"run {tmp_path / 'run'}"]
    # One record per alternative of the trial phase, each counted on its own second step.
    records = [
        (r["phase"], r.get("trial"), r["tensor_step"]) for r in metrics(tmp_path / "run") if r["type"] == "memory"
    ]
    assert records == [("head", None, 1), ("all", 0, 4), ("all", 1, 4)]
