"""Find and count the recipe's data without loading it.

The resolver turns epochs into steps, so it must know the dataset sizes at compile time,
cheaply (no image decoding) and exactly as the runtime will see them. Both sides therefore
go through `resolve_splits`: the compiler counts its lists, `runtime/data.py` loads them.

This module is a compile stage: it must not import torch, torchvision or scikit-learn at
import time (`ftcompile plan` stays fast); those imports live inside the functions that
need them.
"""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ftcompile import split, tv_table
from ftcompile.errors import RecipeError, did_you_mean

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BUILTINS = ("digits", "digits-10shot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
# Every 5th sample of each class (position % 5 == 4) is a validation sample: 20 % val.
DIGITS_VAL_EVERY = 5
# Few-shot variants: the same validation images, and only the first N training images of each
# class (a search benchmark that can tell schedules apart: benchmarks/search.py).
DIGITS_SHOTS = {"digits-10shot": 10}

Sample = tuple[Any, int]  # (relative file path or builtin index, class index)


@dataclass(frozen=True)
class DataCounts:
    """What the plan needs to know about the data: sizes and the class balance."""

    train_size: int
    val_size: int
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]  # train samples per class, in class-index order


@dataclass(frozen=True)
class Splits:
    """The exact sample lists of both splits; `train_dir`/`val_dir` are None for builtins."""

    builtin: str | None
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    class_names: tuple[str, ...]
    train_dir: Path | None = None
    val_dir: Path | None = None


def count_data(data: dict, root: Path) -> DataCounts:
    """Sizes and per-class train counts of the recipe's data (no image is decoded)."""
    splits = resolve_splits(data, root)
    counts = [0] * len(splits.class_names)
    for _, label in splits.train:
        counts[label] += 1
    return DataCounts(
        train_size=len(splits.train),
        val_size=len(splits.val),
        class_names=splits.class_names,
        class_counts=tuple(counts),
    )


def absent_folders(data: dict, root: Path) -> tuple[str, ...]:
    """Keys ("data.train", "data.val") of the recipe's folders that do not exist here."""
    if data.get("builtin") is not None:
        return ()
    if split.is_split(data.get("val")):  # data.val = { split }: both sides come from data.train
        return ("data.train", "data.val") if data.get("train") and not (Path(root) / data["train"]).exists() else ()
    return tuple(f"data.{s}" for s in ("train", "val") if data.get(s) and not (Path(root) / data[s]).exists())


