"""Batch-level MixUp / CutMix (torchvision.transforms.v2) and the micro-batches of a step.

The mix of step s is drawn under its own seed (seed, stream, s) inside a fork of the CPU RNG,
as the per-image augmentation is: it does not depend on resume points, workers or trials,
and the training process's RNG is never consumed. Each rank mixes its own shard.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from ftcompile.runtime.data import stream_seed
from torchvision.transforms import v2

from ftcompile.errors import RecipeError
from ftcompile.plan import MixSpec

MIX_STREAM = 2**31 - 2  # the seed stream of the batch mixing (CACHE_STREAM is 2**31 - 1)


class BatchMix:
    """timm's Mixup semantics on torchvision's ops: with probability `prob` the batch is
    mixed, by CutMix with probability `switch_prob` when both kinds are on; targets become
    class probabilities (an unmixed batch: one-hot), for a soft-target cross-entropy."""

    def __init__(self, spec: MixSpec, num_classes: int, seed: int) -> None:
        self.prob, self.switch_prob = float(spec.prob), float(spec.switch_prob)
        self.mixup = v2.MixUp(alpha=spec.mixup_alpha, num_classes=num_classes) if spec.mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=spec.cutmix_alpha, num_classes=num_classes) if spec.cutmix_alpha > 0 else None
        self.num_classes, self.seed = num_classes, seed

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, MIX_STREAM, step))
            if float(torch.rand(())) >= self.prob:
                return x, torch.nn.functional.one_hot(y, self.num_classes).to(torch.float32)
            use_cutmix = self.mixup is None or (self.cutmix is not None and float(torch.rand(())) < self.switch_prob)
            op = self.cutmix if use_cutmix else self.mixup
            assert op is not None
            return op(x, y)


def micro_batches(
    x: torch.Tensor, y: torch.Tensor, n: int, weight: torch.Tensor | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """The step's batch in `n` micro-batches, each with its share of the batch's mean loss.

    Summing share * mean loss of each micro-batch gives the whole batch's mean loss, so the
    accumulated gradient is the one-batch gradient: the share is the micro-batch's fraction
    of the images, or of the class weights (balance = "loss" with hard targets, where
    CrossEntropyLoss divides by the sum of the targets' weights).
    """
    if n == 1:
        yield x, y, 1.0
        return
    xs, ys = torch.tensor_split(x, n), torch.tensor_split(y, n)
    if weight is not None and y.dim() == 1:
        total = float(weight[y].sum())
        shares = [float(weight[part].sum()) / total for part in ys]
    else:
        shares = [len(part) / len(y) for part in ys]
    for xi, yi, share in zip(xs, ys, shares, strict=False):
        if len(yi):
            yield xi, yi, share


def check_micro_batches(batch_size: int, accumulate: int, world: int, key: str) -> None:
    """The compiler checked batch_size % accumulate; the number of processes is known here."""
    if batch_size % (accumulate * world):
        raise RecipeError(
            f"batch_size {batch_size} does not split into {accumulate} micro-batches on each of {world} processes",
            key=key,
            suggestion=f"use a multiple of {accumulate * world}",
        )
