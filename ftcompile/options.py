"""What the command line adds to a recipe, as one record the compiler takes.

A leaf module (nothing but the standard library): `ftcompile diff` of two plan files builds
these options without importing the compiler, which imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CompileOptions:
    """What the command line adds to a recipe."""

    dataset_size: int | None = None  # --dataset-size: train images, where data.train is absent
    val_size: int | None = None  # --val-size: validation images, where data.val is absent
    nominal_data: bool = False  # `check`: an absent data folder gets a nominal size, not an error
    build_transforms: bool = False  # build the augment ops once (imports torchvision; `run` does)
    needs_data: bool = False  # `run`: an absent data folder is an error whose hint is not --dataset-size
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, in order
    data_root: Path | None = None  # data folders are relative to this, not to the recipe's folder
