"""A split made at compile time is the split every run of the plan reads: run, rerun and resume
read the plan's file lists, never what the folder holds later."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ftcompile.runtime.data import build_datasets
from PIL import Image
from runtime_helpers import cli

from ftcompile.compiler import compile_recipe
from ftcompile.plan import Plan

RECIPE = """\
name = "split-run"
seed = 0

[model]
arch = "resnet18"
weights = "none"

[data]
train = "images"
val = { split = 0.25, seed = 3 }
image_size = 16
batch_size = 8
workers = 0

[phases.only]
train = ["head"]
steps = 4
lr = { head = 0.05 }

[run]
device = "cpu"
eval_every = "4 steps"
checkpoint_every = "2 steps"
keep_checkpoints = "all"
"""


def _images(root: Path) -> None:
    for c, (name, n) in enumerate({"ant": 12, "bee": 9, "cat": 10}.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (10, 10), (20 * i % 256, 80 * c, 0)).save(folder / f"{i}.png")


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    _images(tmp_path / "images")
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    return path


def test_datasets_are_the_plans_lists(recipe: Path) -> None:
    plan = compile_recipe(recipe)
    train, val, names = build_datasets(plan.data, recipe.parent, plan.data.mean, plan.data.std)
    assert names == ["ant", "bee", "cat"]
    assert [p for p, _ in train.samples] == plan.data.split_files["train"]  # type: ignore[attr-defined]
    assert [p for p, _ in val.samples] == plan.data.split_files["val"]  # type: ignore[attr-defined]
    assert len(val) == 3 + 2 + 3  # 12, 9, 10 x 0.25 rounded


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_rerun_and_resume_read_the_plans_split_not_the_folder(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first"
    assert cli(capsys, "run", recipe, "--out", first).rc == 0
    # A file added to the folder since: not an image at all. Were it in either split, the image
    # check before step 0 would refuse it; the plan's lists do not hold it.
    (tmp_path / "images" / "bee" / "added.png").write_bytes(b"not a png")
    again = cli(capsys, "rerun", first, "--out", tmp_path / "again")
    assert again.rc == 0, again.err
    assert _sha(tmp_path / "again" / "model.pt") == _sha(first / "model.pt")
    # resume from the step-2 checkpoint: the same bits as the uninterrupted run
    part = tmp_path / "part"
    assert cli(capsys, "rerun", first, "--out", part).rc == 0
    (part / "model.pt").unlink()
    for ckpt in sorted((part / "checkpoints").glob("*"))[1:]:
        ckpt.unlink()
    resumed = cli(capsys, "resume", part)
    assert resumed.rc == 0 and "resuming at step 2 of 4" in resumed.err, resumed.err
    assert _sha(part / "model.pt") == _sha(first / "model.pt")
    # compiling the recipe now sees the added file: another plan, which names it
    (tmp_path / "images" / "bee" / "added.png").unlink()
    Image.new("RGB", (10, 10)).save(tmp_path / "images" / "bee" / "added.png")
    now = compile_recipe(recipe)
    assert now.hash != Plan.load(first / "plan.json").hash
    assert "bee/added.png" in now.data.split_files["train"] + now.data.split_files["val"]
