"""Plan defaults and recipe defaults agree (issue 18 §3, "plan defaults declared once").

A plan record's default is what a plan.json without that key means (plans written before the
knob existed); the schema's default is what a recipe without it compiles to. Each knob both
declare must say the same. Both read it from `ftcompile/defaults.py`; the tests below fail
when a record or a schema model declares its own literal instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ftcompile import defaults
from ftcompile import plan as P
from ftcompile import schema as S

# plan record -> the schema model of the same table (by name: the typed records of issue 18
# §1 arrive one by one; a name not yet in plan.py is skipped, the knobs below must be found)
NAMES = [
    ("ModelSpec", "Model"),
    ("HeadSpec", "Head"),
    ("MixSpec", "Mix"),
    ("DataSpec", "Data"),
    ("ValSplit", "ValSplit"),
    ("OptimizerSpec", "Optimizer"),
    ("SchedulerSpec", "Scheduler"),
    ("EmaSpec", "Ema"),
    ("RunSpec", "Run"),
    ("Prune", "Prune"),
    ("TrialsPlan", "Trials"),
    ("StopEarlySpec", "StopEarly"),
    ("PhaseData", "PhaseData"),
    ("PhasePlan", "Phase"),
]
PAIRS: list[tuple[type, type[BaseModel]]] = [
    (getattr(P, rec), getattr(S, model))
    for rec, model in NAMES
    if dataclasses.is_dataclass(getattr(P, rec, None)) and hasattr(S, model)
]
# Knobs whose plan value is another representation of the recipe's, with why.
DIFFERENT = {
    ("PhasePlan", "restore_best"): "the recipe's bool becomes the metric's name (None: off) in the plan",
}


def _plan_default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _schema_default(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields[name]
    return info.default_factory() if info.default is PydanticUndefined and info.default_factory else info.default  # type: ignore[call-arg]


def shared_knobs() -> list[tuple[str, str, Any, Any]]:
    out = []
    for record, model in PAIRS:
        for f in dataclasses.fields(record):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if has_default and f.name in model.model_fields and (record.__name__, f.name) not in DIFFERENT:
                out.append((record.__name__, f.name, _plan_default(f), _schema_default(model, f.name)))
    return out


def test_the_shared_knobs_are_found() -> None:
    names = {(r, n) for r, n, _, _ in shared_knobs()}
    assert {("RunSpec", "keep_checkpoints"), ("RunSpec", "reproducible"), ("ModelSpec", "head_weights")} <= names


@pytest.mark.parametrize("record, name, planned, recipe", shared_knobs(), ids=lambda v: str(v))
def test_a_plan_default_is_the_recipe_default(record: str, name: str, planned: Any, recipe: Any) -> None:
    assert planned == recipe, f"{record}.{name}: the plan's default {planned!r}, the schema's {recipe!r}"


def test_each_listed_difference_is_still_a_shared_knob() -> None:
    names = {r.__name__: (r, m) for r, m in PAIRS}
    for record, name in DIFFERENT:
        rec, model = names[record]
        assert name in {f.name for f in dataclasses.fields(rec)} and name in model.model_fields


def test_each_shared_default_is_declared_in_the_defaults_module() -> None:
    """None and {} mean "absent" on both sides; every other shared default lives in defaults.py."""
    for record, name, planned, _ in shared_knobs():
        if planned is None or planned == {}:
            continue
        declared = getattr(defaults, name.upper(), None)
        assert declared is not None, f"{record}.{name}: declare its default in ftcompile/defaults.py"
        assert planned == (list(declared) if isinstance(declared, tuple) else declared), f"{record}.{name}"


def test_a_head_table_that_leaves_keys_out_means_the_schema_head() -> None:
    """A sidecar or plan with `head = {}` builds the head a recipe with `[model.head]` alone gets."""
    recipe = S.Head().model_dump()
    assert recipe == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.HEAD.items()}
    assert P.HeadSpec.of({}) == P.HeadSpec.of(recipe)
