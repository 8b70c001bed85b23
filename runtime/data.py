"""Datasets, transforms and the deterministic, resumable batch order.

Resuming on CPU must be bitwise identical to an uninterrupted run, so nothing here depends
on process state: the index order of an epoch is a pure function of (seed, epoch), and the
random augmentation of a sample is a pure function of (seed, epoch, its position in the
epoch order). Each sample is drawn under its own seed inside a fork of torch's CPU RNG, so
the answer does not depend on the number of workers, on the world size, or on where a
resumed run starts, and the training process's own RNG is never consumed.

Which samples exist comes from `ftcompile.datasets.resolve_splits`, the same lists the
compiler counted, so the plan's sizes and the loaded sizes cannot disagree.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from ftcompile.datasets import resolve_splits, validate_augment
from ftcompile.errors import RecipeError
from ftcompile.images import float_grey
from ftcompile.plan import DataSpec

# ---------------------------------------------------------------- transforms


def build_transforms(data: DataSpec, mean: Sequence[float], std: Sequence[float], train: bool) -> Callable:
    """The train or val pipeline; both end with a square, normalised float image (train:
    image_size; val: its crop, image_size unless `data.val_crop` says otherwise).

    Train: the recipe's augment ops, then Resize + CenterCrop as a safety net so that a
    recipe without a crop (or with a crop of another size) still batches.
    Val: Resize + CenterCrop to the sizes of `data.val_preprocessing` (ftcompile/plan.py, the
    one home of that rule: export's sidecar and `plan` read it too).
    """
    size = data.image_size
    steps: list[Callable] = [v2.ToImage()]
    if train:
        steps += _augment_ops(data.augment)
        steps += [v2.Resize(size), v2.CenterCrop(size)]
    else:
        val = data.val_preprocessing
        steps += [v2.Resize(val.resize), v2.CenterCrop(val.crop)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def _augment_ops(augment: list[dict]) -> list[Callable]:
    """Instantiate the recipe's ops by name (checked first, for a readable error)."""
    validate_augment(augment)
    return [getattr(v2, entry["op"])(**{k: v for k, v in entry.items() if k != "op"}) for entry in augment]


# ---------------------------------------------------------------- datasets


class ImageFiles(Dataset):
    """An ImageFolder split read from the file list the compiler counted."""

    def __init__(self, folder: Path, samples: Sequence[tuple[str, int]], transform: Callable, key: str) -> None:
        self.folder = Path(folder)
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.key = key  # recipe key to blame when a file cannot be read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rel, label = self.samples[index]
        return self.transform(self._read(self.folder / rel)), label

    def _read(self, path: Path) -> torch.Tensor:
        """Decode as RGB; a corrupt or truncated file becomes a RecipeError that names it."""
        try:
            return read_rgb(path)
        except Exception as err:  # PIL raises many types for damaged files (OSError, struct.error, ...)
            raise RecipeError(
                f"cannot read image {path}: {err or type(err).__name__}",
                key=self.key,
                suggestion="delete or replace the file (or give it a non-image extension); "
                "`ftcompile check --verify-images RECIPE` lists every bad file",
            ) from None


# 16-bit grey (PNG, TIFF): PIL's convert("RGB") clips each value at 255, turning almost every
# pixel white. "I" is how older Pillow versions and TIFF hand 16-bit data over.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_rgb(path: Path) -> torch.Tensor:
    """The image as the camera or the file meant it: uint8 RGB, (3, H, W).

    The EXIF orientation is applied (a phone photo stored sideways is seen upright), 16-bit
    grey is scaled to 8 bits (v / 257, rounded) instead of clipped, float grey is read by its
    range (`ftcompile.images.float_grey`: 0..1 scaled by 255), CMYK becomes RGB by
    (255 - c)(255 - k) / 255, palette images are looked up, and an alpha channel is dropped
    (as torchvision's own decoders do for an RGB read).
    """
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
    if image.mode in _SIXTEEN_BIT:
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((wide + 128) // 257).astype(np.uint8)  # == round(v / 257): v / 257 is never k + 1/2
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif image.mode == "F":  # 32-bit float: 0..1 or 0..255 by its range, else refused (never black)
        rgb = np.repeat(float_grey(image)[:, :, None], 3, axis=2)
    elif image.mode == "CMYK":
        cmyk = np.asarray(image, dtype=np.int64)
        ink = (255 - cmyk[:, :, :3]) * (255 - cmyk[:, :, 3:])
        rgb = ((ink + 127) // 255).astype(np.uint8)  # round((255 - c)(255 - k) / 255)
    else:
        rgb = np.array(image.convert("RGB"))  # a writable copy: torch.from_numpy shares it
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


class DigitsImages(Dataset):
    """scikit-learn's 8x8 digits as uint8 3-channel images, so the same transforms apply."""

    def __init__(self, images: torch.Tensor, samples: Sequence[tuple[int, int]], transform: Callable) -> None:
        self.images = images
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        source, label = self.samples[index]
        return self.transform(self.images[source].repeat(3, 1, 1)), label


def _digits_images() -> torch.Tensor:
    """(1797, 1, 8, 8) uint8: values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits  # start-up time: ~1 s, only the builtin digits need it

    images = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1)


def build_datasets(
    data: DataSpec, root: Path, mean: Sequence[float], std: Sequence[float]
) -> tuple[Dataset, Dataset, list[str]]:
    """Train and val datasets (transforms attached) and the class names."""
    splits = resolve_splits(data.sources(), Path(root))
    train_tf = build_transforms(data, mean, std, train=True)
    val_tf = build_transforms(data, mean, std, train=False)
    if splits.builtin is not None:  # every builtin is scikit-learn's digits
        images = _digits_images()
        train: Dataset = DigitsImages(images, splits.train, train_tf)
        val: Dataset = DigitsImages(images, splits.val, val_tf)
    else:
        train = ImageFiles(_folder(splits.train_dir), splits.train, train_tf, key="data.train")
        val = ImageFiles(_folder(splits.val_dir), splits.val, val_tf, key="data.val")
    return train, val, list(splits.class_names)


def _folder(path: Path | None) -> Path:
    assert path is not None, "folder splits always carry their folder"
    return path


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """Loss weights for balance="loss": n / (k * count_c), so a balanced set gets all ones.

    A class with no train samples gets weight 0 rather than infinity (it never occurs in a
    batch anyway, and inf would turn the loss into nan).
    """
    c = torch.tensor(list(counts), dtype=torch.float64)
    n, k = c.sum(), len(counts)
    weights = torch.where(c > 0, n / (k * c.clamp(min=1)), torch.zeros_like(c))
    return weights.to(torch.float32)


# ---------------------------------------------------------------- seeded sampling


def stream_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of `parts` (no collisions like seed*K + epoch)."""
    text = ":".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class _Failure:
    """A RecipeError raised in a worker, carried as data so that its fields survive.

    DataLoader re-raises worker exceptions as `type(err)(traceback_text)`, which would turn a
    one-line user error into a traceback; returning the failure as the batch avoids that.
    """

    message: str
    key: str | None
    suggestion: str | None

    def error(self) -> RecipeError:
        return RecipeError(self.message, key=self.key, suggestion=self.suggestion)


class _Samples(Dataset):
    """Wraps a dataset for the loaders: seeded draws, and failures returned as data.

    An item is an index (val: deterministic transforms) or an (index, sample_seed) pair
    (train): the CPU RNG is reseeded inside a fork so the caller's RNG is left untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        try:
            if isinstance(item, tuple):
                index, sample_seed = item
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(sample_seed)
                    return self.dataset[index]
            return self.dataset[item]
        except RecipeError as err:
            return _Failure(err.message, err.key, err.suggestion)


def _collate(items: list[Any]) -> Any:
    for item in items:
        if isinstance(item, _Failure):
            return item
    return default_collate(items)


class _CheckedLoader(DataLoader):
    """A DataLoader that turns a failure returned by a worker back into a RecipeError."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, _Failure):
                raise batch.error()
            yield batch


def _loader(dataset: Dataset, workers: int, **kwargs: Any) -> DataLoader:
    """Common DataLoader settings.

    The explicit generator matters: without it, creating the iterator draws its base seed
    from the global RNG, so merely iterating data would change the model's dropout.
    """
    return _CheckedLoader(
        _Samples(dataset),
        num_workers=int(workers),
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


class TrainBatches:
    """The train order: deterministic per (seed, epoch), resumable at any batch, sharded.

    Epoch e visits positions 0..n-1 of `order(e)`: a permutation (balance "none"/"loss") or
    n draws with replacement weighted 1/count[class] (balance "sampler"). Global batch b is
    positions [b*B, (b+1)*B). Sample seeds depend on (seed, epoch, position), never on the
    rank, so a run on 4 GPUs augments every sample exactly as a run on 1 GPU does.

    Distributed: global batch b is cut into `world` contiguous chunks of B/world and rank r
    takes chunk r. The last, short batch (when drop_last is false) is padded by wrapping
    around to the start of the epoch order, DistributedSampler style, until it divides
    evenly: every rank then has the same number of steps and no rank gets an empty batch
    (which would break BatchNorm and DDP). The cost is that up to world-1 samples are seen
    twice in the last step of an epoch. With world == 1 there is never any padding.
    """

    def __init__(
        self,
        dataset: Dataset,
        data: DataSpec,
        seed: int,
        class_counts: Sequence[int] | None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        self.batch_size = data.batch_size
        self.workers = data.workers
        self.balance = data.balance
        self.drop_last = data.drop_last
        self.seed = int(seed)
        self.rank, self.world = rank, world
        _check_divisible(self.batch_size, world)
        self.targets = torch.as_tensor(list(dataset.targets))  # type: ignore[attr-defined]
        self.class_counts = self._checked_counts(class_counts)
        divide = math.floor if self.drop_last else math.ceil
        self.steps_per_epoch = int(divide(self.n / self.batch_size))

    def _checked_counts(self, given: Sequence[int] | None) -> list[int]:
        """The plan's per-class counts, checked against the data actually loaded.

        None or all zeros means the plan was compiled without the data (--dataset-size):
        the loaded targets are counted instead. Use `self.class_counts` for class_weights.
        """
        found = torch.bincount(self.targets, minlength=len(given or [])).tolist()
        if given is None or not any(given):
            return found
        if list(given) != found:
            raise RecipeError(
                f"the train data changed since the plan was made: class counts {found}, plan {list(given)}",
                key="data.train",
                suggestion="recompile the plan against this data (ftcompile plan)",
            )
        return list(given)

    def order(self, epoch: int) -> torch.Tensor:
        """Dataset indices in the order epoch `epoch` visits them (a pure function)."""
        g = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
        if self.balance == "sampler":
            per_class = 1.0 / torch.tensor(self.class_counts, dtype=torch.float64).clamp(min=1)
            return torch.multinomial(per_class[self.targets], self.n, replacement=True, generator=g)
        return torch.randperm(self.n, generator=g)

    def batch_items(self, epoch: int, batch: int, order: torch.Tensor | None = None) -> list[tuple[int, int]]:
        """This rank's (index, sample_seed) pairs of global batch `batch`."""
        order = self.order(epoch) if order is None else order
        begin = batch * self.batch_size
        end = min(begin + self.batch_size, self.n)
        size = end - begin
        per_rank = -(-size // self.world)  # ceil: a short batch is padded, see class doc
        positions = range(begin + self.rank * per_rank, begin + (self.rank + 1) * per_rank)
        return [(int(order[p % self.n]), stream_seed(self.seed, epoch, p)) for p in positions]

    def loader(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """Batches start_batch, start_batch+1, ... of epoch `epoch`, skipped ones never loaded."""
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.steps_per_epoch}")
        order = self.order(epoch)
        batches = [self.batch_items(epoch, b, order) for b in range(start_batch, self.steps_per_epoch)]
        return _loader(self.dataset, self.workers, batch_sampler=batches)


def _check_divisible(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise RecipeError(
            f"batch_size {batch_size} is not divisible by the {world} processes",
            key="data.batch_size",
            suggestion=f"use a multiple of {world}, e.g. {batch_size - batch_size % world or world}",
        )


CACHE_STREAM = 2**31 - 1  # the seed stream of the one augmentation a feature cache applies


def cache_loader(dataset: Dataset, data: DataSpec, seed: int) -> DataLoader:
    """Every train sample once, in index order, each drawn under its own seed (feature cache)."""
    n = len(dataset)  # type: ignore[arg-type]
    size = data.batch_size
    batches = [[(i, stream_seed(seed, CACHE_STREAM, i)) for i in range(b, min(b + size, n))] for b in range(0, n, size)]
    return _loader(dataset, data.workers, batch_sampler=batches)


def val_loader(dataset: Dataset, data: DataSpec, rank: int = 0, world: int = 1) -> DataLoader:
    """In-order validation batches of this rank's contiguous shard, without padding.

    Shards are as even as possible (sizes differ by at most one) and never repeat a sample,
    so summing correct counts over ranks gives the exact accuracy; ranks may run a different
    number of batches, so reduce metrics after the loop, not inside it.
    """
    _check_divisible(data.batch_size, world)
    n = len(dataset)  # type: ignore[arg-type]
    shard = list(range(rank * n // world, (rank + 1) * n // world))
    per_rank = data.batch_size // world
    batches = [shard[i : i + per_rank] for i in range(0, len(shard), per_rank)]
    return _loader(dataset, data.workers, batch_sampler=batches)
