"""`ftcompile export`: the run's model as a file that loads without ftcompile.

- torchscript: `torch.jit.trace` in eval mode; loads with `torch.jit.load`.
- safetensors: the state_dict; loads with `safetensors.torch.load_file` into the model
  rebuilt from plan.json (`ftcompile.arch.build_model`, or torchvision directly for the
  default head).
- onnx: `torch.onnx.export` (the dynamo exporter) with a dynamic batch axis; runs with
  onnxruntime. Needs the onnx extra.

Beside each file, `<file>.json` says what the file expects and means: class names (the
output order), the preprocessing of the run's validation (resize, centre crop, mean, std),
the input layout, the architecture and the plan hash.
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from ftcompile.runtime.evaluate import load_run
from ftcompile.runtime.runfiles import Sidecar, checked

from ftcompile import outputs
from ftcompile.errors import RecipeError, os_error
from ftcompile.plan import Plan

FORMATS = {"torchscript": ".pt", "safetensors": ".safetensors", "onnx": ".onnx"}
# The default file in the run directory: never one of the run's own files (model.pt is the
# run's state_dict, which eval, predict, report and a downstream recipe read).
DEFAULT_NAMES = {"torchscript": "model.torchscript.pt", "safetensors": "model.safetensors", "onnx": "model.onnx"}
ONNX_HINT = "pip install 'ftcompile[onnx]' (onnx, onnxscript, onnxruntime)"


def preprocessing(plan: Plan) -> dict[str, Any]:
    """The run's validation transforms in words and numbers: DataSpec.val_preprocessing, the
    rule data.build_transforms builds them by."""
    val = plan.data.val_preprocessing
    return {
        "resize": val.resize,
        "resize_means": "shorter side to `resize` pixels, bilinear, antialiased (torchvision v2.Resize)",
        "center_crop": val.crop,
        "to_float": "RGB, values / 255 into [0, 1]",
        "mean": list(val.mean),
        "std": list(val.std),
        "layout": "NCHW float32",
    }


def sidecar(plan: Plan, fmt: str, run_dir: Path) -> dict[str, Any]:
    """`<file>.json`, in the shape `runfiles.read_sidecar` reads it back in (runfiles.Sidecar)."""
    return checked(
        Sidecar,
        {
            "format": fmt,
            "classes": list(plan.data.class_names),
            "num_classes": plan.model.num_classes,
            "output": "logits, one per class in `classes` order; softmax gives probabilities",
            "preprocessing": preprocessing(plan),
            "arch": plan.model.arch,
            "head": plan.model.head,
            "plan_hash": plan.hash,
            "recipe": plan.recipe.get("name"),
            "run": str(run_dir),
        },
    )


def export_run(
    run_dir: Path, fmt: str, out: Path | None, weights: str = "final", force: bool = False
) -> tuple[Path, Path]:
    if fmt not in FORMATS:
        raise RecipeError(f"unknown format {fmt!r}", key="--format", suggestion=f"one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise RecipeError(
                f"ONNX export needs {', '.join(missing)}, not installed", key="--format", suggestion=ONNX_HINT
            )
    run = load_run(run_dir, weights)
    path = out or run_dir / DEFAULT_NAMES[fmt]
    side = outputs.sidecar_of(path)
    if path.suffix == ".json":
        raise RecipeError(
            "the output file would collide with its own sidecar .json",
            key="-o",
            suggestion=f"use a {FORMATS[fmt]} name",
        )
    # Inside a run directory, only this format's default file (and its sidecar) of this run.
    own = [run_dir / DEFAULT_NAMES[fmt], outputs.sidecar_of(run_dir / DEFAULT_NAMES[fmt])]
    outputs.check_output(path, outputs.EXPORT, "-o", force=force, own=own)
    outputs.check_output(side, outputs.SIDECAR, "-o", force=force, own=own)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, path.parent, "create the folder") from None
    size = run.plan.data.val_preprocessing.crop  # the input the model was validated on (ONNX keeps it fixed)
    example = torch.zeros(2, 3, size, size)
    if fmt == "torchscript":
        outputs.write_bytes(path, _torchscript(run.model, example))
    elif fmt == "safetensors":
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in run.model.state_dict().items()}
        outputs.write_bytes(path, save(state, metadata={"arch": run.plan.model.arch, "plan_hash": run.plan.hash}))
    else:
        with outputs.written_by_library(path) as tmp:  # the exporter writes the file itself
            _onnx(run.model, example, tmp)
    outputs.write_text(side, json.dumps(sidecar(run.plan, fmt, run_dir), indent=1) + "\n")
    return path, side


def _torchscript(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The traced model's bytes. Saved to memory, then written by ftcompile's atomic writer:
    torch.jit.save to a file that fails (a full disk) aborts the process from C++."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated upstream, and still the format asked for
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), buf)
    return buf.getvalue()


def _onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import contextlib
    import logging

    batch = torch.export.Dim("batch")
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
        )
        program.save(str(path))


def export_command(run_dir: Path, fmt: str, out: Path | None, force: bool = False) -> int:
    path, side = export_run(run_dir, fmt, out, force=force)
    print(f"wrote {path}")
    print(f"wrote {side} (classes and preprocessing)")
    return 0
