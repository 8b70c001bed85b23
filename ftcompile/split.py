"""`data.val = { split = 0.15, seed = 0 }`: one folder of class folders, split at compile time.

The split is stratified and a pure function of the file names and the seed: within each
class, files are ordered by sha256("<seed>:<class/relative path>") and the first
round(n * split) are validation (at least 1, and at least 1 left to train). The order of a
folder listing, the machine and the Python version do not enter, and adding one image moves
at most that image and one other (the count can grow by one) between the two sides.

The compiler records both file lists in the plan (`DataSpec.split_files`): they are part of
what the plan hash covers, so an image added to the folder later is a changed plan that
`ftcompile diff` names, not a silently different split. `run`, `resume`, `rerun`, `eval`
and `lr-find` read the plan's lists, never the folder's current content.

Pure functions over (path, class index) lists: `datasets.resolve_splits` lists the folder
and calls them. A compile stage: no torch here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftcompile.errors import RecipeError

Sample = tuple[str, int]


def is_split(val: Any) -> bool:
    """Whether a recipe's (or plan's) data.val asks for a split rather than naming a folder."""
    return isinstance(val, dict) and "split" in val


def val_count(n: int, fraction: float) -> int:
    """Validation images of a class of n: the nearest whole number, kept within [1, n - 1]."""
    return min(n - 1, max(1, int(n * fraction + 0.5)))


def _order_key(seed: int, path: str) -> str:
    return hashlib.sha256(f"{seed}:{path}".encode()).hexdigest()


def stratified(
    samples: Sequence[Sample], names: Sequence[str], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, val) of `samples` ((path, class index), ordered by class then path); both keep
    that order, which the train order (a permutation of positions) depends on."""
    by_class: dict[int, list[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    val: set[str] = set()
    for label, paths in by_class.items():
        if len(paths) < 2:
            raise RecipeError(
                f"class {names[label]!r} has {len(paths)} image: a split needs at least 2 per class",
                key="data.val.split",
                suggestion=f"add images to {names[label]!r}, leave it out with data.classes, or give a val folder",
            )
        chosen = sorted(paths, key=lambda p: _order_key(seed, p))[: val_count(len(paths), fraction)]
        val.update(chosen)
    return [s for s in samples if s[0] not in val], [s for s in samples if s[0] in val]


def files_of(train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, list[str]]:
    """What the plan records: the relative paths of each side."""
    return {"train": [p for p, _ in train], "val": [p for p, _ in val]}


def recorded(files: dict[str, list[str]], classes: Sequence[str]) -> tuple[list[Sample], list[Sample], list[str]]:
    """The plan's lists as (train, val, class names), each file labelled by its class folder
    (the first part of its path)."""
    train, val = list(files.get("train") or []), list(files.get("val") or [])
    names = sorted(classes) if classes else sorted({p.split("/", 1)[0] for p in train + val})
    index = {name: i for i, name in enumerate(names)}
    try:
        return ([(p, index[p.split("/", 1)[0]]) for p in train], [(p, index[p.split("/", 1)[0]]) for p in val], names)
    except KeyError as err:
        raise RecipeError(
            f"the plan's split lists a file of class {err.args[0]!r}, which data.classes leaves out",
            key="data.val.split",
            suggestion="compile the recipe again",
        ) from None


def check_present(folder: Path, files: dict[str, list[str]]) -> None:
    """Every file of the plan's lists is still there: a run reads exactly these."""
    listed = list(files.get("train") or []) + list(files.get("val") or [])
    missing = [p for p in listed if not (folder / p).is_file()]
    if not missing:
        return
    shown = "".join(f"\n  {folder / p}" for p in missing[:10]) + (
        f"\n  ... {len(missing) - 10} more" if len(missing) > 10 else ""
    )
    raise RecipeError(
        f"{len(missing)} of the plan's {len(listed)} split files are not in {folder}:{shown}",
        key="data.val.split",
        suggestion="point the run at the data the plan was compiled against, or compile the recipe again",
    )
