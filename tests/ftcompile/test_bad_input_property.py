"""Property: whatever a user does to a valid recipe, the compiler answers with a Plan or a
`RecipeError` that names the file and a key path — never with any other exception.

Valid recipes (plain dicts) are mutated (a key dropped, renamed or added, a value replaced
by one of another type or by a number that is negative, zero, huge or not finite), written
with a small TOML writer, and compiled in this process.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError, RecipeErrors
from ftcompile.plan import Plan

# ---------------------------------------------------------------- a tiny TOML writer

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level tables as [table] sections (two levels: [phases.warmup]), the rest inline."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if not isinstance(table, dict):
            continue
        lines += ["", f"[{toml_key(key)}]"]
        lines += [
            f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict) or key != "phases"
        ]
        if key == "phases":
            for name, phase in table.items():
                if isinstance(phase, dict):
                    lines += ["", f"[{toml_key(key)}.{toml_key(name)}]"]
                    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in phase.items()]
    return "\n".join(lines) + "\n"


def test_toml_writer_round_trips() -> None:
    import tomllib

    for seed in SEEDS:
        assert tomllib.loads(to_toml(seed)) == seed


# ---------------------------------------------------------------- valid recipes

SEEDS: list[dict[str, Any]] = [
    {
        "name": "tiny",
        "seed": 0,
        "model": {"arch": "resnet18", "num_classes": 10},
        "data": {"builtin": "digits", "image_size": 32, "batch_size": 256},
        "optimizer": {"type": "SGD", "momentum": 0.9, "weight_decay": 1e-4},
        "groups": {"body": ["backbone"], "head": ["head"]},
        "phases": {
            "warmup": {
                "train": ["head"],
                "steps": 4,
                "lr": {"head": 0.1},
                "scheduler": {"type": "OneCycleLR", "pct_start": 0.3},
            },
            "full": {
                "after": ["warmup"],
                "train": ["body", "head"],
                "epochs": 1,
                "lr": {"head": 0.01, "body": "head / 10"},
                "scheduler": {"type": "StepLR", "step_size": "2 steps"},
            },
        },
    },
    {
        "name": "gradual",
        "seed": 3,
        "model": {
            "arch": "resnet18",
            "num_classes": "auto",
            "head": {"pool": "concat", "hidden": [16], "dropout": [0.1, 0.2], "batchnorm": True},
        },
        "data": {
            "builtin": "digits",
            "classes": ["1", "3", "5"],
            "batch_size": 128,
            "balance": "loss",
            "augment": [{"op": "RandomAffine", "degrees": 10}],
            "label_smoothing": 0.1,
        },
        "optimizer": {"type": "AdamW", "weight_decay": 0.05, "betas": [0.9, 0.99], "no_decay": ["*.bias"]},
        "groups": {
            "early": ["stem", "stage1", "stage2"],
            "layer3": ["layer3"],
            "layer4": ["layer4.*"],
            "head": ["head"],
        },
        "phases": {
            "warmup": {"train": ["head"], "steps": 3, "lr": 3e-3},
            "layer4": {
                "after": ["warmup"],
                "train": ["layer4", "head"],
                "steps": 6,
                "bn": "frozen",
                "lr": {"head": 1e-3, "layer4": "head / 10"},
                "optimizer_state": "reset",
                "scheduler": {
                    "type": "CyclicLR",
                    "base_lr": "lr / 10",
                    "step_size_up": "3 steps",
                    "cycle_momentum": False,
                },
            },
            "all": {
                "after": ["layer4"],
                "train": ["early", "layer3", "layer4", "head"],
                "steps": 5,
                "lr": {"head": 1e-3},
                "lr_decay": 0.5,
                "weight_decay": {"early": 0.0},
                "scheduler": {"type": "CosineAnnealingLR"},
            },
        },
        "run": {"device": "cpu", "eval_every": "2 steps", "checkpoint_every": 5},
    },
    {
        "name": "mobile",
        "model": {"arch": "mobilenet_v3_small", "num_classes": 10, "head": {"hidden": [32], "dropout": 0.2}},
        "data": {"builtin": "digits", "batch_size": 512},
        "optimizer": {"type": "RMSprop", "momentum": 0.5},
        "groups": {"top": ["stage4", "head"]},
        "phases": {
            "top": {"train": ["top"], "steps": 3, "lr": 0.01, "scheduler": {"type": "LinearLR", "start_factor": 0.1}},
            "all": {
                "after": ["top"],
                "train": ["rest", "top"],
                "steps": 3,
                "lr": {"top": 0.01, "rest": "top * 0.1"},
                "scheduler": {"type": "CosineAnnealingWarmRestarts", "T_0": "1 step"},
            },
        },
    },
]

# ---------------------------------------------------------------- mutations

KEY_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
NUMBERS = st.one_of(
    st.sampled_from(
        [0, -1, 1, 2, 0.0, -0.5, 1e-300, 1e300, -1e300, 10**12, -(10**12), 2**63 - 1, math.inf, -math.inf, math.nan]
    ),
    st.integers(-5, 40),
    st.floats(-5, 40, allow_nan=False),
)
VALUES = st.one_of(
    NUMBERS,
    st.booleans(),
    st.sampled_from(
        [
            "",
            "text",
            "head / 10",
            "lr / 0",
            "1 epoch",
            "3 steps",
            "auto",
            "none",
            "resnet50",
            "IMAGENET1K_V1",
            "digits",
            "frozen",
            "../nowhere",
        ]
    ),
    st.lists(st.one_of(st.integers(-2, 3), st.sampled_from(["head", "stem", "x"])), max_size=3),
    st.dictionaries(KEY_TEXT, st.integers(-2, 3), max_size=2),
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path below node (dict keys and list indices)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        out.append((*prefix, key))
        out += paths(child, (*prefix, key))
    return out


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def mutate(doc: dict[str, Any], data: st.DataObject) -> str:
    """Apply one random mutation in place; return what was done, for the failure report."""
    op = data.draw(st.sampled_from(["drop", "rename", "retype", "number", "insert"]), label="op")
    if op == "insert":
        tables = [()] + [p for p in paths(doc) if isinstance(parent_of(doc, p)[p[-1]], dict)]
        where = data.draw(st.sampled_from(tables), label="table")
        table = parent_of(doc, (*where, None))
        key = data.draw(KEY_TEXT, label="key")
        table[key] = data.draw(VALUES, label="value")
        return f"insert {where}.{key}"
    all_paths = paths(doc)
    path = data.draw(st.sampled_from(all_paths), label="path")
    parent, key = parent_of(doc, path), path[-1]
    if op == "drop":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        new = data.draw(
            st.one_of(st.sampled_from([key + "s", key[:-1] or "x", key.upper(), key + "_"]), KEY_TEXT), label="new"
        )
        parent[new] = parent.pop(key)
    elif op == "number":
        parent[key] = data.draw(NUMBERS, label="number")
    else:
        parent[key] = data.draw(VALUES, label="value")
    return f"{op} {path}"


KEY_PATH = re.compile(r"^[A-Za-z0-9_\-]+([.\[][A-Za-z0-9_\-\]\[.]*)?$")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_recipes_give_a_plan_or_a_recipe_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(SEEDS), label="seed"))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if paths(doc):
            mutate(doc, data)
    text = to_toml(doc)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.toml"
        path.write_text(text)
        try:
            plan = compile_recipe(path)
        except RecipeError as err:
            message = str(err)
            errors = err.errors if isinstance(err, RecipeErrors) else [err]
            for e in errors:
                assert e.file == str(path), message
                if e.key is None:  # only a TOML error has no key path
                    assert "TOML syntax error" in e.message, message
                else:
                    assert KEY_PATH.match(e.key) or e.key in message, message
                    assert f": {e.key}: " in message, message
            assert "recipe.toml" in message
        else:
            assert isinstance(plan, Plan)
            assert json.loads(plan.to_json())["hash"] == plan.hash
