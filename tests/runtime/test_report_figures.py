"""The report's LR figure and the legends of both figures, on the quickstart-trials plan with
lr.csv-like rows written out here (no run needed)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ftcompile.runtime.report import _broken, lr_figure, lr_lines
from ftcompile.runtime.runfiles import as_continued

from ftcompile.compiler import CompileOptions, compile_checked

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def plan() -> Any:
    return compile_checked(RECIPES / "quickstart-trials.toml", CompileOptions()).plan


def rows(plan: Any) -> list[dict[str, Any]]:
    """Rows as lr.csv has them: every step outside trials once, every step of a trial phase
    once per alternative (k 0, 1, 2); LR = step / 1000 for the groups a phase trains, 0 else."""
    out = []
    for ph in plan.phases:
        for k in range(3) if ph.trials else [None]:
            train = ph.train if k is None else ph.trials.alternatives[k].train
            for step in range(ph.begin, ph.end):
                trained = {pg.name for pg in plan.param_groups if pg.group in train}
                out.append(
                    {
                        "step": step,
                        "phase": ph.name,
                        "trial": k,
                        **{n: (step + 1) / 1000 if n in trained else 0.0 for n in plan.param_group_names},
                    }
                )
    return out


def test_every_step_of_a_trial_phase_is_drawn_with_the_chosen_alternatives_lrs(plan: Any) -> None:
    """The report dropped every lr.csv row of a trial phase (a straight line across layer4,
    nothing for full): as the run went on, each step once, the chosen alternative's row."""
    chosen = {"layer4": 2, "full": 2}  # full: its deepest alternative, early trained too
    continued = as_continued(rows(plan), chosen)
    assert [r["step"] for r in continued] == list(range(plan.total_steps))
    assert {(r["phase"], r["trial"]) for r in continued if r["trial"] is not None} == {("layer4", 2), ("full", 2)}
    # One line per recipe group, not per param group: head's no_decay twin has its LR and hid it.
    lines = dict(lr_lines(plan, continued))
    assert list(lines) == ["early", "layer3", "layer4", "head"]
    # A frozen group draws nothing (NaN), rather than sitting at 0 under the others.
    layer4 = next(ph for ph in plan.phases if ph.name == "layer4")
    assert math.isnan(lines["layer4"][0]) and lines["layer4"][layer4.begin] == (layer4.begin + 1) / 1000


def test_a_part_whose_lr_differs_keeps_its_line(plan: Any) -> None:
    r = rows(plan)
    for row in r:
        row["head.no_decay"] /= 2
    assert [n for n, _ in lr_lines(plan, r)] == ["early", "layer3", "layer4", "head", "head.no_decay"]


def test_steps_without_rows_break_the_line() -> None:
    xs, ys = _broken([0, 1, 2, 10, 11], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert xs[:3] == [0, 1, 2] and math.isnan(xs[3]) and xs[4:] == [10, 11]
    assert math.isnan(ys[3]) and ys[4:] == [4.0, 5.0]


def test_the_legends_cover_no_data(plan: Any) -> None:
    """'In every run the legend covers data': it sits right of the axes, inside the figure."""
    from ftcompile.runtime.curves import curves_figure

    fig = lr_figure(SimpleNamespace(plan=plan, lr=as_continued(rows(plan), {"layer4": 0, "full": 0})))
    evals = [{"type": "eval", "step": s, "val_loss": 1.0 / (s + 1), "top1": 0.5, "phase": "warmup"} for s in (23, 46)]
    steps = [{"type": "step", "step": s, "loss": 1.0, "phase": "warmup"} for s in range(46)]
    curves = curves_figure([SimpleNamespace(plan=plan, steps=steps, evals=evals, label="run")])  # type: ignore[list-item]
    for figure in (fig, curves):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for ax in figure.axes:
            legend = ax.get_legend().get_window_extent(renderer)
            assert not legend.overlaps(ax.get_window_extent(renderer))
            assert figure.bbox.x0 <= legend.x0 and legend.x1 <= figure.bbox.x1


def test_a_group_the_run_never_trained_has_no_line(plan: Any) -> None:
    continued = as_continued(rows(plan), {"layer4": 0, "full": 0})  # full k=0: layer4 and head only
    assert [n for n, _ in lr_lines(plan, continued)] == ["layer3", "layer4", "head"]
