"""benchmarks/search.py's parts that train nothing: the grid of a trials recipe as one recipe per
combination (each compiles to the change list its alternatives give in the trials plan), the
TOML it writes, the `prune` it adds. The benchmark's timings are never asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import tomllib

from ftcompile.compiler import compile_recipe
from ftcompile.trace import lr_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("search_bench", ROOT / "benchmarks" / "search.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_combination_is_a_recipe_of_its_alternatives(bench: ModuleType, tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "quickstart-trials.toml"
    trials = compile_recipe(recipe)
    combos = bench.combinations(recipe)
    # 3 LR cuts at layer4 x 3 depths for full, in product order
    assert [c.choice for c in combos] == [(i, j) for i in range(3) for j in range(3)]
    assert combos[5].label == "layer4: layer4=head / 10 | full: train=early+layer3+layer4+head"
    for combo in combos:
        plan = compile_recipe(bench.write(tmp_path, combo.data))
        assert not any(ph.trials for ph in plan.phases)
        assert plan.total_steps == trials.total_steps
        # the run from scratch takes the LRs the trial run takes with these choices, step by step
        chosen = dict(zip(("layer4", "full"), combo.choice, strict=True))
        expected = [(s, ph, lrs) for s, ph, lrs, k in lr_trace(trials) if k is None or k == chosen[ph]]
        assert [(s, ph, lrs) for s, ph, lrs, _ in lr_trace(plan)] == expected
        depth = [["layer4", "head"], ["layer3", "layer4", "head"], ["early", "layer3", "layer4", "head"]]
        assert list(plan.phases[-1].train) == depth[combo.choice[1]]


def test_toml_text_reads_back(bench: ModuleType) -> None:
    data = bench.standalone(ROOT / "recipes" / "fewshot-trials.toml")
    assert tomllib.loads(bench.toml_text(data)) == data
    assert Path(data["model"]["weights"]).is_absolute()  # the upstream recipe, from anywhere
    odd = {"a": {"lr.layer4": ["head / 3", 1e-4], "x-y": True, "t": {}}}
    assert bench.toml_text(odd) == 'a = { "lr.layer4" = ["head / 3", 0.0001], x-y = true, t = {} }\n'
    assert tomllib.loads(bench.toml_text(odd)) == odd


def test_prune_is_added_to_each_trial_phase(bench: ModuleType) -> None:
    data = bench.pruned(ROOT / "recipes" / "fewshot-trials.toml")
    # 4 alternatives: 4 -> 2 -> 1 at a quarter and half of the window; 3: 3 -> 1 at a quarter
    assert data["phases"]["layer4"]["trials"]["prune"] == {"at": [0.25, 0.5], "keep": 0.5}
    assert data["phases"]["full"]["trials"]["prune"] == {"at": [0.25], "keep": 0.5}
    assert data["name"] == "fewshot-trials-prune"
