"""The feature cache: when only the head trains and nothing below it changes or is random,
compute the head's input once per sample and train the head on it for the whole phase.

The plan decides when (`features` changes); this module only computes and serves the
tensors. Features are the input the head module receives in the normal forward pass,
captured with a forward pre-hook, so any torchvision family works without knowing its
forward code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class _Captured(Exception):
    """Stops the forward pass once the head's input is known (the head is not needed)."""


def head_inputs(model: nn.Module, module: str, x: torch.Tensor) -> torch.Tensor:
    head = model.get_submodule(module)
    box: list[torch.Tensor] = []

    def grab(_: nn.Module, args: tuple[Any, ...]) -> None:
        box.append(args[0])
        raise _Captured

    handle = head.register_forward_pre_hook(grab)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return box[0]


@dataclass
class FeatureCache:
    module: str
    train: torch.Tensor
    train_targets: torch.Tensor
    val: torch.Tensor
    val_targets: torch.Tensor

    @staticmethod
    def build(
        model: nn.Module,
        module: str,
        train_loader: Any,
        val_loader: Any,
        device: torch.device,
        autocast: Callable[[], Any],
        train_mode: Callable[[], None],
    ) -> FeatureCache:
        """Train features in the phase's train mode (frozen BatchNorm in eval), val in eval mode."""
        train_mode()
        train, train_y = _collect(model, module, train_loader, device, autocast)
        model.eval()
        val, val_y = _collect(model, module, val_loader, device, autocast)
        return FeatureCache(module, train, train_y, val, val_y)

    def batch(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor(indices, dtype=torch.long)
        return self.train[idx].to(device, non_blocking=True), self.train_targets[idx].to(device, non_blocking=True)

    def val_batches(self, size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val), size):
            yield self.val[i : i + size].to(device), self.val_targets[i : i + size].to(device)


def _collect(
    model: nn.Module, module: str, loader: Any, device: torch.device, autocast: Callable[[], Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    feats, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            with autocast():
                f = head_inputs(model, module, x.to(device, non_blocking=True))
            feats.append(f.float().cpu())
            targets.append(y)
    return torch.cat(feats), torch.cat(targets)
