"""The one optimizer of a run: every param group of the plan, for the whole run."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from ftcompile.plan import Plan
from ftcompile.torch_args import optimizer_class


def build_optimizer(model: nn.Module, plan: Plan) -> Optimizer:
    """Its structure never changes, so every checkpoint loads into it.

    Frozen groups stay in it with lr 0 and no gradients; unfreezing changes values only.
    """
    params = dict(model.named_parameters())
    groups = []
    for pg in plan.param_groups:
        group: dict[str, Any] = {"params": [params[n] for n in pg.params], "name": pg.name}
        if not pg.decay:
            group["weight_decay"] = 0.0
        groups.append(group)
    optimizer: Optimizer = optimizer_class(plan.optimizer.type)(groups, **plan.optimizer.kwargs)
    return optimizer