def count_folder(data: dict, root: Path, key: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and images per class of one split's folder, when the other is absent."""
    folder = existing_folder(data[key.split(".")[1]], Path(root), key)
    samples, names = list_image_folder(folder, list(data.get("classes") or []), key=key)
    counts = [0] * len(names)
    for _, label in samples:
        counts[label] += 1
    return tuple(names), tuple(counts)


def resolve_splits(data: dict, root: Path) -> Splits:
    """The single source of truth for which samples each split holds, shared with the runtime."""
    builtin = data.get("builtin")
    classes = list(data.get("classes") or [])
    _check_unique(classes)
    if builtin is not None:
        return _builtin_splits(builtin, classes)
    if not data.get("train"):
        raise RecipeError(
            "no training data given",
            key="data.train",
            suggestion='set data.train = "path/to/train" (class folders) or data.builtin = "digits"',
        )
    if not data.get("val"):
        raise RecipeError(
            "a folder train set needs a validation folder",
            key="data.val",
            suggestion='set data.val = "path/to/val" with the same class folders as data.train, '
            "or data.val = { split = 0.15, seed = 0 } to take it from data.train",
        )
    if split.is_split(data["val"]):
        return _split_folder(data, Path(root))
    return _folder_splits(data["train"], data["val"], classes, Path(root))


def _check_unique(classes: Sequence[str]) -> None:
    """A class listed twice would silently count once; say so instead."""
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise RecipeError(f"class {name!r} is listed twice", key="data.classes")
        seen.add(name)


def _builtin_splits(builtin: str, classes: Sequence[str]) -> Splits:
    if builtin not in BUILTINS:
        raise RecipeError(
            f"unknown builtin dataset {builtin!r}",
            key="data.builtin",
            suggestion=did_you_mean(builtin, BUILTINS) or f"builtins: {', '.join(BUILTINS)}",
        )
    train_idx, val_idx, names = digits_split(classes, DIGITS_SHOTS.get(builtin))
    labels = _digits_labels(names)
    targets = _digits_targets()
    return Splits(
        builtin=builtin,
        train=tuple((i, labels[targets[i]]) for i in train_idx),
        val=tuple((i, labels[targets[i]]) for i in val_idx),
        class_names=tuple(names),
    )


@lru_cache(maxsize=1)
def _digits_targets() -> tuple[int, ...]:
    """Labels of sklearn's digits, in dataset order (read once; the data ships with sklearn).

    Read from sklearn's own file (the last column of digits.csv.gz is the label, as
    `load_digits` reads it) without importing sklearn, which costs half a torch import;
    `load_digits()` when the file is not where sklearn keeps it.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = (
        Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
        if spec and spec.submodule_search_locations
        else None
    )
    if csv is not None and csv.is_file():
        with gzip.open(csv, "rt") as rows:
            return tuple(int(float(row.rsplit(",", 1)[1])) for row in rows if row.strip())
    from sklearn.datasets import load_digits  # start-up time: sklearn costs half a torch import (module docstring)

    return tuple(int(t) for t in load_digits().target)


def _digits_labels(names: Sequence[str]) -> dict[int, int]:
    """Digit value -> class index within the chosen subset."""
    return {int(name): index for index, name in enumerate(names)}


def digits_split(classes: Sequence[str], shots: int | None = None) -> tuple[list[int], list[int], list[str]]:
    """Train and val indices into `load_digits()`, and the class names.

    The split is fixed and stratified without randomness, so the plan and every run agree
    on it: within each class, in dataset order, every 5th sample (position % 5 == 4) is
    validation. Class names are sorted, so a subset ["9", "5"] maps "5" -> 0, "9" -> 1.
    `shots`: only the first `shots` training samples of each class train (the others are
    left out; validation is unchanged).
    """
    for name in classes:
        if name not in DIGIT_CLASSES:
            raise RecipeError(
                f"unknown class {name!r} for builtin 'digits'",
                key="data.classes",
                suggestion=did_you_mean(str(name), DIGIT_CLASSES) or 'digits classes are "0" .. "9" (strings)',
            )
    names = sorted(classes) if classes else list(DIGIT_CLASSES)
    wanted = {int(n) for n in names}
    seen = [0] * len(DIGIT_CLASSES)
    train: list[int] = []
    val: list[int] = []
    for index, digit in enumerate(_digits_targets()):
        if digit not in wanted:
            continue
        position = seen[digit]
        seen[digit] += 1
        if position % DIGITS_VAL_EVERY == DIGITS_VAL_EVERY - 1:
            val.append(index)
        elif shots is None or position - position // DIGITS_VAL_EVERY < shots:  # its rank among the training ones
            train.append(index)
    return train, val, names


def _folder_splits(train: str, val: str, classes: list[str], root: Path) -> Splits:
    """List both ImageFolder splits and check that they agree on the classes."""
    train_dir = existing_folder(train, root, "data.train")
    val_dir = existing_folder(val, root, "data.val")
    train_names = class_folders(train_dir, "data.train")
    val_names = class_folders(val_dir, "data.val")
    if classes:
        _check_known(classes, train_names)
        _check_same_classes(set(classes), set(classes) & set(val_names), val_dir)
    else:
        _check_same_classes(set(train_names), set(val_names), val_dir)
    train_samples, names = list_image_folder(train_dir, classes, key="data.train")
    val_samples, _ = list_image_folder(val_dir, names, key="data.val")
    return Splits(
        builtin=None,
        train=tuple(train_samples),
        val=tuple(val_samples),
        class_names=tuple(names),
        train_dir=train_dir,
        val_dir=val_dir,
    )


def _split_folder(data: dict, root: Path) -> Splits:
    """data.train with `data.val = {split, seed}`: the plan's recorded lists when `data` carries
    them (`split_files`: run, resume, rerun, eval read exactly these), else split now."""
    folder = existing_folder(data["train"], root, "data.train")
    classes = list(data.get("classes") or [])
    if data.get("split_files") is not None:
        split.check_present(folder, data["split_files"])
        train, val, names = split.recorded(data["split_files"], classes)
    else:
        samples, names = list_image_folder(folder, classes, key="data.train")
        train, val = split.stratified(samples, names, float(data["val"]["split"]), int(data["val"].get("seed", 0)))
    return Splits(
        builtin=None, train=tuple(train), val=tuple(val), class_names=tuple(names), train_dir=folder, val_dir=folder
    )


def split_plan_fields(data: dict, root: Path) -> dict[str, Any]:
    """`{"split_files": ...}` for the plan's data when data.val asks for a split and data.train
    is here (the lists are then part of what the plan hash covers); `{}` otherwise."""
    if not split.is_split(data.get("val")) or not data.get("train") or not (Path(root) / data["train"]).exists():
        return {}
    splits = _split_folder({k: v for k, v in data.items() if k != "split_files"}, Path(root))
    return {"split_files": split.files_of(splits.train, splits.val)}


def existing_folder(raw: str, root: Path, key: str) -> Path:
    folder = (root / raw).resolve()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "not found"
        raise RecipeError(
            f"data folder {raw!r} {what} (resolved to {folder})",
            key=key,
            suggestion=f"paths in a recipe are relative to the recipe's folder ({root.resolve()})",
        )
    return folder


def class_folders(folder: Path, key: str = "data.train") -> list[str]:
    """Sorted class folder names, like torchvision's ImageFolder.

    Hidden folders (".ipynb_checkpoints", ".git") are skipped: they are never classes, and
    torchvision counting them is a classic source of a wrong num_classes.
    """
    try:
        with os.scandir(folder) as entries:
            listing = list(entries)
        names = sorted(e.name for e in listing if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise _os_error(err, key) from None
    for name in names:
        _check_class_name(folder, name, key)
    if not names:
        loose = any(_is_image(e.name) for e in listing)
        raise RecipeError(
            f"no class folders in {folder}" + (" (it holds images directly)" if loose else ""),
            key=key,
            suggestion=f"use the ImageFolder layout: {folder}/<class name>/<image>.jpg",
        )
    return names


def _check_class_name(folder: Path, name: str, key: str) -> None:
    """A class name is printed one per line (eval's table, predict's results, the plan): a
    newline, a carriage return, another control character or a line separator in it breaks
    that output, and a name that is not valid UTF-8 (undecodable bytes) cannot be printed."""
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")), None)
    if bad is None:
        return
    what = "bytes that are not UTF-8" if unicodedata.category(bad) == "Cs" else f"a control character ({bad!r})"
    raise RecipeError(
        f"the class folder {str(Path(folder) / name)!r} has {what} in its name; class names are printed "
        "one per line by plan, eval and predict",
        key=key,
        suggestion="rename the folder (letters, digits, spaces, '-', '_' ...), or move it out of the data folder",
    )


def _check_known(classes: Sequence[str], available: Sequence[str]) -> None:
    for name in classes:
        if name not in available:
            raise RecipeError(
                f"unknown class {name!r}: no such class folder in data.train",
                key="data.classes",
                suggestion=did_you_mean(name, available)
                or f"classes are: {', '.join(available[:20])}" + (" ..." if len(available) > 20 else ""),
            )


def _check_same_classes(train: set[str], val: set[str], val_dir: Path) -> None:
    if train == val:
        return
    parts = []
    if train - val:
        parts.append(f"only in train: {sorted(train - val)}")
    if val - train:
        parts.append(f"only in val: {sorted(val - train)}")
    raise RecipeError(
        "train and val have different class folders (" + "; ".join(parts) + ")",
        key="data.val",
        suggestion=f"add the missing class folders to {val_dir} or the train folder, "
        "or restrict both with data.classes",
    )


def list_image_folder(
    folder: Path, classes: Sequence[str], key: str = "data.train"
) -> tuple[list[tuple[str, int]], list[str]]:
    """(path relative to `folder`, class index) for every image, and the class names.

    Files are found recursively below each class folder and kept by extension only (case
    insensitive), so counting never decodes an image. The order is fixed — by class, then
    by path — because the train order is a permutation of positions in this list.
    """
    folder = Path(folder)
    available = class_folders(folder, key)
    if classes:
        _check_known(classes, available)
    names = sorted(classes) if classes else available
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(names):
        files = _images_below(folder / name, key)
        if not files:
            raise RecipeError(
                f"class folder {name!r} in {folder} holds no images (looked for {', '.join(IMG_EXTENSIONS)})",
                key=key,
                suggestion="add images, remove the folder, or leave the class out with data.classes",
            )
        samples.extend((f"{name}/{rel}", index) for rel in files)
    return samples, list(names)


def _images_below(class_dir: Path, key: str = "data.train") -> list[str]:
    """Sorted posix paths, relative to `class_dir`, of the image files below it.

    Symbolic links to folders are followed (datasets are often assembled from links), but
    no real folder is entered twice: a link back to an ancestor, or two links to one
    folder, would otherwise count (and train on) the same images again and again. Folders
    are visited in sorted order, so which of two paths to a folder is kept never varies.
    An unreadable folder is an error that names it, not a silently empty class.
    """

    def unreadable(err: OSError) -> None:
        raise _os_error(err, key)

    found = []
    seen = {os.path.realpath(class_dir)}
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True, onerror=unreadable):
        dirnames.sort()
        fresh = []
        for name in dirnames:
            real = os.path.realpath(os.path.join(dirpath, name))
            if real not in seen:
                seen.add(real)
                fresh.append(name)
        dirnames[:] = fresh
        for filename in filenames:
            if _is_image(filename):
                found.append((Path(dirpath) / filename).relative_to(class_dir).as_posix())
    return sorted(found)


def _os_error(err: OSError, key: str) -> RecipeError:
    """A folder or file the operating system refuses (permissions, I/O) as a user error."""
    where = err.filename or "the data"
    return RecipeError(
        f"cannot read {where}: {err.strerror or err}",
        key=key,
        suggestion="check that the data's folders and files are readable by this user",
    )


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMG_EXTENSIONS)


def augment_ops() -> dict[str, type]:
    """The torchvision.transforms.v2 classes a recipe may name in data.augment."""
    from torchvision.transforms import v2  # start-up time: planning reads the recorded table, not torchvision

    return {
        name: obj
        for name, obj in vars(v2).items()
        if not name.startswith("_")
        and inspect.isclass(obj)
        and issubclass(obj, v2.Transform)
        and obj is not v2.Transform
    }


def signature_record(cls: type) -> dict[str, Any]:
    """What binding keyword arguments needs of a class's signature, as plain data:
    {"params": [[name, required], ...] (keyword-bindable ones), "var_keyword": bool}."""
    params = inspect.signature(cls).parameters.values()
    bindable = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {
        "params": [[p.name, p.default is p.empty] for p in bindable],
        "var_keyword": any(p.kind is p.VAR_KEYWORD for p in params),
    }


def augment_signatures() -> dict[str, dict[str, Any]]:
    """op name -> signature record: from the recorded torchvision table, else from torchvision."""
    recorded = tv_table.table()
    if recorded is not None:
        return recorded.transforms
    return {name: signature_record(cls) for name, cls in augment_ops().items()}


def validate_augment(augment: list[dict], build: bool = True) -> None:
    """Check every augment op exists and its kwargs bind, before any GPU time is spent.

    With `build`, each op is also built once, so a value the transform itself rejects (a
    negative size, a probability of 2) is reported with its key path too. Building needs
    torchvision imported, which `ftcompile plan` and `check` avoid (build=False: names and
    arguments are checked against the recorded signatures) and `run` pays for anyway.
    """
    ops = augment_ops() if build else {}
    signatures = {name: signature_record(cls) for name, cls in ops.items()} if build else augment_signatures()
    for i, entry in enumerate(augment):
        key = f"data.augment[{i}]"
        kwargs = {k: v for k, v in entry.items() if k != "op"}
        name = _augment_name(entry.get("op"), signatures, key)
        _bind_kwargs(name, signatures[name], kwargs, key)
        if not build:
            continue
        try:
            ops[name](**kwargs)
        except (TypeError, ValueError) as err:
            raise RecipeError(
                f"{name}({_format_kwargs(kwargs)}) is invalid: {err}",
                key=key,
                suggestion=f"see the torchvision.transforms.v2.{name} documentation",
            ) from None


def _augment_name(op: Any, signatures: dict[str, Any], key: str) -> str:
    if not isinstance(op, str):
        raise RecipeError(
            'each augment entry needs op = "<torchvision.transforms.v2 class>"',
            key=f"{key}.op",
            suggestion='for example { op = "RandomHorizontalFlip" }',
        )
    if op not in signatures:
        raise RecipeError(
            f"unknown augment op {op!r}: not a torchvision.transforms.v2 transform",
            key=f"{key}.op",
            suggestion=did_you_mean(op, signatures) or "use a class name from torchvision.transforms.v2",
        )
    return op


def _bind_kwargs(name: str, signature: dict[str, Any], kwargs: dict, key: str) -> None:
    valid = [n for n, _ in signature["params"]]
    for arg in kwargs:
        if arg not in valid and not signature["var_keyword"]:
            hint = did_you_mean(arg, valid)
            listing = f"{name} takes: {', '.join(valid) or '(no arguments)'}"
            raise RecipeError(
                f"{name} has no argument {arg!r}",
                key=f"{key}.{arg}",
                suggestion=f"{hint} {listing}" if hint else listing,
            )
    missing = [n for n, required in signature["params"] if required and n not in kwargs]
    if missing:
        raise RecipeError(
            f"{name} needs {', '.join(missing)}",
            key=key,
            suggestion=f'for example {{ op = "{name}", {missing[0]} = ... }}',
        )


def _format_kwargs(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
