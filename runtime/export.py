"""`ftcompile export`: the run's model as a file that loads without ftcompile.

- torchscript: `torch.jit.trace` in eval mode; loads with `torch.jit.load`.
- safetensors: the state_dict; loads with `safetensors.torch.load_file` into the model
  rebuilt from plan.json (`ftcompile.arch.build_model`, or torchvision directly for the
  default head).
- onnx: `torch.onnx.export` (the dynamo exporter) with a dynamic batch axis; runs with
  onnxruntime. Needs the onnx extra.

The formats, their default file names, writers and extras are one table, runtime/formats.py
(the CLI's parser reads it too). An earlier export is recognised by its sidecar, read as
runfiles.Sidecar, the one shape of that file.

Beside each file, `<file>.json` says what the file expects and means: class names (the
output order), the preprocessing of the run's validation (resize, centre crop, mean, std),
the input layout, the architecture and the plan hash.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from ftcompile.runtime.evaluate import load_run
from ftcompile.runtime.formats import FORMATS
from ftcompile.runtime.runfiles import Sidecar, checked, read_sidecar

from ftcompile import outputs
from ftcompile.errors import RecipeError, os_error
from ftcompile.plan import Plan, as_json


def _is_sidecar(path: Path) -> bool:
    """An earlier export's `<file>.json`: it reads as a Sidecar (runfiles, the one shape)."""
    try:
        return read_sidecar(path) is not None
    except RecipeError:
        return False


# An earlier export (recognised by its sidecar) and its sidecar are replaced without --force.
EXPORT = outputs.Kind("an export (with its .json sidecar)", lambda path: _is_sidecar(outputs.sidecar_of(path)))
SIDECAR = outputs.Kind("an export's sidecar", _is_sidecar)


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
            "head": as_json(plan.model.head),  # the table as plan.json holds it
            "plan_hash": plan.hash,
            "recipe": plan.recipe.name,
            "run": str(run_dir),
        },
    )


def export_run(
    run_dir: Path, fmt: str, out: Path | None, weights: str = "final", force: bool = False
) -> tuple[Path, Path]:
    if fmt not in FORMATS:
        raise RecipeError(f"unknown format {fmt!r}", key="--format", suggestion=f"one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    missing = [m for m in spec.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise RecipeError(
            f"{spec.title} export needs {', '.join(missing)}, not installed", key="--format", suggestion=spec.extra
        )
    run = load_run(run_dir, weights)
    path = out or run_dir / spec.default_name
    side = outputs.sidecar_of(path)
    if path.suffix == ".json":
        raise RecipeError(
            "the output file would collide with its own sidecar .json",
            key="-o",
            suggestion=f"use a {spec.suffix} name",
        )
    # Inside a run directory, only this format's default file (and its sidecar) of this run.
    own = [run_dir / spec.default_name, outputs.sidecar_of(run_dir / spec.default_name)]
    outputs.check_output(path, EXPORT, "-o", force=force, own=own)
    outputs.check_output(side, SIDECAR, "-o", force=force, own=own)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, path.parent, "create the folder") from None
    size = run.plan.data.val_preprocessing.crop  # the input the model was validated on (ONNX keeps it fixed)
    spec.write(run, torch.zeros(2, 3, size, size), path)
    outputs.write_text(side, json.dumps(sidecar(run.plan, fmt, run_dir), indent=1) + "\n")
    return path, side


def export_command(run_dir: Path, fmt: str, out: Path | None, force: bool = False) -> int:
    path, side = export_run(run_dir, fmt, out, force=force)
    print(f"wrote {path}")
    print(f"wrote {side} (classes and preprocessing)")
    return 0
