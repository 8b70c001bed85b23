"""Build the model the plan describes, with its weights, on the run's device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftcompile import arch as archs
from ftcompile import hub
from ftcompile.errors import RecipeError
from ftcompile.plan import ModelSpec
from ftcompile.weights import check_fits, read_state


def torchvision_weights(arch: str, name: str) -> Any:
    import torchvision  # start-up time: only torchvision's pretrained weights need it

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
        assert value is not None  # a weights name
        weights = torchvision_weights(arch, value)
        cached = hub.locate(arch, value)
        hub.ensure(cached)  # `run` fetched it before making the run directory; lr-find and eval come here
        # torch.hub loads its cache with weights_only=False: check the file the safe way first.
        load_state(cached.file)
        return _allocated(
            spec,
            lambda: archs.build_model(
                arch, num_classes, head, device="cpu", weights=weights, builder_args=spec.builder_args
            ),
        )
    model = _allocated(
        spec, lambda: archs.build_model(arch, num_classes, head, device="cpu", builder_args=spec.builder_args)
    )
    with_head = spec.head_weights == "load"
    if kind == "file":
        assert value is not None  # a path
        load_backbone(model, arch, root / value, with_head)
    elif kind == "recipe":
        if upstream is None:
            raise RecipeError(
                f"the weights come from the upstream recipe {value}, whose model.pt was not given",
                key="model.weights",
                suggestion="start the run with ftcompile run, which trains or finds the upstream run first",
            )
        load_backbone(model, arch, upstream, with_head)
    return model


def _allocated(spec: ModelSpec, make: Any) -> nn.Module:
    """make(); a model too large for this machine's memory is a message, not a traceback."""
    try:
        return make()
    except (RuntimeError, MemoryError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise RecipeError(
            f"the model does not fit in memory: {spec.total_params:,} parameters "
            f"({4 * spec.total_params / 2**30:,.1f} GiB in fp32) ({str(exc).splitlines()[0][:160]})",
            key="model.num_classes" if spec.head is None else "model.head",
            suggestion="check model.num_classes and the widths in model.head; `ftcompile plan` shows the memory estimate",
        ) from None


def load_state(path: Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: a file that carries code is refused."""
    return read_state(path, key)


def load_backbone(model: nn.Module, arch: str, path: Path, with_head: bool = False) -> None:
    """Load every non-head tensor; the head is new (it has the recipe's classes), unless
    `with_head` (model.head_weights = "load"): then every tensor, the head's too."""
    head = [] if with_head else archs.aliases(arch, model)["head"]
    state = check_fits(load_state(path), model.state_dict(), head, arch, path)
    model.load_state_dict(state, strict=False)
