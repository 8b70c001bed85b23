"""The search's cost against a full grid (runtime/search_cost.py): the numbers of a tiny run
with two trial phases, the arithmetic written out, in the terminal and in the report."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from ftcompile.runtime import search_cost
from ftcompile.runtime.runfiles import read_records
from runtime_helpers import cli, recipe_text, write_recipe

from ftcompile.compiler import compile_recipe

# warm: 2 steps. head2: 2 alternatives x 3 steps. late: 3 alternatives x 3 steps.
PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }

[phases.head2]
after = ["warm"]
train = ["head"]
steps = 3
lr = { head = 0.05 }
[phases.head2.trials]
"lr.head" = [0.05, 0.01]

[phases.late]
after = ["head2"]
train = ["late", "head"]
steps = 3
lr = { head = 0.02, late = "head / 10" }
[phases.late.trials]
"lr.late" = ["head / 10", "head / 3", "head"]
"""
RUN = 'checkpoint_every = "100 steps"\neval_every = "100 steps"'
# One combination from scratch: 2 + 3 + 3 = 8 steps; 2 x 3 = 6 combinations: 48 steps.
# The run: 2 + 2 x 3 + 3 x 3 = 17 steps.


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("cost")
    recipe = write_recipe(tmp, recipe_text("cost", PHASES, run=RUN))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(None, "run", recipe, "--out", tmp / "run").rc == 0
    return recipe, tmp / "run", out.getvalue()


def test_search_cost_of_a_tiny_run(run: tuple[Path, Path, str]) -> None:
    recipe, run_dir, _ = run
    plan = compile_recipe(recipe)
    cost = search_cost.of_run(plan, run_dir)
    assert [(p.phase, p.alternatives, p.steps) for p in cost.phases] == [("head2", 2, 2 * 3), ("late", 3, 3 * 3)]
    assert cost.run_steps == 2 + 2 * 3 + 3 * 3
    assert (cost.run_length, cost.combinations, cost.grid_steps) == (2 + 3 + 3, 2 * 3, 2 * 3 * 8)
    # The seconds are the step records' own, summed per phase and over the run.
    steps = read_records(run_dir, "step")
    assert cost.phase("late").seconds == pytest.approx(sum(r["seconds"] for r in steps if r["phase"] == "late"))
    assert cost.run_seconds == pytest.approx(sum(r["seconds"] for r in steps))
    assert 0 < cost.phase("head2").seconds < cost.run_seconds


def test_search_cost_counts_the_steps_taken_so_far() -> None:
    """Pure: a run stopped inside the second alternative of late (a pruned or unfinished one
    counts the steps it took, not its window)."""
    plan = compile_recipe_text(PHASES)
    records = [{"phase": "warm", "seconds": 1.0}] * 2 + [{"phase": "head2", "seconds": 0.5}] * 6
    records += [{"phase": "late", "seconds": 0.25}] * 4
    cost = search_cost.search_cost(plan, records)
    assert [(p.steps, p.seconds) for p in cost.phases] == [(6, 6 * 0.5), (4, 4 * 0.25)]
    assert (cost.run_steps, cost.run_seconds) == (2 + 6 + 4, 2 * 1.0 + 6 * 0.5 + 4 * 0.25)
    assert search_cost.report_text(cost, finished=False) == (
        "Search cost: head2 6 steps (3.0 s), late 4 steps (1.0 s); the run so far 12 steps (6.0 s of steps). "
        "For comparison, a full grid, the 6 combinations (2 x 3) each 8 steps from scratch, takes 48 steps."
    )


def compile_recipe_text(phases: str) -> object:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return compile_recipe(write_recipe(Path(tmp), recipe_text("cost", phases, run=RUN)))


def test_the_terminal_says_the_cost_at_the_end_of_each_trial_phase(run: tuple[Path, Path, str]) -> None:
    out = run[2]
    grid = "a full grid, the 6 combinations (2 x 3) each 8 steps from scratch, takes 48 steps"
    assert "search cost of head2: 6 steps in 2 alternatives (" in out
    assert f"s of steps); the run so far {2 + 6} steps; {grid}" in out
    assert "search cost of late: 9 steps in 3 alternatives (" in out
    assert f"s of steps); the run so far {2 + 6 + 9} steps; {grid}" in out


def test_the_report_says_the_cost(run: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, run_dir, _ = run
    assert cli(None, "report", run_dir, "-o", tmp_path / "report.html").rc == 0
    html = (tmp_path / "report.html").read_text()
    assert "Search cost: head2 6 steps (" in html
    assert "the run 17 steps (" in html
    assert (
        "a full grid, the 6 combinations (2 x 3) each 8 steps from scratch, takes 48 steps, 2.82x this run&#x27;s"
        in html
    )
