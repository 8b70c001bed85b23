"""`ftcompile export`: each format loads with its own loader and gives the run's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ftcompile.runtime.evaluate import load_run
from runtime_helpers import cli

from ftcompile.arch import build_model
from ftcompile.plan import Plan

pytestmark = pytest.mark.slow


def _inputs(plan: Plan) -> torch.Tensor:
    """A batch size other than the one traced with (2): the batch axis is dynamic."""
    size = plan.data.image_size
    return torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors", "onnx"])
def test_export_matches_the_run(
    used_run: tuple[Path, str], tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_an_export_never_replaces_the_runs_own_files(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
        assert r.rc == 2 and "inside the run directory" in r.err, (target, r.err)
    assert (run_dir / "model.pt").read_bytes() == model and not (run_dir / "checkpoints" / "x.pt").exists()


@pytest.mark.parametrize("val", ["", "val_resize = 24\nval_crop = 12"], ids=["default", "val_resize-val_crop"])
def test_the_sidecar_is_the_runs_validation_preprocessing(
    tmp_path: Path, val: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sidecar's resize, crop, mean and std are those of the transform the run validates
    with (its val dataset's, from data.build_datasets); with val_resize / val_crop set the
    sidecar used to say 16 / 16 (image_size) while the run validated at Resize(24) -> CenterCrop(12)."""
    from ftcompile.runtime.data import build_datasets
    from runtime_helpers import recipe_text, write_recipe
    from torchvision.transforms import v2

    from ftcompile.compiler import CompileOptions, compile_checked

    phases = '[phases.head]\ntrain = ["head"]\nsteps = 1\nlr = { head = 0.01 }\n'
    data = f'builtin = "digits"\nclasses = ["0", "1", "2"]\nimage_size = 16\nbatch_size = 16\nworkers = 0\n{val}'
    plan = compile_checked(write_recipe(tmp_path, recipe_text("side", phases, data=data)), CompileOptions()).plan
    # A finished run as far as export reads one: plan, env and a model.pt (untrained: the weights do not matter here).
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "plan.json").write_text(plan.to_json() + "\n")
    (run_dir / "env.json").write_text(json.dumps({"data_root": str(tmp_path)}))
    torch.save(
        build_model(plan.model.arch, plan.model.num_classes, plan.model.head, device="cpu").state_dict(),
        run_dir / "model.pt",
    )
    r = cli(capsys, "export", run_dir, "--format", "safetensors")
    assert r.rc == 0, r.err
    pre = json.loads((run_dir / "model.safetensors.json").read_text())["preprocessing"]

    _, val_ds, _ = build_datasets(plan.data, tmp_path, plan.data.mean, plan.data.std)
    steps = {type(t): t for t in val_ds.transform.transforms}
    resize, crop, norm = steps[v2.Resize], steps[v2.CenterCrop], steps[v2.Normalize]
    assert [pre["resize"]] == list(resize.size) and [pre["center_crop"]] * 2 == list(crop.size)
    assert pre["mean"] == list(norm.mean) and pre["std"] == list(norm.std)
    assert val_ds[0][0].shape[-2:] == (pre["center_crop"],) * 2
    expected = (24, 12) if val else (16, 16)  # the builtin digits: Resize(image_size), no margin to crop
    assert (pre["resize"], pre["center_crop"]) == expected
