"""`ftcompile init`'s recipe runs as it is, from torchvision weights found in torch's hub cache
(a fake file here: no download), and `init --lr-find` takes the head's LR from a real LR test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from runtime_helpers import cli

from ftcompile import hub, init

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two classes of 40 small images that differ in colour; resnet18 "IMAGENET1K_V1" in a
    temporary TORCH_HOME (random weights under torchvision's file name)."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv(hub.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setattr(init, "detect_device", lambda: "cpu")
    cached = hub.locate("resnet18", "IMAGENET1K_V1")
    cached.file.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), cached.file)
    for c, name in enumerate(("red", "blue")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(40):
            colour = (200 + i % 50, 20, 20) if c == 0 else (20, 20, 200 + i % 50)
            Image.new("RGB", (20, 16), colour).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


@pytest.mark.slow
def test_the_recipe_runs_as_it_is(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.toml"
    assert cli(capsys, "init", data, "--image-size", "16", "-o", recipe).rc == 0
    # the only change: no loader processes (results do not depend on them; this machine is small)
    result = cli(capsys, "run", recipe, "--out", tmp_path / "run", "--set", "data.workers=0")
    assert result.rc == 0, result.err
    run = tmp_path / "run"
    assert (run / "model.pt").is_file() and (run / "best.pt").is_file() and (run / "trials.csv").is_file()
    assert "trials of stage4" in result.out and "trials of full" in result.out


@pytest.mark.slow
def test_lr_find_sets_the_head_lr(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.toml"
    result = cli(capsys, "init", data, "--image-size", "16", "--lr-find", "-o", recipe)
    assert result.rc == 0, result.err
    text = recipe.read_text()
    lr = tomllib.loads(text)["phases"]["head"]["lr"]["head"]
    assert "lr-find: head lr" in result.err or "lr-find suggested nothing" in result.err
    if "lr-find: head lr" in result.err:
        assert "lr-find's steepest descent (r.lr_find.csv" in text and lr != init.HEAD_LR
    assert (tmp_path / "r.lr_find.csv").read_text().startswith("step,multiplier,")
    assert not list(tmp_path.glob(".r.toml.lr-find-*"))  # the draft recipe is gone
    assert cli(capsys, "check", recipe).rc == 0
