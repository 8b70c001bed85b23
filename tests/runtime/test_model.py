"""Weights: torchvision names from the TORCH_HOME cache (never the network in tests), local
state_dict files, files that do not fit or carry code; model.pt as torchvision names it."""

from __future__ import annotations

import os
import pickle
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from ftcompile.runtime.model import build, cache_file, torchvision_weights
from runtime_helpers import Recorded, cli, load_tensors, recipe_text, write_recipe

from ftcompile import hub
from ftcompile.arch import build_model
from ftcompile.errors import RecipeError
from ftcompile.plan import ModelSpec, WeightsSpec

HEAD_ONLY = """
[phases.head]
train = ["head"]
steps = 3
lr = { head = 0.01 }
bn = "frozen"
"""


def fake_pretrained(seed: int = 0, arch: str = "resnet18") -> dict[str, torch.Tensor]:
    """A stand-in for downloaded ImageNet weights: torchvision's model with a fixed seed."""
    torch.manual_seed(seed)
    return torchvision.models.get_model(arch).state_dict()


def plan_model(weights: dict, num_classes: int = 3) -> ModelSpec:
    return ModelSpec(
        arch="resnet18", weights=WeightsSpec(**weights), num_classes=num_classes, head=None, total_params=0
    )


def assert_backbone_equal(model_state: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    backbone = [k for k in source if not k.startswith("fc.")]
    assert len(backbone) == len(model_state) - 2  # everything but fc.weight, fc.bias
    for k in backbone:
        assert torch.equal(model_state[k], source[k]), k


DOWNLOADS: list[float | None] = []  # socket timeout in force at each download attempt


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        DOWNLOADS.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    # Tests never download: a machine with network would otherwise fetch the real file.
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    DOWNLOADS.clear()
    return home


def test_weights_name_loads_from_torch_home(torch_home: Path) -> None:
    weights = torchvision_weights("resnet18", "IMAGENET1K_V1")
    path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    assert cache_file(weights) == path
    path.parent.mkdir(parents=True)
    source = fake_pretrained()
    torch.save(source, path)
    model = build(plan_model({"kind": "torchvision", "value": "IMAGENET1K_V1"}), Path("."))
    assert_backbone_equal(model.state_dict(), source)
    assert model.fc.out_features == 3
    assert DOWNLOADS == []  # cached: no download attempted


@pytest.mark.slow
def test_weights_name_end_to_end(torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the head trains and BatchNorm is frozen: model.pt keeps the cached backbone bitwise."""
    weights = torchvision_weights("resnet18", "IMAGENET1K_V1")
    cache_file(weights).parent.mkdir(parents=True)
    source = fake_pretrained(seed=1)
    torch.save(source, cache_file(weights))
    recipe = write_recipe(tmp_path, recipe_text("pretrained", HEAD_ONLY, weights="IMAGENET1K_V1"))
    result = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert result.rc == 0, result.err
    final = load_tensors(tmp_path / "run" / "model.pt")
    assert_backbone_equal(final, source)


def test_weights_not_cached_and_offline(torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, recipe_text("offline", HEAD_ONLY, weights="IMAGENET1K_V1"))
    result = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert result.rc == 2 and "Traceback" not in result.err
    folder = torch_home / "hub" / "checkpoints"
    assert "resnet18-f37072fd.pth" in result.err and str(folder) in result.err
    assert "are not in torch's hub cache" in result.err and "the download failed (URLError" in result.err
    assert "sha256 starts with f37072fd" in result.err  # the hash the file must have
    assert DOWNLOADS == [hub.DOWNLOAD_TIMEOUT_S]  # tried once, with a timeout
    assert socket.getdefaulttimeout() is None  # restored
    assert not list(folder.iterdir())  # nothing half-written
    assert not (tmp_path / "run").exists()  # failed before the run directory was made


def test_cached_weights_with_a_payload_are_refused(torch_home: Path, tmp_path: Path) -> None:
    """torch.hub loads its cache with weights_only=False; the runtime checks first."""
    marker = tmp_path / "pwned"
    weights = torchvision_weights("resnet18", "IMAGENET1K_V1")
    cache_file(weights).parent.mkdir(parents=True)
    torch.save({"fc.weight": Payload(marker)}, cache_file(weights))
    with pytest.raises(RecipeError, match="files that carry code are refused"):
        build(plan_model({"kind": "torchvision", "value": "IMAGENET1K_V1"}), Path("."))
    assert not marker.exists()


def test_local_state_dict_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = fake_pretrained(seed=2)
    torch.save(source, tmp_path / "backbone.pt")
    model = build(plan_model({"kind": "file", "value": "backbone.pt"}), tmp_path)
    assert_backbone_equal(model.state_dict(), source)
    # an ftcompile checkpoint works too (its "model" entry)
    torch.save({"model": source, "step": 3}, tmp_path / "ckpt.pt")
    model = build(plan_model({"kind": "file", "value": "ckpt.pt"}), tmp_path)
    assert_backbone_equal(model.state_dict(), source)


@pytest.mark.parametrize(
    "broken, words",
    [
        ("resnet34", ["does not fit resnet18", "unexpected"]),
        ("missing", ["does not fit resnet18", "missing 1 (e.g. layer4.1.bn2.bias)"]),
        ("shape", ["does not fit resnet18", "shape mismatch: conv1.weight (64, 3, 5, 5) vs (64, 3, 7, 7)"]),
        ("not a dict", ["holds a list, not a state_dict"]),
        ("garbage", ["is not a torch checkpoint", "not torch.save's zip or pickle header"]),
    ],
)
def test_state_dict_that_does_not_fit(
    tmp_path: Path, broken: str, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.pt"
    state = fake_pretrained()
    if broken == "resnet34":
        state = fake_pretrained(arch="resnet34")
    elif broken == "missing":
        del state["layer4.1.bn2.bias"]
    elif broken == "shape":
        state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    elif broken == "not a dict":
        state = [torch.zeros(1)]
    if broken == "garbage":
        path.write_bytes(b"not a torch file at all")
    else:
        torch.save(state, path)
    recipe = write_recipe(tmp_path, recipe_text("misfit", HEAD_ONLY, weights="w.pt"))
    result = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert result.rc == 2 and "Traceback" not in result.err
    assert "model.weights" in result.err and str(path) in result.err
    for word in words:
        assert word in result.err, result.err


class Payload:
    """Unpickling this runs a shell command: what a malicious "weights" file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_file_with_a_payload_is_refused_unexecuted(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    state = {**fake_pretrained(), "extra": Payload(marker)}
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    recipe = write_recipe(tmp_path, recipe_text("evil", HEAD_ONLY, weights="evil.pt"))
    result = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert result.rc == 2 and "Traceback" not in result.err
    assert "files that carry code are refused" in result.err and str(path) in result.err
    assert not marker.exists()


# ---------------------------------------------------------------- model.pt


@pytest.mark.parametrize("name", ["run_a", "run_b"])
def test_model_pt_loads_into_torchvision_strictly(name: str, request: pytest.FixtureRequest) -> None:
    """What the README shows: build_model(arch, num_classes, head) + load_state_dict(strict=True)."""
    run: Recorded = request.getfixturevalue(name)
    state = load_tensors(run.run_dir / "model.pt")
    assert not any(k.startswith(("module.", "_orig_mod.", "model.")) for k in state)
    m = run.plan.model
    model = build_model(m.arch, m.num_classes, m.head, device="cpu")
    model.load_state_dict(state, strict=True)
    if m.head is None:  # the plain head: exactly torchvision's own names
        assert list(state) == list(torchvision.models.resnet18(num_classes=m.num_classes).state_dict())
    else:
        plain = torchvision.models.resnet18().state_dict()
        assert [k for k in state if not k.startswith("fc.")] == [k for k in plain if not k.startswith("fc.")]
