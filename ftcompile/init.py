"""`ftcompile init FOLDER`: a commented recipe written from the data, in the method this
project was built for (docs/recipes.md, "The questions a recipe answers").

The folder is read (`survey`): `train/` + `val/` class folders, or one folder of class
folders that the recipe splits (`data.val = { split = 0.15, seed = 0 }`); the classes, the
images per class, a sample of image sizes, the imbalance. Every image is decoded once, so a
folder `run` could not use fails here, with exit 2: no class folders, one class, unreadable
images, a class with fewer training images than one batch.

The recipe (`render`) then says, line by line, why and what to change: a new head warmed up
on the frozen backbone; the last two blocks unfrozen one at a time, each with trials of the LR
cut below the head; a final phase with layer-wise LR decay and trials of how deep to unfreeze;
evaluation every epoch, best.pt, augmentation, and a weighted sampler when the largest class
has more than 3x the images of the smallest. The model is `--model`, else one chosen from the
data size and the device (`DEFAULT_MODELS`), with torchvision's pretrained weights and the
sizes those weights were evaluated at.

The CLI writes the file (refusing to replace one without --force), compiles it as `check`
would, and for `--lr-find` runs the LR finder on the head phase (that needs the runtime, so
the CLI wires it: this stage never imports it).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import ftcompile
from ftcompile import arch as archs
from ftcompile import datasets
from ftcompile.datasets import Splits
from ftcompile.errors import RecipeError
from ftcompile.images import bad_images_error, image_files, verify_images
from ftcompile.outputs import Kind

# What `init -o` writes, for the output guard (which `init` asks only for what is never
# replaced, --force or not: a folder, a device, a file in a run directory).
RECIPE = Kind("a recipe", lambda path: False)

SPLIT = 0.15  # data.val = { split = SPLIT, seed = 0 } for a folder of class folders
DEFAULT_BATCH = 32  # a stated default: fits these models at 224 px in 8 GB of GPU memory, and a CPU's RAM
IMBALANCE = 3.0  # largest class / smallest class above this: a weighted sampler
HEAD_LR = 1e-3  # AdamW on a new head: a safe start; --lr-find measures one
SIZE_SAMPLE = 200  # image sizes are read (headers only) from this many files, spread over the folder

# (device, at least this many images, arch): the last row that fits is the default model.
DEFAULT_MODELS: tuple[tuple[str, int, str, str], ...] = (
    ("cpu", 0, "resnet18", "11.7M parameters"),
    ("cuda", 0, "resnet50", "25.6M parameters, the usual baseline"),
    ("cuda", 10_000, "convnext_tiny", "28.6M parameters, more accurate with data"),
)


@dataclass(frozen=True)
class Survey:
    """What `init` read from the folder."""

    folder: Path
    train: Path
    val: Path | None  # None: split from `train`
    class_names: tuple[str, ...]
    train_counts: tuple[int, ...]  # images per class on the training side (after the split)
    val_counts: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]  # (width, height) of a sample of the images

    @property
    def train_size(self) -> int:
        return sum(self.train_counts)

    @property
    def val_size(self) -> int:
        return sum(self.val_counts)

    @property
    def imbalance(self) -> float:
        return max(self.train_counts) / max(1, min(self.train_counts))

    def size_text(self) -> str:
        if not self.sizes:
            return "unknown"
        widths, heights = [w for w, _ in self.sizes], [h for _, h in self.sizes]
        med = f"{int(statistics.median(widths))}x{int(statistics.median(heights))}"
        lo, hi = min(self.sizes, key=lambda s: s[0] * s[1]), max(self.sizes, key=lambda s: s[0] * s[1])
        return f"median {med} (from {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}, {len(self.sizes)} sampled)"


def _unusable(message: str, suggestion: str) -> RecipeError:
    return RecipeError(message, key="FOLDER", suggestion=suggestion)


def survey(folder: Path, batch_size: int = DEFAULT_BATCH, verify: bool = True) -> Survey:
    """Read the folder; a RecipeError (exit 2) for every way it cannot make a recipe that runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _unusable(
            f"{folder} is not a folder" if folder.exists() else f"{folder} not found",
            "give a folder of class folders (FOLDER/<class>/<image>), or one with train/ and val/ in it",
        )
    train, val = _layout(folder)
    data: dict[str, Any] = {
        "train": str(train.resolve()),
        "val": str(val.resolve()) if val else {"split": SPLIT, "seed": 0},
        "classes": [],
    }
    try:
        splits = datasets.resolve_splits(data, Path("/"))
    except RecipeError as err:
        raise _unusable(
            err.message, err.suggestion or "use the ImageFolder layout: FOLDER/<class>/<image>.jpg"
        ) from None
    names = splits.class_names
    if len(names) < 2:
        raise _unusable(
            f"{train} holds one class ({names[0]!r}): a classifier needs at least 2",
            "add a folder of images for each other class",
        )
    if verify:
        _verify(splits)
    train_counts, val_counts = _per_class(splits.train, len(names)), _per_class(splits.val, len(names))
    small = [(n, c) for n, c in zip(names, train_counts, strict=False) if c < batch_size]
    if small:
        listed = ", ".join(f"{n!r} {c}" for n, c in small[:10]) + (" ..." if len(small) > 10 else "")
        raise _unusable(
            f"{len(small)} class(es) have fewer training images than one batch of {batch_size}: {listed}",
            f"add images to them, remove those class folders, or give a smaller batch: --batch-size {_fitting(min(c for _, c in small))}",
        )
    return Survey(folder, train, val, tuple(names), train_counts, val_counts, _sizes(splits))


