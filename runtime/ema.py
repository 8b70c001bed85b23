"""An exponential moving average of the weights, on torch.optim.swa_utils.AveragedModel.

AveragedModel with an EMA multi-avg function (`torch._foreach_lerp_`) does the averaging;
this class adds what a run needs around it: the plan's cadence (`every` steps), timm's
optional warmup of the decay, and a state dict for checkpoints, so resume stays bitwise.
Buffers are averaged too (`use_buffers=True`, as timm's ModelEmaV3 does), so BatchNorm
statistics of the EMA model follow the EMA weights. Every parameter is averaged, trainable
or frozen: a parameter that never trains is lerped toward itself and stays bitwise equal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ftcompile.plan import EmaSpec


def _warmup_ema_fn(decay: float) -> Any:
    """timm's ModelEma warmup: the n-th update uses min(decay, (1 + n) / (10 + n))."""

    @torch.no_grad()
    def ema_update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        if not torch.is_floating_point(ema[0]):  # counters (num_batches_tracked): follow the model
            for e, c in zip(ema, current, strict=False):
                e.copy_(c)
            return
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema, current, 1 - d)

    return ema_update


class Ema:
    """The EMA model of a run; `update(model, steps_done)` after each optimizer step."""

    def __init__(self, model: nn.Module, spec: EmaSpec) -> None:
        self.decay, self.every, self.warmup = float(spec.decay), int(spec.every), bool(spec.warmup)
        avg_fn = _warmup_ema_fn(self.decay) if self.warmup else get_ema_multi_avg_fn(self.decay)
        self.averaged = AveragedModel(model, multi_avg_fn=avg_fn, use_buffers=True)
        # AveragedModel copies the model at its first update; start it at the initial weights.
        self.averaged.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def update(self, model: nn.Module, steps_done: int) -> None:
        if steps_done % self.every == 0:
            self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
