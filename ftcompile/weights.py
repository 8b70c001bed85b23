"""Weights files: read safely, and check that they fit the model, for compiler and runtime alike.

`ftcompile check` must refuse what `ftcompile run` would refuse, so both read a weights file
through `read_state` and compare it with the model through `check_fits`: the compiler with
the model on the meta device (and the file memory-mapped: nothing is copied), the runtime
with the real one. Every file is loaded with `weights_only=True`: a file that carries code
is refused, with how to convert it instead of torch's advice to switch the check off.
"""

from __future__ import annotations

import pickle
import stat
from pathlib import Path
from typing import Any

import torch

from ftcompile.errors import RecipeError

_ZIP = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE = b"\x80"  # the legacy format starts with a pickle protocol byte


def _convert_hint(path: Path) -> str:
    plain = path.with_name(path.stem + ".state_dict.pt")
    return (
        "if you trust the file, convert it once to plain tensors and point model.weights at the result: "
        f"python -c \"import torch; m = torch.load('{path}', weights_only=False); "
        "sd = m.state_dict() if hasattr(m, 'state_dict') else m.get('model', m.get('state_dict', m)); "
        f"torch.save({{k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}}, '{plain}')\" "
        "(or save sd with safetensors.torch.save_file to a .safetensors file)"
    )


def _not_a_checkpoint(path: Path, why: str, key: str) -> RecipeError:
    return RecipeError(
        f"{path} is not a torch checkpoint ({why})",
        key=key,
        suggestion="give a file written by torch.save(model.state_dict(), path), a .safetensors file, "
        'an ftcompile model.pt or checkpoint, a torchvision weights name, or "none"',
    )


def read_state(path: Path, key: str = "model.weights", map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The tensors of a state_dict file (an ftcompile checkpoint's "model" entry too).

    With map_location="meta" only names and shapes are read (what the compiler needs).
    Not found, not a regular file, not a torch file, code inside, not a dict of tensors:
    each is a RecipeError that says which, never a torch traceback.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise RecipeError(
            f"file not found: {path}", key=key, suggestion="the path is relative to the recipe's folder"
        ) from None
    except OSError as err:
        raise RecipeError(f"cannot read {path}: {err.strerror}", key=key) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device or other special file"
        raise _not_a_checkpoint(path, f"it is {kind}, not a regular file", key)
    if path.suffix == ".safetensors":
        state: Any = _read_safetensors(path, key, shapes_only=map_location == "meta")
    else:
        state = _read_torch(path, key, map_location, mmap)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # an ftcompile checkpoint
    if not isinstance(state, dict):
        raise RecipeError(
            f"{path} holds a {type(state).__name__}, not a state_dict",
            key=key,
            suggestion="save model.state_dict(), not the model or a list",
        )

    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise RecipeError(
            f"{path} is not a state_dict: {odd[0]!r} holds a {type(state[odd[0]]).__name__}, not a tensor",
            key=key,
            suggestion="save model.state_dict(): a dict of tensors",
        )
    return state


def _read_torch(path: Path, key: str, map_location: Any, mmap: bool) -> Any:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not (magic.startswith(_ZIP) or magic.startswith(_PICKLE)):
        shown = magic.hex() if magic else "an empty file"
        raise _not_a_checkpoint(path, f"it starts with {shown}, not torch.save's zip or pickle header", key)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and magic.startswith(_ZIP))
    except pickle.UnpicklingError as exc:
        if (
            "Weights only load failed" in str(exc)
            or "Unsupported global" in str(exc)
            or "Unsupported operand" in str(exc)
        ):
            raise RecipeError(
                f"{path} holds pickled Python objects besides tensors; files that carry code are refused",
                key=key,
                suggestion=_convert_hint(path),
            ) from None
        raise _not_a_checkpoint(path, _first_line(exc), key) from None
    except Exception as exc:  # a truncated zip, a damaged pickle, an I/O error
        raise _not_a_checkpoint(path, _first_line(exc), key) from None


def _read_safetensors(path: Path, key: str, shapes_only: bool) -> dict[str, Any]:
    try:
        from safetensors import safe_open  # in try: an install without safetensors gets one message
        from safetensors.torch import load_file
    except ImportError:
        raise RecipeError(
            f"{path} is a .safetensors file, and reading one needs the safetensors package",
            key=key,
            suggestion="pip install safetensors (a dependency of ftcompile: reinstall it with pip install -e .)",
        ) from None
    try:
        if not shapes_only:
            return load_file(str(path), device="cpu")

        with safe_open(str(path), framework="pt") as f:  # the header only: names, shapes, dtypes
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
        raise RecipeError(
            f"{path} is not a readable safetensors file ({_first_line(exc)})",
            key=key,
            suggestion="write it with safetensors.torch.save_file(model.state_dict(), path)",
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def check_fits(state: dict[str, Any], own: dict[str, Any], head: list[str], arch: str, path: Path) -> dict[str, Any]:
    """The non-head tensors of `state`, once every one of them fits `own` (the model's
    state_dict, on any device); missing, unexpected or mis-shaped keys are one error."""
    in_head = lambda k: any(k == h or k.startswith(h + ".") for h in head)  # noqa: E731
    state = {k: v for k, v in state.items() if not in_head(k)}
    own = {k: v for k, v in own.items() if not in_head(k)}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or extra or shapes:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} (e.g. {', '.join(missing[:3])})" if missing else "",
                f"unexpected {len(extra)} (e.g. {', '.join(extra[:3])})" if extra else "",
                f"shape mismatch: {', '.join(shapes[:3])}" if shapes else "",
            )
            if part
        )
        raise RecipeError(
            f"{path} does not fit {arch}: {detail}",
            key="model.weights",
            suggestion=f"use a state_dict saved from torchvision.models.{arch}() (an ftcompile model.pt works)",
        )
    return state
