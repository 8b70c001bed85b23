"""`ftcompile export`: each format loads with its own loader and gives the run's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runtime_helpers import cli
from ftcompile.arch import build_model
from ftcompile.plan import Plan
from ftcompile.runtime.evaluate import load_run

pytestmark = pytest.mark.slow


def _inputs(plan: Plan) -> torch.Tensor:
    """A batch size other than the one traced with (2): the batch axis is dynamic."""
    size = plan.data.image_size
    return torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors", "onnx"])
def test_export_matches_the_run(used_run: tuple[Path, str], tmp_path: Path, fmt: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = used_run
    out = tmp_path / f"exported.{fmt}"
    r = cli(capsys, "export", run_dir, "--format", fmt, "-o", out)
    assert r.rc == 0, r.err
    run = load_run(run_dir)
    x = _inputs(run.plan)
    with torch.no_grad():
        expected = run.model(x)
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert side["classes"] == list(run.plan.data.class_names)
    pre = side["preprocessing"]
    assert pre["center_crop"] == 16 and pre["mean"] == run.plan.data.mean and pre["std"] == run.plan.data.std
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    elif fmt == "safetensors":
        from safetensors.torch import load_file

        model = build_model(side["arch"], side["num_classes"], side["head"], device="cpu")
        model.load_state_dict(load_file(str(out)))
        with torch.no_grad():
            got = model.eval()(x)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert (got - expected).abs().max().item() <= 1e-5


def test_export_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "export", tmp_path, "--format", "safetensors")
    assert r.rc == 2 and "not a run directory" in r.err


def test_an_export_never_replaces_the_runs_own_files(used_run: tuple[Path, str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Without -o each format gets a file of its own beside the run's model.pt, which stays
    byte for byte (a TorchScript export used to be written over it); -o naming a run file, or
    a path whose sidecar would be one, is refused with exit 2."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(used_run[0], run_dir)
    model = (run_dir / "model.pt").read_bytes()
    for fmt, name in (("torchscript", "model.torchscript.pt"), ("safetensors", "model.safetensors")):
        r = cli(capsys, "export", run_dir, "--format", fmt)
        assert r.rc == 0, r.err
        assert (run_dir / name).is_file() and (run_dir / f"{name}.json").is_file()
    assert (run_dir / "model.pt").read_bytes() == model
    assert cli(capsys, "eval", run_dir, "--json").rc == 0  # the run still reads as a run
    for target in ("model.pt", "checkpoints/x.pt", "eval"):  # eval -> its sidecar eval.json
        r = cli(capsys, "export", run_dir, "--format", "torchscript", "-o", run_dir / target)
        assert r.rc == 2 and "would replace the run's own" in r.err, (target, r.err)
    assert (run_dir / "model.pt").read_bytes() == model and not (run_dir / "checkpoints" / "x.pt").exists()
