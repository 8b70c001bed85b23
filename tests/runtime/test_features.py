"""The feature cache gives the head the same inputs as the full forward pass, survives an
interruption, and frozen layers build no autograd graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ftcompile.runtime import features, rundir
from runtime_helpers import metrics_bytes

from ftcompile.arch import build_model
from ftcompile.compiler import compile_recipe

RECIPE = """
name = "{name}"
seed = 0
[model]
arch = "resnet18"
weights = "none"
[model.head]
hidden = [32]
batchnorm = true
dropout = 0.1
[data]
builtin = "digits"
classes = ["0", "1", "2"]
image_size = 16
batch_size = 32
workers = 0
[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4
[groups]
body = ["backbone"]
head = ["head"]
[phases.head]
train = ["head"]
epochs = 2
lr = {{ head = 0.05 }}
bn = "frozen"
{cache}
scheduler = {{ type = "OneCycleLR" }}
[phases.all]
after = ["head"]
train = ["body", "head"]
steps = 4
lr = {{ head = 0.01, body = "head / 10" }}
[run]
device = "cpu"
checkpoint_every = "5 steps"
"""


def run(tmp_path: Path, name: str, cache: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(RECIPE.format(name=name, cache=cache))
    plan = compile_recipe(path)
    assert plan.phases[0].cache.on is (cache == "")
    out = tmp_path / name
    rundir.start_run(plan, path, tmp_path, out)
    return out


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("cache")
    return tmp, run(tmp, "cached"), run(tmp, "uncached", cache="cache_features = false")


def test_cached_head_phase_equals_uncached(pair: tuple[Path, Path, Path]) -> None:
    """Same head weights and losses: the cache only skips recomputing identical features.

    Tolerance 1e-5: features are computed in other batch compositions than during
    training, which may change float rounding in the convolutions (on this CPU it is 0).
    """
    _, cached, uncached = pair
    a = torch.load(cached / "model.pt", weights_only=True)
    b = torch.load(uncached / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    la, lb = metrics(cached), metrics(uncached)
    steps = [(x["loss"], y["loss"]) for x, y in zip(la, lb, strict=False) if x["type"] == "step"]
    # digits 0-2: 178 + 182 + 177 images, every 5th in val -> 142 + 146 + 142 = 430 train
    # images -> ceil(430 / 32) = 14 steps per epoch; 2 epochs + 4 steps
    assert len(steps) == 2 * 14 + 4
    assert max(abs(x - y) for x, y in steps) < 1e-5
    assert [r["top1"] for r in la if r["type"] == "eval"] == pytest.approx(
        [r["top1"] for r in lb if r["type"] == "eval"]
    )


def test_resume_inside_a_cached_phase_is_bitwise(
    pair: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, cached, _ = pair
    calls = {"n": 0}
    original = features.FeatureCache.batch

    def interrupted(self: features.FeatureCache, *args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 13:  # step 12: after the checkpoint at step 10
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(features.FeatureCache, "batch", interrupted)
    path = tmp / "cached.toml"
    out = tmp / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        rundir.start_run(compile_recipe(path), path, tmp, out)
    assert not (out / "model.pt").exists()
    monkeypatch.setattr(features.FeatureCache, "batch", original)
    assert rundir.resume_run(out) == 0
    assert metrics_bytes(out) == metrics_bytes(cached)
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(cached / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_prefix_builds_no_graph() -> None:
    """With stem..stage3 frozen, their outputs carry no autograd history; layer4's does."""
    model = build_model("resnet18", 3, None, device="cpu")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("layer4", "fc")))
    seen = {}
    for name in ("layer3", "layer4"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert seen["layer3"].grad_fn is None and not seen["layer3"].requires_grad
    assert seen["layer4"].grad_fn is not None


def test_head_inputs_are_what_the_head_receives() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 3, {"pool": "concat", "hidden": [8]}, device="cpu").eval()
    x = torch.randn(4, 3, 32, 32)
    feats = features.head_inputs(model, "fc", x)
    assert feats.shape == (4, 1024)  # concat pooling doubles resnet18's 512 channels
    with torch.no_grad():
        assert torch.equal(model.fc(feats), model(x))
