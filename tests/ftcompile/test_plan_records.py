"""The typed plan contract (issue 18 §1): the plan's records are frozen dataclasses, the
tables that must list every field or op are derived from the declarations, and a plan read
back from its JSON is the same plan, byte for byte.

These tests fail when a knob or an op is added without saying what it is: a field with a
default that is not declared optional (every older plan's hash would change), an op that
says nothing about being replayed on resume, an optimizer op the executor cannot apply."""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import pytest
import torch

from ftcompile import plan as plan_module
from ftcompile.apply import Executor
from ftcompile.compiler import compile_recipe
from ftcompile.plan import (
    OPTIMIZER_OPS,
    OPTIONAL,
    OPTIONAL_FIELD,
    Change,
    HeadSpec,
    Op,
    OpKind,
    Plan,
    SchedulerStart,
    optional_defaults,
)
from ftcompile.torch_args import optimizer_class

REPO = Path(__file__).resolve().parents[2]

# Fields that had their default in format 1's first plans, and are always written: every
# field added with a default since is declared `metadata=OPTIONAL_FIELD`. Do not add to this.
ALWAYS_WRITTEN = {"Change.target", "Change.field", "Change.value", "Plan.hash"}
# Fields still typed with Any (records owned by the trials work, typed there).
STILL_ANY = {"TrialPlan.values"}


def records() -> list[type]:
    """Every record of the plan: the dataclasses of ftcompile/plan.py."""
    return [
        cls
        for cls in vars(plan_module).values()
        if isinstance(cls, type) and is_dataclass(cls) and cls.__module__ == plan_module.__name__
    ]


def test_every_record_is_a_frozen_dataclass() -> None:
    for cls in records():
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]


def test_every_field_added_with_a_default_is_declared_optional() -> None:
    for cls in records():
        for f in fields(cls):
            has_default = f.default is not MISSING or f.default_factory is not MISSING
            name = f"{cls.__name__}.{f.name}"
            if has_default and name not in ALWAYS_WRITTEN:
                assert f.metadata.get("optional"), (
                    f"{name} has a default but is not declared optional: write "
                    "field(default=..., metadata=OPTIONAL_FIELD), or every plan that does not use it changes hash"
                )
            if f.metadata.get("optional"):
                assert has_default, f"{name} is optional but has no default to leave out"


def test_optional_is_derived_from_the_declarations() -> None:
    derived = {cls: optional_defaults(cls) for cls in records() if optional_defaults(cls)}
    assert derived == OPTIONAL
    # the knobs of format 1's later plans, as the hand-written table listed them
    assert OPTIONAL[plan_module.RunSpec]["log"] == ["jsonl"] and OPTIONAL[plan_module.ModelSpec]["builder_args"] == {}
    assert dict(OPTIONAL_FIELD) == {"optional": True}


def test_an_optional_field_at_its_default_is_left_out_of_the_json() -> None:
    spec = plan_module.RecipeRecord(name="r", file="r.toml", source_hash="0" * 64)
    assert plan_module.as_json(spec) == {"name": "r", "file": "r.toml", "source_hash": "0" * 64}
    with_overrides = plan_module.RecipeRecord("r", "r.toml", "0" * 64, overrides=("seed=1",))
    assert plan_module.as_json(with_overrides)["overrides"] == ["seed=1"]


def test_no_plan_field_is_typed_any() -> None:
    for cls in records():
        hints = typing.get_type_hints(cls, vars(plan_module))
        for name, hint in hints.items():
            if f"{cls.__name__}.{name}" not in STILL_ANY:
                assert "Any" not in str(hint), f"{cls.__name__}.{name}: {hint}"


def test_every_op_says_whether_it_is_replayed_and_who_applies_it() -> None:
    from ftcompile.runtime.loop import END_OF_WINDOW, REPLAYED

    for op in Op:
        assert isinstance(op.kind, OpKind) and plan_module.OP_KINDS[op] is op.kind, op
        assert op.replayed == (op.kind is not OpKind.EVENT)
        assert op.on_optimizer == (op.kind is OpKind.OPTIMIZER)
    assert set(REPLAYED) == {op for op in Op if op.replayed}
    assert set(OPTIMIZER_OPS) == {Op.SET, Op.SCHEDULER, Op.RESET_STATE}
    # what only happens is never replayed; what ends a window only happens
    assert not any(op.replayed for op in END_OF_WINDOW) and not Op.TRIAL.replayed
    # an op is its own JSON value, and reads back from it
    assert [Op(json.loads(json.dumps(op))) for op in Op] == list(Op)


