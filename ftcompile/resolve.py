"""Stage 4: resolve a validated recipe against the real model and the counted data.

Selectors become parameter names (model built on the meta device: no memory, no weights),
epochs become optimizer steps (once, here), LR expressions become numbers (`lr_expr`),
scheduler and optimizer arguments are checked against the torch signatures (`torch_args`),
and each phase gets its feature-cache decision (`cache`). An upstream recipe named as
weights arrives already compiled: the pipeline (`compiler`) compiles it first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcompile.cache import BelowHead, below_head, cacheability
from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.groups import GroupInfo, bn_modules, param_infos, resolve_groups
from ftcompile.lr_expr import resolve_lrs
from ftcompile.schema import Phase, Recipe, parse_duration
from ftcompile.torch_args import with_valid, check_optimizer, resolve_scheduler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A phase longer than this is a typo (and its LR trace would take hours to compute).
MAX_STEPS = 10**7


@dataclass(frozen=True)
class ResolvedPhase:
    name: str
    after: tuple[str, ...]
    begin: int
    end: int
    epochs: float | None
    train: tuple[str, ...]
    lr: dict[str, float]
    weight_decay: dict[str, float]
    momentum: dict[str, float]
    bn: str
    optimizer_state: str
    scheduler: dict[str, Any] | None  # {"type", "args"}; a dict-valued arg holds one value per group
    cache: dict[str, Any]  # {"on": bool, "why": str, "module": head module}


@dataclass(frozen=True)
class Resolved:
    model: dict[str, Any]
    data: dict[str, Any]
    optimizer: dict[str, Any]
    groups: tuple[GroupInfo, ...]
    no_decay: frozenset[str]
    numels: dict[str, int]
    phases: tuple[ResolvedPhase, ...]
    total_steps: int
    eval_every: int
    checkpoint_every: int
    bn_groups: dict[str, str]  # BatchNorm module name -> group
    nominal_data: tuple[str, ...] = ()  # keys of absent data folders given nominal sizes (`check`)




# ---------------------------------------------------------------- model


def resolve_weights(arch: str, weights: str, upstream: dict[str, Any] | None = None) -> dict[str, Any]:
    """A torchvision weights name, a state_dict file, an upstream recipe, or none.

    An upstream recipe (`weights = "pretrain.toml"`) means: the final model.pt of that
    recipe's run; its whole plan is embedded, so the runtime can train it first when no
    finished run of exactly that plan exists, and the hash covers it. `upstream` is that
    plan, compiled by the pipeline: {"plan": plan dict, "root": its folder relative to ours}.
    """
    from ftcompile import arch as archs

    if weights.lower() == "none":
        return {"kind": "none", "value": None}
    valid = archs.valid_weights(arch)
    if weights in valid:
        return {"kind": "torchvision", "value": weights}
    if weights.endswith(".toml"):
        assert upstream is not None, "the pipeline compiles an upstream recipe before resolving"
        return {"kind": "recipe", "value": weights, "root": upstream["root"], "plan": upstream["plan"]}
    if _looks_like_file(weights):
        return {"kind": "file", "value": weights}
    raise RecipeError(
        f"{weights!r} is not a weights name for {arch} nor a state_dict file",
        key="model.weights",
        suggestion=with_valid(did_you_mean(weights, valid), f"{', '.join(valid)}, a .pt/.pth path, an upstream recipe .toml, or \"none\""),
    )


def _looks_like_file(value: str) -> bool:
    """The same test `load` uses to decide that a weights value is a path to rebase."""
    from ftcompile.load import _looks_like_path

    return _looks_like_path(value)


def normalisation(arch: str, weights: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the torchvision weights' metadata, ImageNet statistics otherwise."""
    if weights["kind"] == "recipe":
        data = weights["plan"]["data"]
        return tuple(data["mean"]), tuple(data["std"])
    if weights["kind"] == "torchvision":
        from ftcompile import arch as archs

        return archs.weights_stats(arch, weights["value"])
    return IMAGENET_MEAN, IMAGENET_STD



# ---------------------------------------------------------------- the whole recipe


