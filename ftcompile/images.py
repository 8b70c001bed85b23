"""Verify every image of a recipe's data before any training step depends on it.

A run reads its validation images for the first time at the first evaluation, maybe an
epoch in; an unreadable file found there stops the run late and alone. `check
--verify-images` (and `run`, before step 0) decodes every file of both splits once, in
parallel threads (Pillow's decoders release the GIL), and reports all bad files together.

Each file is opened (header: format, size, mode) and decoded: a JPEG at 1/8 scale, which
still walks its whole compressed stream, so a truncated download is found too, at a
fraction of a full decode. Only PIL is imported (lazily), never torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ftcompile.datasets import Splits, resolve_splits
from ftcompile.errors import RecipeError
from ftcompile.plan import DataSpec

MAX_THREADS = 32


@dataclass(frozen=True)
class BadImage:
    path: Path
    key: str  # data.train or data.val
    reason: str


def float_grey(image: Any) -> Any:
    """A float (mode "F") image as uint8 grey (H, W), read by its range.

    A float image says nothing about its scale: most are 0..1 (scientific and HDR tools),
    some 0..255. PIL's convert("RGB") truncates each value to an integer, so a 0..1 image
    read as all black. Every value in [0, 1]: scaled by 255; else every value in [0, 255]:
    as it is; both rounded to the nearest level. Anything else (a negative value, one above
    255, NaN or inf) has no faithful 8-bit reading: a ValueError that says so.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if not np.isfinite(pixels).all():
        raise ValueError("a float image with NaN or infinite values; export it as 8- or 16-bit")
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ValueError(
            f"a float image with values from {low:g} to {high:g}; only 0..1 and 0..255 are read "
            "(export it as 8- or 16-bit, or rescale it)"
        )
    scale = 255.0 if high <= 1 else 1.0
    return np.floor(pixels * scale + 0.5).astype(np.uint8)


def check_image(path: Path) -> str | None:
    """None when the file decodes as an image; otherwise why not (one line)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                return f"the image is {width}x{height} pixels"
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))  # DCT scaling: the whole stream, 1/64 of the pixels
            image.load()
            if image.mode == "F":
                float_grey(image)  # its range decides how it reads, or that it cannot
    except Exception as err:  # PIL raises many types for damaged files (OSError, SyntaxError, struct.error, ...)
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        return text.replace(str(path), "").strip(" '") or type(err).__name__
    return None


def image_files(splits: Splits) -> list[tuple[Path, str]]:
    """(absolute path, recipe key) of every file of both splits, train first (none for a builtin)."""
    out: list[tuple[Path, str]] = []
    for folder, samples, key in (
        (splits.train_dir, splits.train, "data.train"),
        (splits.val_dir, splits.val, "data.val"),
    ):
        if folder is not None:
            out += [(Path(folder) / rel, key) for rel, _ in samples]
    return out


def verify_images(
    files: list[tuple[Path, str]], threads: int | None = None, progress: bool | None = None
) -> list[BadImage]:
    """Every bad file, in the order given (so the report is stable)."""
    threads = max(1, min(MAX_THREADS, threads or os.cpu_count() or 1))
    bar = _progress(len(files), progress)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            reasons = []
            for reason in pool.map(check_image, (path for path, _ in files), chunksize=64):
                reasons.append(reason)
                bar(1)
    finally:
        bar(0)
    return [
        BadImage(path, key, reason) for (path, key), reason in zip(files, reasons, strict=False) if reason is not None
    ]


def bad_images_error(bad: list[BadImage], total: int) -> RecipeError:
    """All bad files in one message: one line each."""
    lines = "".join(f"\n  {b.path}: {b.reason}" for b in bad)
    keys = sorted({b.key for b in bad})
    return RecipeError(
        f"{len(bad)} of {total} images cannot be read:{lines}",
        key=", ".join(keys),
        suggestion="delete or replace these files (or give them a non-image extension), then run again",
    )


def _progress(total: int, enabled: bool | None) -> Callable[[int], None]:
    """A tqdm bar on a terminal (stderr), nothing otherwise; bar(0) closes it."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total == 0:
        return lambda n: None

    bar = tqdm(total=total, desc="verifying images", unit="img", file=sys.stderr, leave=False)

    def update(n: int) -> None:
        if n:
            bar.update(n)
        else:
            bar.close()

    return update


def verify_data(data: DataSpec, root: Path, threads: int | None = None, progress: bool | None = None) -> int:
    """Decode every image of a plan's data (folders relative to `root`); raises a
    RecipeError listing every bad file. Returns how many images were checked (0 for
    builtin data, which has no files)."""
    files = image_files(resolve_splits(data.sources(), root))
    bad = verify_images(files, threads, progress)
    if bad:
        raise bad_images_error(bad, len(files))
    return len(files)
