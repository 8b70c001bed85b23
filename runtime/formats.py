"""The export formats: one table, read by the CLI's parser (choices, help, default names)
and by `ftcompile export` (runtime/export.py): each format's file names, its writer and the
optional extra it needs.

Nothing heavy at import: `ftcompile --help` builds its parser from this table, so torch is
imported by a writer when it writes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ftcompile import outputs

if TYPE_CHECKING:
    import torch
    from ftcompile.runtime.evaluate import LoadedRun


@dataclass(frozen=True)
class Format:
    """One export format: the one place that says its file names, its writer and its extra."""

    title: str  # in messages: "ONNX"
    suffix: str  # what the file's name ends with
    # The default file in the run directory: never one of the run's own files (model.pt is the
    # run's state_dict, which eval, predict, report and a downstream recipe read).
    default_name: str
    loads_with: str  # in --help: how a user loads the file
    write: Callable[[LoadedRun, torch.Tensor, Path], None]  # (the run's model, an example input, the file)
    needs: tuple[str, ...] = ()  # modules of an optional extra, checked before the run is loaded
    extra: str = ""  # how to install them


def _write_torchscript(run: LoadedRun, example: torch.Tensor, path: Path) -> None:
    """Traced, saved to memory, then written by ftcompile's atomic writer: torch.jit.save to a
    file that fails (a full disk) aborts the process from C++."""
    import torch  # start-up time: the CLI's parser reads FORMATS, and `--help` must not import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated upstream, and still the format asked for
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(run.model, example), buf)
    outputs.write_bytes(path, buf.getvalue())


def _write_safetensors(run: LoadedRun, example: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save  # start-up time: it imports torch (the CLI's parser reads FORMATS)

    state = {k: v.detach().contiguous() for k, v in run.model.state_dict().items()}
    outputs.write_bytes(path, save(state, metadata={"arch": run.plan.model.arch, "plan_hash": run.plan.hash}))


def _write_onnx(run: LoadedRun, example: torch.Tensor, path: Path) -> None:
    """The dynamo exporter with a dynamic batch axis; it writes the file itself."""
    import torch  # start-up time: the CLI's parser reads FORMATS, and `--help` must not import torch

    batch = torch.export.Dim("batch")
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with outputs.written_by_library(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            run.model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
        )
        if program is None:  # torch.onnx.export gives None only on the old TorchScript path, not dynamo=True
            raise RuntimeError("torch.onnx.export made no ONNX program")
        program.save(str(tmp))


FORMATS = {
    "torchscript": Format("TorchScript", ".pt", "model.torchscript.pt", "torch.jit.load", _write_torchscript),
    "safetensors": Format(
        "safetensors",
        ".safetensors",
        "model.safetensors",
        "safetensors.torch.load_file into the rebuilt model",
        _write_safetensors,
    ),
    "onnx": Format(
        "ONNX",
        ".onnx",
        "model.onnx",
        "onnxruntime",
        _write_onnx,
        needs=("onnx", "onnxscript"),
        extra="pip install 'ftcompile[onnx]' (onnx, onnxscript, onnxruntime)",
    ),
}
