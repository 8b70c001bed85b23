"""`model.weights = "w.safetensors"`: the compiler accepts it, so the runtime loads it (with safetensors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ftcompile.runtime.model import load_backbone, load_state
from safetensors.torch import save_file

from ftcompile.arch import build_model
from ftcompile.errors import RecipeError


def test_safetensors_weights_load_into_the_backbone(tmp_path: Path) -> None:
    source = build_model("resnet18", 4, None, device="cpu")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert set(load_state(path)) == set(source.state_dict())
    target = build_model("resnet18", 7, None, device="cpu")  # another head: it stays new
    load_backbone(target, "resnet18", path)
    assert torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert target.fc.weight.shape == (7, 512)


def test_damaged_safetensors_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(RecipeError) as info:
        load_state(path)
    assert "not a readable safetensors file" in str(info.value) and info.value.key == "model.weights"
