"""Build the model the plan describes, with its weights, on the run's device."""

from __future__ import annotations

import socket
import sys
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftcompile import arch as archs
from ftcompile.errors import RecipeError
from ftcompile.plan import ModelSpec


def torchvision_weights(arch: str, name: str) -> Any:
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    return enum.DEFAULT if name == "DEFAULT" else enum[name]


def cache_file(weights: Any) -> Path:
    """Where torchvision's loader looks for a weights file: $TORCH_HOME/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def build(spec: ModelSpec, root: Path, upstream: Path | None = None) -> nn.Module:
    """The torchvision model with the recipe's head and weights, on the CPU.

    `upstream` is the model.pt of the upstream recipe's run when the weights name one; the
    run command (`rundir`) finds or trains it before this run starts.
    """
    arch, kind, value = spec.arch, spec.weights.kind, spec.weights.value
    num_classes, head = spec.num_classes, spec.head
    if kind == "torchvision":
        weights = torchvision_weights(arch, value)
        fetch(weights)
        # torch.hub loads its cache with weights_only=False: check the file the safe way first.
        load_state(cache_file(weights))
        return archs.build_model(arch, num_classes, head, device="cpu", weights=weights)
    model = archs.build_model(arch, num_classes, head, device="cpu")
    if kind == "file":
        load_backbone(model, arch, root / value)
    elif kind == "recipe":
        if upstream is None:
            raise RecipeError(
                f"the weights come from the upstream recipe {value}, whose model.pt was not given",
                key="model.weights",
                suggestion="start the run with ftcompile run, which trains or finds the upstream run first",
            )
        load_backbone(model, arch, upstream)
    return model


DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a network that drops packets fails, not hangs


def fetch(weights: Any) -> None:
    """Download torchvision weights into the torch.hub cache unless they are there already."""
    path = cache_file(weights)
    if path.is_file():
        return
    match = torch.hub.HASH_REGEX.search(path.name)  # torchvision's check_hash=True
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {weights.url} to {path}", file=sys.stderr, flush=True)
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None, progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:  # no network, timeout, hash mismatch
        raise RecipeError(
            f"weights {weights} are not cached and cannot be downloaded ({type(exc).__name__}: {exc})",
            key="model.weights",
            suggestion=f"put the file {path.name} (from {weights.url}) in the folder {path.parent}",
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def load_state(path: Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: a file that carries code is refused."""
    if not path.is_file():
        raise RecipeError(f"file not found: {path}", key=key, suggestion="the path is relative to the recipe's folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends: a payload or a damaged file
        raise RecipeError(
            f"{path} is not a plain state_dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
            key=key,
            suggestion="files that carry code are refused; save with torch.save(model.state_dict(), path)",
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # an ftcompile checkpoint
    if not isinstance(state, dict):
        raise RecipeError(f"{path} holds a {type(state).__name__}, not a state_dict", key=key)
    return state


def load_backbone(model: nn.Module, arch: str, path: Path) -> None:
    """Load every non-head tensor; the head is new (it has the recipe's classes)."""
    state = load_state(path)
    head = archs.aliases(arch, model)["head"]
    in_head = lambda k: any(k == h or k.startswith(h + ".") for h in head)  # noqa: E731
    state = {k: v for k, v in state.items() if not in_head(k)}
    own = {k: v for k, v in model.state_dict().items() if not in_head(k)}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
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
    model.load_state_dict(state, strict=False)