def _layout(folder: Path) -> tuple[Path, Path | None]:
    """FOLDER/train + FOLDER/val when both are there, else FOLDER itself (split)."""
    train, val = folder / "train", folder / "val"
    if train.is_dir() and val.is_dir():
        return train, val
    return folder, None


def _per_class(samples: Sequence[tuple[str, int]], k: int) -> tuple[int, ...]:
    counts = [0] * k
    for _, label in samples:
        counts[label] += 1
    return tuple(counts)


def _fitting(smallest: int) -> int:
    """The largest power of two that is not above `smallest` (at least 1)."""
    return 1 << max(0, smallest.bit_length() - 1)


def _verify(splits: Splits) -> None:
    files = image_files(splits)
    bad = verify_images(files)
    if bad:
        err = bad_images_error(bad, len(files))
        raise _unusable(err.message, err.suggestion or "")


def _sizes(splits: Splits) -> tuple[tuple[int, int], ...]:
    """(width, height) of up to SIZE_SAMPLE images, evenly spread over the listing (headers only)."""
    files = [p for p, _ in image_files(splits)]
    step = max(1, len(files) // SIZE_SAMPLE)
    out = []
    for path in files[::step][:SIZE_SAMPLE]:
        try:
            with Image.open(path) as image:
                out.append(image.size)
        except Exception:  # verified already; a file that changed since is no reason to stop here
            continue
    return tuple(out)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelChoice:
    arch: str
    weights: str  # a torchvision member name, or "none"
    why: str
    resize: int  # the weights' evaluation sizes (224 / 256 for random init)
    crop: int
    stages: tuple[str, ...]  # stage1 .. stageN
    has_stem: bool


def choose_model(arch: str | None, images: int, device: str) -> ModelChoice:
    """`--model` as given, else the default for this many images on this device."""
    if arch is None:
        rows = [r for r in DEFAULT_MODELS if r[0] == device and images >= r[1]]
        _, _, arch, why = rows[-1]
        why = f"for {images} images on a {'GPU' if device == 'cuda' else 'CPU'}: {why}"
    else:
        try:
            archs.check_arch(arch)
        except RecipeError as err:
            raise RecipeError(err.message, key="--model", suggestion=err.suggestion) from None
        why = "--model"
    weights = _pretrained(arch)
    resize, crop = archs.weights_sizes(arch, weights) if weights != "none" else (256, 224)
    names = archs.aliases(arch, archs.compile_model(arch, 2, None))
    stages = tuple(sorted((k for k in names if re.fullmatch(r"stage\d+", k)), key=lambda k: int(k[5:])))
    return ModelChoice(arch, weights, why, resize, crop, stages, bool(names.get("stem")))


def _pretrained(arch: str) -> str:
    """The member torchvision's DEFAULT points at (named, so the recipe says which), or "none"."""
    names = [n for n in archs.valid_weights(arch) if n != "DEFAULT"]
    if not names:
        return "none"
    default = archs.weights_url(arch, "DEFAULT")
    return next((n for n in names if archs.weights_url(arch, n) == default), names[0])


def detect_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- the recipe


def slug(name: str) -> str:
    """A recipe name from a folder name: lower case, runs of other characters as '-'."""
    text = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return text[:64] or "recipe"


COMMENT_COLUMN = 37


def _c(code: str, why: str = "") -> str:
    """`code`, and its comment from COMMENT_COLUMN (one space after a longer line)."""
    return f"{code.ljust(COMMENT_COLUMN - 1)} # {why}" if why else code


def _lr(x: float) -> str:
    """1.0e-3, 3.3e-4: two digits and the exponent (the cuts read as powers of ten)."""
    return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e")


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@dataclass(frozen=True)
class Options:
    """What the command line gives `render` besides the survey and the model."""

    recipe: Path  # where the recipe goes: data paths are written relative to its folder
    image_size: int | None = None  # None: the weights' crop size
    batch_size: int = DEFAULT_BATCH
    head_lr: float = HEAD_LR
    head_lr_note: str = "a safe start for AdamW; `init --lr-find` measures one"
    date: str | None = None  # None: today


def render(s: Survey, m: ModelChoice, o: Options) -> str:
    """The recipe's text: what it was made from, then each table, every value commented."""
    size = o.image_size or m.crop
    return (
        "\n".join(
            [
                *_header(s, o),
                f'name = "{slug(s.folder.resolve().name)}"',
                _c("seed = 0", "the data order, augmentation, the new head's init"),
                "",
                *_model(m),
                *_data(s, o, size, round(size * m.resize / m.crop)),
                *_optimizer(),
                *_groups(m),
                *_phases(m, o.head_lr, o.head_lr_note),
                *_run(),
            ]
        )
        + "\n"
    )


def _header(s: Survey, o: Options) -> list[str]:
    date = o.date or _dt.date.today().isoformat()
    layout = (
        "train/ and val/ folders"
        if s.val is not None
        else f"one folder, split {1 - SPLIT:.0%} / {SPLIT:.0%} per class (data.val)"
    )
    counts = ", ".join(f"{n} {t}+{v}" for n, t, v in zip(s.class_names, s.train_counts, s.val_counts, strict=False))
    if len(counts) > 300:
        counts = counts[:300].rsplit(",", 1)[0] + ", ..."
    return [
        f"# Made by `ftcompile init {s.folder}` on {date}, ftcompile {ftcompile.__version__}.",
        f"# {len(s.class_names)} classes, {s.train_size + s.val_size} images ({s.train_size} train, {s.val_size} val): {layout}.",
        f"# Per class, train+val: {counts}.",
        f"# Largest class / smallest: {s.imbalance:.1f}x. Image sizes: {s.size_text()}.",
        f"#   ftcompile plan {o.recipe.name}    every step, LR and trial, before anything runs",
        f"#   ftcompile run {o.recipe.name}",
        "# Every value is a starting point: its comment says why, and what to change.",
        "",
    ]


def _model(m: ModelChoice) -> list[str]:
    if m.weights != "none":
        weights = _c(f'weights = "{m.weights}"', f"ImageNet's; `ftcompile weights {m.arch}.{m.weights}`")
    else:
        weights = _c('weights = "none"', "torchvision has no pretrained weights for it: from scratch")
    return [
        "[model]",
        _c(f'arch = "{m.arch}"', m.why),
        weights,
        _c('num_classes = "auto"', "one output per class folder"),
        "",
    ]


def _data(s: Survey, o: Options, size: int, val_resize: int) -> list[str]:
    base = o.recipe.resolve().parent
    rel = lambda p: Path(os.path.relpath(p.resolve(), base)).as_posix()  # noqa: E731
    lines = ["[data]", _c(f'train = "{rel(s.train)}"', "relative to this file's folder")]
    if s.val is not None:
        lines.append(f'val = "{rel(s.val)}"')
    else:
        lines.append(
            _c(f"val = {{ split = {SPLIT}, seed = 0 }}", "per class, at compile time; the plan lists the files")
        )
    if s.imbalance > IMBALANCE:
        balance = _c('balance = "sampler"', f"largest class {s.imbalance:.1f}x the smallest: draw them equally")
    else:
        balance = _c('balance = "none"', f'classes within {IMBALANCE:g}x of each other; "sampler" when one is rare')
    return lines + [
        _c(f"image_size = {size}", "the weights' own; a step's time grows with its square"),
        _c(f"val_resize = {val_resize}", "validation: shorter side, then centre crop"),
        _c(f"batch_size = {o.batch_size}", "a default; lower it when memory runs out"),
        _c("workers = 4", "loader processes; results do not depend on it"),
        "augment = [",
        _c(f'  {{ op = "RandomResizedCrop", size = {size}, scale = [0.35, 1.0] }},', "35-100 % of the image"),
        _c('  { op = "RandomHorizontalFlip" },', "remove where left and right differ (text, digits)"),
        _c('  # { op = "TrivialAugmentWide" },', "stronger: small data, long training"),
        "]",
        balance,
        _c("label_smoothing = 0.1", "softer targets: less over-confident"),
        "",
    ]


def _optimizer() -> list[str]:
    return [
        "[optimizer]",
        _c('type = "AdamW"', "forgiving of the LR; SGD (momentum 0.9) may end higher"),
        _c("weight_decay = 0.05", 'biases and norm layers get 0 (no_decay = "auto")'),
        "",
    ]


def _groups(m: ModelChoice) -> list[str]:
    last = list(m.stages[-3:])
    early = (["stem"] if m.has_stem else []) + list(m.stages[:-3])
    lines = [_c("[groups]", "the model in blocks, input to output")]
    if early:
        lines.append(_c(f"early = {_toml_list(early)}", "edges and textures: trained last, if at all"))
    for i, stage in enumerate(last):
        lines.append(
            _c(f'{stage} = ["{stage}"]', "the last block: the most task-specific" if i == len(last) - 1 else "")
        )
    return lines + [_c('head = ["head"]', "the new classifier"), ""]


def _phases(m: ModelChoice, h: float, note: str) -> list[str]:
    """Warm-up; the last two blocks one at a time (trials of the cut); everything with decay
    (trials of the depth). A model of fewer than three stages: warm-up, then everything."""
    lines = [
        "# 1. A new head on the frozen backbone: the pretrained features stay as they are while the",
        "#    random head learns to read them (unfrozen, its large first gradients would disturb them).",
        "[phases.head]",
        'train = ["head"]',
        "epochs = 2",
        _c(f"lr = {{ head = {_lr(h)} }}", note),
        _c('scheduler = { type = "OneCycleLR", pct_start = 0.3 }', "warm up, then anneal"),
        _c('bn = "frozen"', "frozen blocks keep their BatchNorm statistics"),
        "",
    ]
    early = ["early"] if (m.has_stem or len(m.stages) > 3) else []
    if len(m.stages) < 3:
        return lines + [
            "# 2. Everything, with layer-wise LR decay (too few blocks to unfreeze one at a time).",
            "[phases.full]",
            'after = ["head"]',
            f"train = {_toml_list(early + list(m.stages) + ['head'])}",
            "epochs = 4",
            f"lr = {{ head = {_lr(h / 3)} }}",
            "lr_decay = 0.5",
            'scheduler = { type = "OneCycleLR", pct_start = 0.2 }',
            "",
        ]
    third, prev, last = m.stages[-3:]
    shallow, deep = [third, prev, last, "head"], early + [third, prev, last, "head"]
    return lines + [
        "# 2. Unfreeze the last block, at a lower LR than the head. How much lower pays depends on the",
        "#    data: the trials run the phase from the same start once per cut, and the best val top-1",
        "#    goes on (trials.csv lists all). Set the next phases' cuts to match the winner.",
        f"[phases.{last}]",
        'after = ["head"]',
        f'train = ["head", "{last}"]',
        "epochs = 2",
        f'lr = {{ head = {_lr(h / 2)}, {last} = "head / 10" }}',
        'scheduler = { type = "CosineAnnealingLR" }',
        'bn = "frozen"',
        "",
        f"[phases.{last}.trials]",
        _c(f'"lr.{last}" = ["head / 3", "head / 10", "head / 30"]', "3x, 10x, 30x below the head"),
        "",
        "# 3. The block before it, a cut further down.",
        f"[phases.{prev}]",
        f'after = ["{last}"]',
        f'train = ["head", "{last}", "{prev}"]',
        "epochs = 2",
        f'lr = {{ head = {_lr(h / 2)}, {last} = "head / 10", {prev} = "head / 30" }}',
        'scheduler = { type = "CosineAnnealingLR" }',
        'bn = "frozen"',
        "",
        f"[phases.{prev}.trials]",
        f'"lr.{prev}" = ["head / 10", "head / 30", "head / 100"]',
        "",
        "# 4. Everything that pays, with layer-wise LR decay: from the head back along `train`, each",
        "#    group gets the LR of the one after it x lr_decay. The first blocks help on images far",
        "#    from ImageNet and can cost accuracy on small data: the trials try both depths.",
        "[phases.full]",
        f'after = ["{prev}"]',
        f"train = {_toml_list(deep)}",
        "epochs = 4",
        f"lr = {{ head = {_lr(h / 3)} }}",
        _c("lr_decay = 0.5", f"{last} = head x 0.5, {prev} = {last} x 0.5, ..."),
        'scheduler = { type = "OneCycleLR", pct_start = 0.2 }',
        "",
        "[phases.full.trials]",
        f"train = [{_toml_list(shallow)}, {_toml_list(deep)}]" if early else "lr_decay = [0.3, 0.5, 0.7]",
        "",
    ]


def _run() -> list[str]:
    return [
        "[run]",
        _c('device = "auto"', "the GPU when there is one"),
        _c('eval_every = "1 epoch"', "and at each phase end (what the trials compare)"),
        _c('checkpoint_every = "1 epoch"', "`ftcompile resume RUN_DIR` continues from the newest"),
        _c('keep_best = "val_top1"', "best.pt: the best evaluation of the run"),
    ]
