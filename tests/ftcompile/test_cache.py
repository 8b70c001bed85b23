"""The compiler marks a phase cacheable only when the frozen part's output cannot change,
and says why not otherwise; `ftcompile plan` shows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.plan import FeatureCacheSpec, as_json

BASE = """
name = "c"
[model]
arch = "{arch}"
[data]
builtin = "digits"
image_size = 32
batch_size = 64
augment = {augment}
[groups]
body = ["backbone"]
head = ["head"]
[phases.head]
train = ["head"]
steps = 5
lr = {{ head = 0.1 }}
bn = "{bn}"
{cache}
[phases.all]
after = ["head"]
train = ["body", "head"]
steps = 5
lr = {{ head = 0.01, body = "head / 10" }}
"""


def first_phase(
    tmp_path: Path, arch: str = "resnet18", augment: str = "[]", bn: str = "frozen", cache: str = ""
) -> dict:
    path = tmp_path / "r.toml"
    path.write_text(BASE.format(arch=arch, augment=augment, bn=bn, cache=cache))
    plan = compile_recipe(path)
    assert plan.phases[1].cache == FeatureCacheSpec(
        on=False, why="trains body below the head", module=plan.phases[0].cache.module
    )
    return as_json(plan.phases[0].cache)  # as plan.json holds it


def test_head_only_frozen_bn_no_augmentation_is_cached(tmp_path: Path) -> None:
    assert first_phase(tmp_path) == {"on": True, "why": "only the head trains", "module": "fc"}


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"bn": "train"}, 'BatchNorm below the head keeps learning statistics (set bn = "frozen")'),
        (
            {"augment": '[{ op = "RandomHorizontalFlip" }]'},
            "train augmentation is random (cache_features = true applies it once)",
        ),
        ({"arch": "efficientnet_b0"}, "dropout / stochastic depth below the head (cache_features = true accepts it)"),
        ({"cache": "cache_features = false"}, "cache_features = false"),
    ],
)
def test_not_cached_and_why(tmp_path: Path, kwargs: dict, why: str) -> None:
    assert first_phase(tmp_path, **kwargs) == {
        "on": False,
        "why": why,
        "module": "classifier" if "arch" in kwargs else "fc",
    }


def test_opt_in_accepts_augmentation_but_not_learning_batchnorm(tmp_path: Path) -> None:
    aug = '[{ op = "RandomHorizontalFlip" }]'
    assert first_phase(tmp_path, augment=aug, cache="cache_features = true")["on"] is True
    assert first_phase(tmp_path, augment=aug, bn="train", cache="cache_features = true")["on"] is False


def test_token_model_caches_its_head_input(tmp_path: Path) -> None:
    path = tmp_path / "v.toml"
    path.write_text(
        BASE.format(arch="vit_b_16", augment="[]", bn="frozen", cache="").replace("image_size = 32", "image_size = 224")
    )
    assert compile_recipe(path).phases[0].cache == FeatureCacheSpec(on=True, why="only the head trains", module="heads")


def test_plan_shows_cache_and_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.toml").write_text(BASE.format(arch="resnet18", augment="[]", bn="frozen", cache=""))
    assert main(["plan", str(tmp_path / "r.toml")]) == 0
    out = capsys.readouterr().out
    assert "head  yes  only the head trains" in out
    assert "all   no   trains body below the head" in out
    assert "feature cache on: train fc on cached inputs" in out and "feature cache off" in out


def test_cache_features_must_be_a_bool(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(
        BASE.format(arch="resnet18", augment="[]", bn="frozen", cache='cache_features = "yes"')
    )
    with pytest.raises(RecipeError) as err:
        compile_recipe(tmp_path / "r.toml")
    assert "phases.head.cache_features" in str(err.value)