def resolve(
    recipe: Recipe,
    folder: Path,
    dataset_size: int | None = None,
    val_size: int | None = None,
    upstream: dict[str, Any] | None = None,
    *,
    nominal: bool = False,
    build_transforms: bool = False,
) -> Resolved:
    """`folder` is where data paths start; `dataset_size`/`val_size` stand in for absent
    folders, `nominal` gives absent folders a nominal size instead (for `check`)."""
    from ftcompile import arch as archs
    from ftcompile import datasets
    from ftcompile.graph import phase_order

    m = recipe.model
    archs.check_arch(m.arch)
    weights = resolve_weights(m.arch, m.weights, upstream)
    data = recipe.data.model_dump()
    datasets.validate_augment(data["augment"], build=build_transforms)
    counts, nominal_data = _counts(data, folder, dataset_size, val_size, m.num_classes, nominal)
    class_names = list(counts.class_names)
    num_classes = len(class_names) if m.num_classes == "auto" else m.num_classes
    if num_classes < len(class_names):
        raise RecipeError(
            f"num_classes = {num_classes} but the data has {len(class_names)} classes",
            key="model.num_classes",
            suggestion=f'set num_classes = {len(class_names)} or "auto"',
        )
    if num_classes < 2:
        raise RecipeError("a classifier needs at least 2 classes", key="model.num_classes", suggestion="add class folders")
    head = m.head.model_dump() if m.head else None
    try:
        model = archs.compile_model(m.arch, num_classes, head)
    except (RuntimeError, ValueError, OverflowError) as exc:  # e.g. a Linear too large to exist
        raise RecipeError(
            f"torchvision cannot build {m.arch} with {num_classes} classes and this head: {exc}",
            key="model.head" if head else "model.num_classes",
            suggestion="check model.num_classes and the widths in model.head",
        ) from None
    opt = recipe.optimizer
    check_optimizer(opt.type, opt.kwargs)
    params = param_infos(model, opt.no_decay)
    modules = [n for n, _ in model.named_modules() if n]
    groups_spec = recipe.groups or {"head": ["head"], "backbone": ["backbone"]}
    groups = resolve_groups(groups_spec, params, archs.aliases(m.arch, model), modules)
    group_names = [g.name for g in groups]
    owner = {p: g.name for g in groups for p in g.params}
    below = below_head(model, archs.aliases(m.arch, model)["head"], groups)

    bs = data["batch_size"]
    spe = (counts.train_size // bs) if data["drop_last"] else math.ceil(counts.train_size / bs)
    if spe < 1:
        raise RecipeError(
            f"{counts.train_size} training images give no full batch of {bs}",
            key="data.batch_size",
            suggestion="lower batch_size or set drop_last = false",
        )
    order = phase_order({name: list(p.after) for name, p in recipe.phases.items()})
    phases: list[ResolvedPhase] = []
    step = 0
    for name in order:
        phases.append(resolve_phase(name, recipe.phases[name], step, spe, group_names, below, data["augment"]))
        step = phases[-1].end
    run = recipe.run
    mean, std = normalisation(m.arch, weights)
    model_info = {
        "arch": m.arch,
        "weights": weights,
        "num_classes": num_classes,
        "head": head,
        "total_params": sum(p.numel for p in params),
    }
    data.update(
        train_size=counts.train_size,
        val_size=counts.val_size,
        class_names=class_names,
        class_counts=list(counts.class_counts),
        steps_per_epoch=spe,
        mean=list(mean),
        std=list(std),
    )
    return Resolved(
        model=model_info,
        data=data,
        optimizer={"type": opt.type, "kwargs": opt.kwargs, "no_decay": opt.no_decay},
        groups=groups,
        no_decay=frozenset(p.name for p in params if p.no_decay),
        numels={p.name: p.numel for p in params},
        phases=tuple(phases),
        total_steps=step,
        eval_every=parse_duration(run.eval_every, spe),
        checkpoint_every=parse_duration(run.checkpoint_every, spe),
        bn_groups={mod: owner[first] for mod, first in bn_modules(model) if first in owner},
        nominal_data=nominal_data,
    )



def resolve_phase(
    name: str, phase: Phase, begin: int, spe: int, group_names: list[str], below: BelowHead, augment: list[dict[str, Any]]
) -> ResolvedPhase:
    """One phase, starting at step `begin`: its groups checked, its window, LRs and scheduler."""
    for i, g in enumerate(phase.train):
        if g not in group_names:
            raise RecipeError(
                f"unknown group {g!r}",
                key=f"phases.{name}.train[{i}]",
                suggestion=did_you_mean(g, group_names) or f"groups are: {', '.join(group_names)}",
            )
    for field in ("weight_decay", "momentum"):
        for g in getattr(phase, field):
            if g not in group_names:
                raise RecipeError(
                    f"unknown group {g!r}", key=f"phases.{name}.{field}.{g}", suggestion=did_you_mean(g, group_names)
                )
    length = max(1, int(round(phase.epochs * spe) if phase.epochs is not None else phase.steps))
    if begin + length > MAX_STEPS:
        raise RecipeError(
            f"the run would be {begin + length} optimizer steps long, more than {MAX_STEPS}",
            key=f"phases.{name}.{'epochs' if phase.epochs is not None else 'steps'}",
            suggestion=f"one epoch is {spe} steps; check the phase's length",
        )
    lrs = resolve_lrs(name, phase)
    return ResolvedPhase(
        name=name,
        after=tuple(phase.after),
        begin=begin,
        end=begin + length,
        epochs=phase.epochs if phase.epochs is not None else length / spe,
        train=tuple(phase.train),
        lr=lrs,
        weight_decay=dict(phase.weight_decay),
        momentum=dict(phase.momentum),
        bn=phase.bn,
        optimizer_state=phase.optimizer_state,
        scheduler=resolve_scheduler(name, phase, length, spe, lrs),
        cache=cacheability(phase, below, augment),
    )


# `check` without the data: a train set of this many full batches. Big enough that every
# duration of "0.01 epoch" or more is at least one step, small enough to trace quickly.
NOMINAL_BATCHES = 100


def _counts(
    data: dict[str, Any],
    folder: Path,
    train_size: int | None,
    val_size: int | None,
    num_classes: int | str,
    nominal: bool = False,
) -> tuple[Any, tuple[str, ...]]:
    """Count the data; a folder that is absent takes the size given on the command line
    (or, for `check`, a nominal one). Returns the counts and the keys given nominal sizes."""
    from ftcompile import datasets

    absent = datasets.absent_folders(data, folder)
    if not absent:
        return datasets.count_data(data, folder), ()
    sizes = {"data.train": train_size, "data.val": val_size}
    used = []
    for key in absent:
        if sizes[key] is not None:
            continue
        if nominal:
            sizes[key] = _nominal_size(key, data)
            used.append(key)
        elif key == "data.val" and train_size is not None:
            sizes[key] = 0  # --dataset-size alone: no validation size to show
        else:
            _absent_error(data, folder, key)
    present = {key: datasets.count_folder(data, folder, key) for key in sizes if key not in absent and data[key[5:]]}
    if "data.train" in present:
        names, counts = present["data.train"]
    else:
        names = present["data.val"][0] if present else _names_without_data(data, num_classes, nominal)
        counts = (0,) * len(names)
    size = {key: sum(present[key][1]) if key in present else sizes[key] or 0 for key in sizes}
    return datasets.DataCounts(size["data.train"], size["data.val"], tuple(names), tuple(counts)), tuple(used)


def _absent_error(data: dict[str, Any], folder: Path, key: str) -> None:
    """The absent folder's own error, with the way to plan without it."""
    from ftcompile import datasets

    try:
        datasets.count_folder(data, folder, key)
    except RecipeError as err:
        err.suggestion = f"{err.suggestion}; without the data here: --dataset-size N --val-size M"
        raise
    raise AssertionError(f"{key} is absent but could be counted")


def _nominal_size(key: str, data: dict[str, Any]) -> int:
    return NOMINAL_BATCHES * data["batch_size"] if key == "data.train" else data["batch_size"]


def _names_without_data(data: dict[str, Any], num_classes: int | str, nominal: bool) -> tuple[str, ...]:
    """Class names when no folder is here to list them."""
    if data["classes"]:
        return tuple(sorted(data["classes"]))
    if isinstance(num_classes, int):
        return tuple(str(i) for i in range(num_classes))
    if nominal:
        return ("0", "1")  # `check` only: the head's width is then not checked either
    raise RecipeError(
        'num_classes = "auto" counts class folders, which --dataset-size skips',
        key="model.num_classes",
        suggestion="set model.num_classes to a number, or list data.classes",
    )
