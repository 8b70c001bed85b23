"""Every shipped recipe compiles, starts with its schema line and a comment, and the
schema copy in recipes/ is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcompile.compiler import compile_recipe
from ftcompile.render import WIDTH, render
from ftcompile.schema import json_schema

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ALL = sorted(RECIPES.glob("*.toml"))
# Recipes whose images are not in the repository are planned with given sizes, like
#   ftcompile plan recipes/resnet50-gradual.toml --dataset-size 1020 --val-size 1020
SIZES = {"quickstart.toml": None, "digits-pretrain.toml": None, "fewshot-trials.toml": None}


def test_the_issue_recipes_are_shipped() -> None:
    names = {p.name for p in ALL}
    assert {
        "quickstart.toml",
        "resnet50-gradual.toml",
        "efficientnet-discriminative.toml",
        "vit-layer-decay.toml",
        "convnext-sgdr.toml",
    } <= names
    assert any("extends" in p.read_text() for p in ALL)


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_recipe_compiles(path: Path) -> None:
    if path.name in SIZES:
        plan = compile_recipe(path)
    else:
        plan = compile_recipe(path, dataset_size=1020, val_size=1020)
    assert plan.total_steps == plan.phases[-1].end > 0
    assert len(plan.hash) == 64
    # `ftcompile plan` fits a 100-column terminal (whole lines with --wide)
    assert max(len(line) for line in render(plan, max_changes=10**9).splitlines()) <= WIDTH


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_recipe_header(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0] == "#:schema recipe.schema.json"
    assert lines[1].startswith("# ") and len(lines[1]) > 20  # says what it demonstrates
    assert any(line.lstrip("# ").startswith("ftcompile plan recipes/" + path.name) for line in lines[:12])


def test_schema_copy_is_current() -> None:
    shipped = json.loads((RECIPES / "recipe.schema.json").read_text())
    assert shipped == json.loads(json.dumps(json_schema())), "run: ftcompile schema > recipes/recipe.schema.json"


def test_vit_recipe_decays_per_block() -> None:
    plan = compile_recipe(RECIPES / "vit-layer-decay.toml", dataset_size=1000, val_size=100)
    finetune = plan.phases[1]
    head = 1e-3
    # norm = "head"; block11 = norm * 0.65; block_i = head * 0.65 ** (12 - i)
    starts = {pg.group: pg.name for pg in plan.param_groups}
    sets = {c.target: c.value for c in plan.changes if c.op == "set" and c.field == "lr" and c.step == finetune.begin}
    for i in range(12):
        assert sets[starts[f"block{i}"]] == pytest.approx(head * 0.65 ** (12 - i), rel=1e-12)
