"""One table of metric names (ftcompile/metrics.py METRICS) for every place a recipe names a
metric: trials' `select`, `stop_early.metric` and `[run] keep_best` (issue 19 §3).

At compile time: every entry of the table compiles in all three places (the EMA ones with an
EMA, top-5 with more than 5 classes) and reaches the plan; a name not in it is one error that
lists the table; a metric the evaluation will not report is one error saying why. That the
evaluation writes each one and the run's decisions read it is tests/runtime/test_metrics_table.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.metrics import METRICS
from ftcompile.schema import Recipe

Writer = Callable[..., Path]

# The tiny recipe (10 classes: top-5 is reported) with warmup [0, 2) stopping early on a metric,
# full [2, 5) trialling the body's LR and selecting on one, and best.pt kept on one.
PLACES = {
    "select": "phases.full.trials.select",
    "stop_early": "phases.warmup.stop_early.metric",
    "keep_best": "run.keep_best",
}


def recipe(tiny: str, select: str, stop: str, best: str, ema: bool = True) -> str:
    text = tiny.replace(
        "epochs = 1\nlr = { head = 0.1 }", f'steps = 2\nlr = {{ head = 0.1 }}\nstop_early = {{ metric = "{stop}" }}'
    ).replace("epochs = 1\nlr = { head = 0.01", "steps = 3\nlr = { head = 0.01")
    text += f'\n[phases.full.trials]\n"lr.body" = ["head / 10", "head / 100"]\nselect = "{select}"\n'
    return text + f'\n[run]\nkeep_best = "{best}"\n' + ("ema = { decay = 0.9 }\n" if ema else "")


def test_the_table_is_what_the_evaluation_reports() -> None:
    """Written out: the three metrics of the weights, and the same of the EMA weights."""
    assert list(METRICS) == ["val_loss", "val_top1", "val_top5", "val_loss_ema", "val_top1_ema", "val_top5_ema"]


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_compiles_in_every_place(tiny: str, write: Writer, name: str) -> None:
    plan = compile_recipe(write(recipe(tiny, name, name, name)))
    warmup, full = plan.to_dict()["phases"]  # as plan.json holds them
    assert full["trials"]["select"] == name and warmup["stop_early"]["metric"] == name
    assert plan.run.keep_best == name


@pytest.mark.parametrize("place", list(PLACES))
def test_an_unknown_metric_is_one_error_listing_the_table(
    tiny: str, write: Writer, capsys: pytest.CaptureFixture[str], place: str
) -> None:
    names = {p: "val_top1" for p in PLACES} | {place: "val_acc"}
    path = write(recipe(tiny, names["select"], names["stop_early"], names["keep_best"]))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert f"{PLACES[place]}: unknown metric 'val_acc'; valid: {', '.join(METRICS)}" in err, err


@pytest.mark.parametrize("place", list(PLACES))
def test_an_ema_metric_without_an_ema_says_so(tiny: str, write: Writer, place: str) -> None:
    from ftcompile.errors import RecipeError

    names = {p: "val_top1" for p in PLACES} | {place: "val_top1_ema"}
    with pytest.raises(RecipeError) as err:
        compile_recipe(write(recipe(tiny, names["select"], names["stop_early"], names["keep_best"], ema=False)))
    assert err.value.key == PLACES[place]
    assert "is the EMA weights' metric, and this recipe keeps no EMA" in err.value.message
    assert "[run] ema" in (err.value.suggestion or "")


@pytest.mark.parametrize("place", list(PLACES))
def test_top5_needs_more_than_5_classes(tiny: str, write: Writer, place: str) -> None:
    from ftcompile.errors import RecipeError

    names = {p: "val_loss" for p in PLACES} | {place: "val_top5"}
    text = recipe(tiny, names["select"], names["stop_early"], names["keep_best"]).replace(
        "num_classes = 10", "num_classes = 5"
    )
    text = text.replace('builtin = "digits"', 'builtin = "digits"\nclasses = ["0", "1", "2", "3", "4"]')
    with pytest.raises(RecipeError) as err:
        compile_recipe(write(text))
    assert err.value.key == PLACES[place] and "val_top5 needs at least 6 classes" in err.value.message


def test_the_reference_lists_the_table_in_every_place() -> None:
    """The recipe reference (from the schema's descriptions) names every metric at each place."""
    schema = Recipe.model_json_schema()["$defs"]
    descriptions = [
        schema["Trials"]["properties"]["select"]["description"],
        schema["StopEarly"]["properties"]["metric"]["description"],
        schema["Run"]["properties"]["keep_best"]["description"],
    ]
    for text in descriptions:
        assert all(f"`{name}`" in text for name in METRICS), text
