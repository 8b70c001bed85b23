"""Every shipped recipe's plan.json and `plan --trace` are byte-identical to the recorded
ones (tests/data/golden_plans.json): refactors of the compiler or of the plan's types must
not change a plan, its hash or its LR trace."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision

from ftcompile.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "data" / "golden_plans.json").read_text())
# Recipes on builtin data are counted; the others are planned with stated sizes.
COUNTED = {
    "quickstart.toml",
    "quickstart-trials.toml",
    "digits-pretrain.toml",
    "quickstart-portable.toml",
    "digits-pretrain-portable.toml",
    "fewshot-trials.toml",
}


def _build(version: str) -> str:
    return version.split("+")[0]


@pytest.mark.skipif(
    (_build(torch.__version__), _build(torchvision.__version__))
    != (GOLDEN["versions"]["torch"], GOLDEN["versions"]["torchvision"]),
    reason="plans record the torch/torchvision versions: the golden files are for the recorded build",
)
@pytest.mark.parametrize("name", sorted(GOLDEN["recipes"]))
def test_plan_and_trace_are_byte_identical(name: str, tmp_path: Path) -> None:
    sizes = [] if name in COUNTED else ["--dataset-size", "1020", "--val-size", "1020"]
    plan, trace = tmp_path / "plan.json", tmp_path / "lr.csv"
    assert main(["plan", str(ROOT / "recipes" / name), *sizes, "-o", str(plan), "--trace", str(trace)]) == 0
    want = GOLDEN["recipes"][name]
    assert json.loads(plan.read_text())["hash"] == want["plan_hash"]
    assert hashlib.sha256(plan.read_bytes()).hexdigest() == want["plan_sha256"]
    assert hashlib.sha256(trace.read_bytes()).hexdigest() == want["trace_sha256"]


def test_every_shipped_recipe_has_a_golden_plan() -> None:
    assert {p.name for p in (ROOT / "recipes").glob("*.toml")} == set(GOLDEN["recipes"])
