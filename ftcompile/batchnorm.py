"""A one-image batch meets BatchNorm in train mode: found by the compiler, not at step N.

Without drop_last, an epoch of n images in batches of B ends with a batch of n - (s-1)·B
images. When that is 1, every BatchNorm layer in train mode that sees one value per channel
(BatchNorm1d in a head, BatchNorm2d after the last stride at a small image size) fails at
that step, an epoch or more into the run. Whether it does depends on the architecture, the
image size, the head and which groups a phase freezes (`bn = "frozen"` puts theirs in eval
mode), so the compiler asks the model itself: one forward pass of a 1-image batch on the
meta device (shapes only, no memory, no arithmetic), in each affected phase's BatchNorm
modes. It runs only when an epoch really ends with one image, and only then builds the
model with its forward code (the compiler's own model, rebuilt from the recorded table,
has none: torchvision is imported for this case alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ftcompile.errors import RecipeError

_BN_MESSAGE = "more than 1 value per channel"  # torch.nn.functional.batch_norm's check


def one_image_steps(
    phases: Sequence[Any], spe: int, train_size: int, batch_size: int, image_size: int, drop_last: bool
) -> list[tuple[Any, int, int, int]]:
    """(phase, its first 1-image step, its batch size, its image size) for every phase that
    trains on a 1-image last batch. A phase with its own data (`data = {...}`) counts its
    epochs in its own batches, from where its data segment begins (as the runtime does)."""
    if drop_last:
        return []
    out = []
    for ph in phases:
        d = ph.data
        b, n, start, size = (
            (d.batch_size, d.steps_per_epoch, d.data_begin, d.image_size) if d else (batch_size, spe, 0, image_size)
        )
        if train_size - (n - 1) * b != 1:
            continue
        step = ph.begin + (n - 1 - (ph.begin - start)) % n  # the first last-batch step at or after begin
        if step < ph.end:
            out.append((ph, step, b, size))
    return out


def check_one_image_batches(
    make_model: Callable[[], Any],
    phases: Sequence[Any],
    bn_groups: dict[str, str],
    image_size: int,
    spe: int,
    train_size: int,
    batch_size: int,
    drop_last: bool,
) -> None:
    """A RecipeError when a phase would train BatchNorm in train mode on a 1-image batch.

    `make_model()` gives the model on the meta device with its forward code; it is called
    only when some epoch ends with a 1-image batch.
    """
    steps = one_image_steps(phases, spe, train_size, batch_size, image_size, drop_last)
    if not steps:
        return
    model = make_model()
    tried: set[tuple[frozenset[str], int]] = set()
    for ph, step, batch, size in steps:
        frozen = frozenset(m for m, g in bn_groups.items() if ph.bn == "frozen" and g not in ph.train)
        if (frozen, size) in tried:
            continue
        tried.add((frozen, size))
        model.train()
        for name in frozen:
            model.get_submodule(name).eval()
        try:
            with torch.no_grad():
                model(torch.empty(1, 3, size, size, device="meta"))
        except ValueError as exc:
            if _BN_MESSAGE not in str(exc):
                return  # not BatchNorm's complaint: the run still checks every batch
            raise RecipeError(
                f"{train_size} training images in batches of {batch} leave 1 image in the last batch of "
                f"every epoch: the batch of step {step} (phase {ph.name}) has 1 image, too few for BatchNorm in train mode",
                key=f"phases.{ph.name}.data.batch_size" if ph.data else "data.batch_size",
                suggestion=f"set data.drop_last = true, or batch_size = {_nearest_batch(train_size, batch)}",
            ) from None
        except Exception:  # noqa: BLE001 - an op the meta device lacks: the run still checks every batch
            return
        finally:
            model.eval()


def _nearest_batch(train_size: int, batch_size: int) -> int:
    """The batch size closest to `batch_size` whose last batch is not a single image."""
    for delta in range(1, batch_size + 1):
        for b in (batch_size + delta, batch_size - delta):
            if b >= 2 and train_size % b != 1:
                return b
    return batch_size + 1