def _optimizer() -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    return optimizer_class("SGD")([{"params": [p]} for p in params], lr=0.1, momentum=0.9)


def test_the_executor_applies_every_optimizer_op_and_no_other() -> None:
    ex = Executor(_optimizer(), ["a", "b"])
    assert set(ex.handlers) == set(OPTIMIZER_OPS)
    ex.apply(Change(0, Op.SET, "a", "lr", 0.5))
    ex.apply(Change(0, Op.SCHEDULER, "p", value=SchedulerStart("StepLR", ("b",), {"step_size": 1}, end=9)))
    ex.apply(Change(0, Op.RESET_STATE, "a"))
    ex.after_step(1)
    assert ex.lrs() == [0.5, pytest.approx(0.01)]
    ex.apply(Change(1, Op.SCHEDULER, "p"))
    assert ex.scheduler is None
    for op in Op:
        if not op.on_optimizer:
            with pytest.raises(ValueError, match="optimizer changes"):
                ex.apply(Change(0, op, "a"))


def test_the_executor_does_not_change_the_plans_arguments() -> None:
    milestones = [1, 2]
    start = SchedulerStart("MultiStepLR", ("a", "b"), {"milestones": milestones}, end=9)
    ex = Executor(_optimizer(), ["a", "b"])
    ex.apply(Change(0, Op.SCHEDULER, "p", value=start))
    assert ex.scheduler is not None and start.args["milestones"] is milestones and milestones == [1, 2]


# Recipes that between them use every record: trials, an upstream recipe, a head table,
# MixUp / EMA, stop_early, per-group scheduler arguments, builder arguments.
ROUND_TRIP = [
    "quickstart-trials.toml",
    "digits-pretrain.toml",
    "convnext-mixup-ema.toml",
    "vit-layer-decay.toml",
    "efficientnet-discriminative.toml",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_a_plan_read_back_from_its_json_is_the_same_plan(name: str) -> None:
    path = REPO / "recipes" / name
    compiled = compile_recipe(path) if "quickstart" in name or "digits" in name else compile_recipe(path, 1020, 1020)
    text = compiled.to_json()
    loaded = Plan.from_dict(json.loads(text))
    assert loaded == compiled and loaded.to_json() == text and loaded.hash == compiled.hash


def test_the_records_read_back_are_typed() -> None:
    loaded = Plan.from_dict(json.loads(compile_recipe(REPO / "recipes" / "quickstart-trials.toml").to_json()))
    assert all(isinstance(c, Change) and isinstance(c.op, Op) for c in loaded.changes)
    starts = [c.value for c in loaded.changes if c.op is Op.SCHEDULER and c.value is not None]
    assert starts and all(isinstance(v, SchedulerStart) and isinstance(v.param_groups, tuple) for v in starts)
    phase = loaded.phases[0]
    assert isinstance(phase.cache, plan_module.FeatureCacheSpec)
    assert all(isinstance(w, plan_module.LRWindow) for w in phase.lr.values())
    assert isinstance(loaded.recipe, plan_module.RecipeRecord) and isinstance(loaded.groups[0], plan_module.GroupSpec)


def test_a_head_table_from_a_sidecar_or_a_dict_takes_the_schemas_defaults() -> None:
    assert HeadSpec.of({"hidden": [8], "pool": None}) == HeadSpec(None, (8,), 0.0, False, "relu")
    head = HeadSpec.of(
        {"pool": "concat", "hidden": [4], "dropout": [0.1, 0.2], "batchnorm": True, "activation": "gelu"}
    )
    assert head.dropout == (0.1, 0.2) and HeadSpec.of(head) is head
    assert plan_module.as_json(head) == {
        "pool": "concat",
        "hidden": [4],
        "dropout": [0.1, 0.2],
        "batchnorm": True,
        "activation": "gelu",
    }
