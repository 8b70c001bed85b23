"""Stage 4: resolve a validated recipe against the real model and the counted data.

Selectors become parameter names (model built on the meta device: no memory, no weights),
epochs become optimizer steps (once, here), LR expressions become numbers (`lr_expr`),
scheduler and optimizer arguments are checked against the torch signatures (`torch_args`),
and each phase gets its feature-cache decision (`cache`). An upstream recipe named as
weights arrives already compiled: the pipeline (`compiler`) compiles it first.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ftcompile import arch as archs
from ftcompile import datasets
from ftcompile.batchnorm import check_one_image_batches
from ftcompile.cache import BelowHead, below_head, cacheability
from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.graph import phase_order
from ftcompile.groups import GroupInfo, bn_modules, param_infos, resolve_groups
from ftcompile.load import _looks_like_path
from ftcompile.lr_expr import resolve_lrs
from ftcompile.plan import (
    DataSpec,
    EmaSpec,
    FeatureCacheSpec,
    HeadSpec,
    JSONObject,
    MixSpec,
    ModelSpec,
    OptimizerSpec,
    PhaseData,
    Plan,
    Prune,
    SchedulerSpec,
    WeightsSpec,
)
from ftcompile.schema import Phase, Recipe, parse_duration
from ftcompile.torch_checks import check_optimizer, resolve_scheduler, with_valid
from ftcompile.trials import Alternative, alternatives, check_distinct_resolved, prune_plan
from ftcompile.weights import check_fits, read_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A phase longer than this is a typo (and its LR trace would take hours to compute).
MAX_STEPS = 10**7
# A plan holding more changes than this (each a record in plan.json, kept in memory by the
# compiler and the runtime) is a cadence typo: evaluating or checkpointing every step of a
# long run. 10^6 changes is a plan.json of about 100 MB.
MAX_CHANGES = 10**6


@dataclass(frozen=True)
class ResolvedPhase:
    name: str
    after: tuple[str, ...]
    begin: int
    end: int
    epochs: float
    train: tuple[str, ...]
    lr: dict[str, float]
    weight_decay: dict[str, float]
    momentum: dict[str, float]
    bn: str
    optimizer_state: str
    scheduler: SchedulerSpec | None  # a dict-valued argument holds one value per group
    cache: FeatureCacheSpec
    data: PhaseData | None = None  # the phase's own data (see PhasePlan.data), None: the recipe's
    # With a trials table: its alternatives, each resolved like a phase; the phase's own
    # fields are then those of the first alternative.
    trials: ResolvedTrials | None = None


@dataclass(frozen=True)
class ResolvedTrials:
    """A phase's trials table, resolved: what plan.TrialsPlan is made from."""

    select: str
    mode: str
    keep: str
    alternatives: list[tuple[Alternative, ResolvedPhase]]
    prune: Prune | None


@dataclass(frozen=True)
class Upstream:
    """An upstream recipe named as weights (`weights = "pretrain.toml"`), compiled by the
    pipeline first: its plan, and its folder relative to this recipe's."""

    plan: Plan
    root: str


@dataclass(frozen=True)
class Resolved:
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec
    groups: tuple[GroupInfo, ...]
    no_decay: frozenset[str]
    numels: dict[str, int]
    phases: tuple[ResolvedPhase, ...]
    total_steps: int
    eval_every: int
    checkpoint_every: int
    bn_groups: dict[str, str]  # BatchNorm module name -> group
    keep_checkpoints: str = "boundaries"  # [run] keep_checkpoints; checkpoint_every 0 = "never"
    ema: EmaSpec | None = None  # [run] ema, `every` in steps
    nominal_data: tuple[str, ...] = ()  # keys of absent data folders given nominal sizes (`check`)


# ---------------------------------------------------------------- model


def resolve_weights(arch: str, weights: str, upstream: Upstream | None = None) -> WeightsSpec:
    """A torchvision weights name, a state_dict file, an upstream recipe, or none.

    An upstream recipe (`weights = "pretrain.toml"`) means: the final model.pt of that
    recipe's run; its whole plan is embedded, so the runtime can train it first when no
    finished run of exactly that plan exists, and the hash covers it. `upstream` is that
    recipe compiled by the pipeline.
    """
    if weights.lower() == "none":
        return WeightsSpec(kind="none", value=None)
    valid = archs.valid_weights(arch)
    if weights in valid:
        return WeightsSpec(kind="torchvision", value=weights)
    if weights.endswith(".toml"):
        assert upstream is not None, "the pipeline compiles an upstream recipe before resolving"
        return WeightsSpec(kind="recipe", value=weights, root=upstream.root, plan=json.loads(upstream.plan.to_json()))
    if _looks_like_file(weights):
        return WeightsSpec(kind="file", value=weights)
    raise RecipeError(
        f"{weights!r} is not a weights name for {arch} nor a state_dict file",
        key="model.weights",
        suggestion=with_valid(
            did_you_mean(weights, valid), f'{", ".join(valid)}, a .pt/.pth path, an upstream recipe .toml, or "none"'
        ),
    )


def _looks_like_file(value: str) -> bool:
    """The same test `load` uses to decide that a weights value is a path to rebase."""
    return _looks_like_path(value)


def check_weights_file(weights: WeightsSpec, folder: Path, model: Any, arch: str) -> None:
    """A weights file on this machine is read (names and shapes only) and must fit the
    model, as `run` will require; one that is not here is left to `run` (a plan can be
    compiled where the files are not)."""
    if weights.kind != "file" or weights.value is None:
        return
    path = folder / weights.value
    if not os.path.lexists(path):
        return
    state = read_state(path, map_location="meta", mmap=True)
    check_fits(state, model.state_dict(), archs.aliases(arch, model)["head"], arch, path)


def normalisation(
    arch: str, weights: WeightsSpec, upstream: Upstream | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the upstream recipe's data, or from the torchvision weights' metadata,
    ImageNet statistics otherwise."""
    if weights.kind == "recipe":
        assert upstream is not None
        return tuple(upstream.plan.data.mean), tuple(upstream.plan.data.std)
    if weights.kind == "torchvision" and weights.value is not None:
        return archs.weights_stats(arch, weights.value)
    return IMAGENET_MEAN, IMAGENET_STD


# ---------------------------------------------------------------- the whole recipe


def resolve(
    recipe: Recipe,
    folder: Path,
    dataset_size: int | None = None,
    val_size: int | None = None,
    upstream: Upstream | None = None,
    *,
    nominal: bool = False,
    build_transforms: bool = False,
    needs_data: bool = False,
) -> Resolved:
    """`folder` is where data paths start; `dataset_size`/`val_size` stand in for absent
    folders, `nominal` gives absent folders a nominal size instead (for `check`);
    `needs_data`: the command trains or evaluates (`run`), so an absent folder's hint is where
    to put the data, not the sizes that let `plan` go on without it."""
    m = recipe.model
    archs.check_arch(m.arch)
    weights = resolve_weights(m.arch, m.weights, upstream)
    data = recipe.data.model_dump()
    datasets.validate_augment(data["augment"], build=build_transforms)
    counts, nominal_data = _counts(data, folder, dataset_size, val_size, m.num_classes, nominal, needs_data)
    class_names = list(counts.class_names)
    num_classes = _num_classes(m.num_classes, class_names)
    head = HeadSpec.of(m.head.model_dump()) if m.head else None
    model = _meta_model(m.arch, num_classes, head, m.builder_args)
    check_weights_file(weights, folder, model, m.arch)
    opt = recipe.optimizer
    check_optimizer(opt.type, opt.kwargs)
    params = param_infos(model, opt.no_decay)
    modules = [n for n, _ in model.named_modules() if n]
    groups_spec = recipe.groups or {"head": ["head"], "backbone": ["backbone"]}
    groups = resolve_groups(groups_spec, params, archs.aliases(m.arch, model), modules)
    group_names = [g.name for g in groups]
    owner = {p: g.name for g in groups for p in g.params}
    below = below_head(model, archs.aliases(m.arch, model)["head"], groups)

    spe = steps_per_epoch(counts.train_size, data["batch_size"], data["drop_last"], "data.batch_size")
    check_accumulate(data["batch_size"], recipe.run.accumulate, "data.batch_size")
    segments = DataSegments(data, counts.train_size, recipe.run.accumulate, build_transforms)
    phases = _resolve_phases(recipe, segments, group_names, below, num_classes)
    step = phases[-1].end if phases else 0
    eval_every = parse_duration(recipe.run.eval_every, spe)
    checkpoint_every = 0 if recipe.run.checkpoint_every == "never" else parse_duration(recipe.run.checkpoint_every, spe)
    check_plan_size(phases, eval_every, checkpoint_every, len(groups), len(params))
    bn_groups = {mod: owner[first] for mod, first in bn_modules(model) if first in owner}
    check_one_image_batches(
        lambda: archs.build_model(m.arch, num_classes, head, device="meta", builder_args=m.builder_args),
        phases,
        bn_groups,
        data["image_size"],
        spe,
        counts.train_size,
        data["batch_size"],
        data["drop_last"],
    )
    if m.head_weights == "load":
        check_head_weights(m.arch, model, weights, folder, upstream)
    run = recipe.run
    mean, std = normalisation(m.arch, weights, upstream)
    model_info = ModelSpec(
        arch=m.arch,
        weights=weights,
        num_classes=num_classes,
        head=head,
        total_params=sum(p.numel for p in params),
        builder_args=dict(m.builder_args),
        head_weights=m.head_weights,
    )
    data.update(
        train_size=counts.train_size,
        val_size=counts.val_size,
        class_names=class_names,
        class_counts=list(counts.class_counts),
        steps_per_epoch=spe,
        mean=list(mean),
        std=list(std),
        **datasets.split_plan_fields(data, folder),  # data.val = { split }: the file lists, in the hash
    )
    return Resolved(
        model=model_info,
        data=DataSpec.from_json(data),
        optimizer=OptimizerSpec(
            type=opt.type,
            kwargs=opt.kwargs,
            no_decay=opt.no_decay,
            clip_grad_norm=opt.clip_grad_norm,
            clip_grad_value=opt.clip_grad_value,
        ),
        groups=groups,
        no_decay=frozenset(p.name for p in params if p.no_decay),
        numels={p.name: p.numel for p in params},
        phases=tuple(phases),
        total_steps=step,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        bn_groups=bn_groups,
        keep_checkpoints=recipe.run.keep_checkpoints,
        ema=EmaSpec(decay=run.ema.decay, every=parse_duration(run.ema.every, spe), warmup=run.ema.warmup)
        if run.ema
        else None,
        nominal_data=nominal_data,
    )


def _num_classes(wanted: int | str, class_names: list[str]) -> int:
    """`model.num_classes` checked against the data ("auto": one per class folder)."""
    num_classes = wanted if isinstance(wanted, int) else len(class_names)  # "auto"
    if num_classes < len(class_names):
        raise RecipeError(
            f"num_classes = {num_classes} but the data has {len(class_names)} classes",
            key="model.num_classes",
            suggestion=f'set num_classes = {len(class_names)} or "auto"',
        )
    if num_classes < 2:
        raise RecipeError(
            "a classifier needs at least 2 classes", key="model.num_classes", suggestion="add class folders"
        )
    return num_classes


def _meta_model(arch: str, num_classes: int, head: HeadSpec | None, builder_args: JSONObject) -> Any:
    """The model with the recipe's head on the meta device; a builder's refusal is a recipe error."""

    check_builder_args(arch, builder_args)
    try:
        model = _quiet_build(arch, num_classes, head, builder_args)
    except _BUILD_ERRORS as exc:  # e.g. a Linear too large to exist, groups = 0
        raise _build_error(arch, num_classes, head, builder_args, exc) from None
    empty = next((name for name, p in model.named_parameters() if p.numel() == 0), None)
    if empty is not None and builder_args:  # e.g. width_per_group = 0: layers of no width
        raise RecipeError(
            f"with these arguments {arch} has a layer of width 0 ({empty})",
            key=_blamed_builder_arg(arch, num_classes, head, builder_args),
            suggestion="give the builder argument a positive value, or leave it out",
        )
    return model


# What a torchvision builder raises for arguments it cannot build with (a wrong type, groups = 0,
# a negative width, a config object that TOML cannot write).
_BUILD_ERRORS = (
    TypeError,
    RuntimeError,
    ValueError,
    OverflowError,
    AssertionError,
    AttributeError,
    ZeroDivisionError,
    IndexError,
    KeyError,
)


def _quiet_build(arch: str, num_classes: int, head: HeadSpec | None, builder_args: JSONObject) -> Any:
    """compile_model without torch's warning about zero-element tensors (reported below instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return archs.compile_model(arch, num_classes, head, builder_args)


def _builds(arch: str, num_classes: int, head: HeadSpec | None, builder_args: JSONObject) -> bool:
    try:
        model = _quiet_build(arch, num_classes, head, builder_args)
    except _BUILD_ERRORS:
        return False
    return all(p.numel() > 0 for p in model.parameters())


def _blamed_builder_arg(arch: str, num_classes: int, head: HeadSpec | None, builder_args: JSONObject) -> str:
    """model.builder_args.<name> when that argument alone stops the build, else model.builder_args."""
    if len(builder_args) > 1:
        for name, value in builder_args.items():
            if not _builds(arch, num_classes, head, {name: value}):
                return f"model.builder_args.{name}"
    return f"model.builder_args.{next(iter(builder_args))}" if len(builder_args) == 1 else "model.builder_args"


def _build_error(
    arch: str, num_classes: int, head: HeadSpec | None, builder_args: JSONObject, exc: Exception
) -> RecipeError:
    """The builder's refusal, blamed on the key that causes it: the builder arguments when the
    model builds without them (so a --set of one is named), else the head or num_classes."""

    if builder_args and _builds(arch, num_classes, head, {}):
        key = _blamed_builder_arg(arch, num_classes, head, builder_args)
        name = key.removeprefix("model.builder_args").lstrip(".")
        what = f"{name} = {builder_args[name]!r}" if name else "these model.builder_args together"
        return RecipeError(
            f"torchvision's {arch} builder cannot build with {what}: {exc or type(exc).__name__}",
            key=key,
            suggestion=f"give {name or 'them'} another value or leave {'it' if name else 'one'} out "
            f"(see the documentation of torchvision.models.{arch})",
        )
    return RecipeError(
        f"torchvision cannot build {arch} with {num_classes} classes and this head: {exc or type(exc).__name__}",
        key="model.head" if head else "model.num_classes",
        suggestion="check model.num_classes and the widths in model.head",
    )


def _resolve_phases(
    recipe: Recipe, segments: DataSegments, group_names: list[str], below: BelowHead, num_classes: int
) -> list[ResolvedPhase]:
    """Every phase in graph order, each starting where the one before ends (with its trials,
    its own data and the feature-cache decision that data allows)."""
    order = phase_order({name: list(p.after) for name, p in recipe.phases.items()})
    phases: list[ResolvedPhase] = []
    step = 0
    for name in order:
        ph_data, ph_spe = segments.enter(name, recipe.phases[name], step)
        augment = ph_data.augment if ph_data else segments.augment
        mix = ph_data.mix if ph_data else segments.mix
        resolved = resolve_trials(
            name,
            recipe.phases[name],
            step,
            ph_spe,
            group_names,
            below,
            augment,
            num_classes,
            recipe.run.ema is not None,
        )
        if mix is not None:
            resolved = replace(resolved, cache=no_cache_with_mix(resolved.cache))
        phases.append(replace(resolved, data=ph_data))
        step = phases[-1].end
    return phases


def _scheduler(resolved: dict[str, Any] | None) -> SchedulerSpec | None:
    return SchedulerSpec(type=resolved["type"], args=resolved["args"]) if resolved else None


def check_plan_size(
    phases: list[ResolvedPhase], eval_every: int, checkpoint_every: int, n_groups: int, n_params: int
) -> None:
    """Count the changes before making them: a bound on the plan's size, not a MemoryError."""
    evals = sum(-(-(ph.end - ph.begin) // eval_every) for ph in phases)
    # checkpoint_every 0 ("never"): at most one per phase end
    ckpts = sum(-(-(ph.end - ph.begin) // checkpoint_every) if checkpoint_every else 1 for ph in phases)
    param_groups = min(2 * n_groups, n_params)  # each group: a decayed and a no-decay part
    # per phase at most: phase, features, scheduler; (un)freeze and bn per group; 3 sets and a reset per param group
    total = evals + ckpts + len(phases) * (3 + 2 * n_groups + 4 * param_groups)
    if total > MAX_CHANGES:
        key = "run.eval_every" if evals >= ckpts else "run.checkpoint_every"
        raise RecipeError(
            f"the plan would hold about {total:,} changes ({evals:,} evaluations, {ckpts:,} checkpoints over "
            f"{phases[-1].end:,} steps), more than {MAX_CHANGES:,}",
            key=key,
            suggestion='evaluate and checkpoint less often, e.g. "1 epoch" or "1000 steps"',
        )


def resolve_phase(
    name: str,
    phase: Phase,
    begin: int,
    spe: int,
    group_names: list[str],
    below: BelowHead,
    augment: list[dict[str, Any]],
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
    length = max(1, round(phase.epochs * spe) if phase.epochs is not None else phase.steps or 0)
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
        scheduler=_scheduler(resolve_scheduler(name, phase, length, spe, lrs)),
        cache=cacheability(phase, below, augment),
    )


# `check` without the data: a train set of this many full batches. Big enough that every
# duration of "0.01 epoch" or more is at least one step, small enough to trace quickly.
NOMINAL_BATCHES = 100


# ---------------------------------------------------------------- training knobs


def steps_per_epoch(train_size: int, batch_size: int, drop_last: bool, key: str) -> int:
    spe = (train_size // batch_size) if drop_last else math.ceil(train_size / batch_size)
    if spe < 1:
        raise RecipeError(
            f"{train_size} training images give no full batch of {batch_size}",
            key=key,
            suggestion="lower batch_size or set drop_last = false",
        )
    return spe


def check_accumulate(batch_size: int, accumulate: int, key: str) -> None:
    """Each optimizer step's batch splits into `accumulate` equal micro-batches (the runtime
    checks it again times the number of processes, which is known only there)."""
    if batch_size % accumulate:
        raise RecipeError(
            f"batch_size {batch_size} does not split into run.accumulate = {accumulate} equal micro-batches",
            key=key,
            suggestion=f"use a multiple of {accumulate}, e.g. {batch_size - batch_size % accumulate or accumulate}",
        )


@dataclass(frozen=True)
class SegmentData:
    """What per-phase data overrides may change: a new value starts a new data segment."""

    image_size: int
    batch_size: int
    augment: list[JSONObject]
    mix: MixSpec | None

    @staticmethod
    def of(table: dict[str, Any]) -> SegmentData:
        mix = table["mix"]
        return SegmentData(table["image_size"], table["batch_size"], table["augment"], MixSpec(**mix) if mix else None)


class DataSegments:
    """Per-phase data overrides cut the run into segments of equal data (size, batch, augment,
    mix). Inside a segment the epochs run on across phases, as without overrides; a new
    segment starts a fresh epoch, numbered after the last one the previous segment began.
    A phase in the recipe's own data from step 0 has no data of its own (None), so recipes
    without overrides plan and run exactly as before."""

    def __init__(self, data: dict[str, Any], train_size: int, accumulate: int, build: bool = False) -> None:
        self.build = build  # build each augment op (imports torchvision: `run`), else check signatures
        self.base = SegmentData.of(data)
        self.drop_last, self.train_size, self.accumulate = bool(data["drop_last"]), train_size, accumulate
        self.config, self.begin, self.epoch_base = self.base, 0, 0
        self.spe = steps_per_epoch(train_size, self.base.batch_size, self.drop_last, "data.batch_size")

    @property
    def augment(self) -> list[JSONObject]:
        """The recipe's own [data] augment."""
        return self.base.augment

    @property
    def mix(self) -> MixSpec | None:
        return self.base.mix

    def enter(self, name: str, phase: Phase, step: int) -> tuple[PhaseData | None, int]:
        """The phase's own data (or None) and its steps per epoch."""
        config = self.base
        if phase.data is not None:
            over = phase.data.model_dump(exclude_none=True)
            if "augment" in over:
                try:
                    datasets.validate_augment(over["augment"], build=self.build)
                except RecipeError as err:
                    raise RecipeError(err.message, key=f"phases.{name}.{err.key}", suggestion=err.suggestion) from None
            if "mix" in over:
                over["mix"] = MixSpec(**over["mix"]) if over["mix"] is not False else None
            config = replace(config, **over)
        if config != self.config:
            key = f"phases.{name}.data.batch_size"
            self.epoch_base += math.ceil((step - self.begin) / self.spe)
            self.config, self.begin = config, step
            self.spe = steps_per_epoch(self.train_size, config.batch_size, self.drop_last, key)
            check_accumulate(config.batch_size, self.accumulate, key)
        if self.begin == 0 and self.config == self.base:
            return None, self.spe
        c = self.config
        return PhaseData(
            image_size=c.image_size,
            batch_size=c.batch_size,
            augment=c.augment,
            mix=c.mix,
            steps_per_epoch=self.spe,
            data_begin=self.begin,
            epoch_base=self.epoch_base,
        ), self.spe


def no_cache_with_mix(cache: FeatureCacheSpec) -> FeatureCacheSpec:
    """MixUp / CutMix blend the images themselves: cached features of unmixed images are not them."""
    if not cache.on:
        return cache
    return replace(cache, on=False, why="batch-level mixing (data.mix) needs the images")


def check_builder_args(arch: str, args: dict[str, Any]) -> None:
    if not args:
        return
    valid = archs.builder_arg_names(arch)
    for name in args:
        if name not in valid:
            raise RecipeError(
                f"{arch}'s builder has no argument {name!r}",
                key=f"model.builder_args.{name}",
                suggestion=with_valid(did_you_mean(name, valid), ", ".join(valid) or "(none)"),
            )
        value = args[name]
        # The compiler builds the model from the recorded table with these (no torchvision
        # call to reject a bad value), so it checks them as the builder would.
        if name in ("dropout", "attention_dropout", "stochastic_depth_prob") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise RecipeError(
                f"model.builder_args.{name} = {value!r} is not a probability",
                key=f"model.builder_args.{name}",
                suggestion="a number from 0 to 1, e.g. 0.1",
            )
        if name in ("zero_init_residual", "init_weights") and not isinstance(value, bool):
            raise RecipeError(
                f"model.builder_args.{name} = {value!r} is not true or false",
                key=f"model.builder_args.{name}",
                suggestion="true or false",
            )


def check_head_weights(
    arch: str, model: Any, weights: WeightsSpec, folder: Path, upstream: Upstream | None = None
) -> None:
    """`head_weights = "load"`: the weights' head tensors must have the recipe's head shapes."""
    if weights.kind not in ("file", "recipe"):
        raise RecipeError(
            f'head_weights = "load" needs weights from a file or an upstream recipe, not {weights.kind}',
            key="model.head_weights",
            suggestion='use head_weights = "new" (torchvision weights carry the ImageNet head)',
        )
    head = archs.aliases(arch, model)["head"]
    in_head = lambda k: any(k == h or k.startswith(h + ".") for h in head)  # noqa: E731
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if in_head(k)}
    if weights.kind == "file":
        theirs = _file_shapes(folder / str(weights.value))
        source = str(weights.value)
    else:
        assert upstream is not None
        up = upstream.plan.model
        upstream_model = archs.compile_model(up.arch, up.num_classes, up.head, up.builder_args)
        theirs = {k: tuple(v.shape) for k, v in upstream_model.state_dict().items()}
        source = f"the model of {weights.value}"
    for k, shape in ours.items():
        if k not in theirs:
            raise RecipeError(
                f"{source} has no head tensor {k} (the recipe's head needs {shape})",
                key="model.head_weights",
                suggestion='use head_weights = "new", or the same model.head',
            )
        if theirs[k] != shape:
            raise RecipeError(
                f"head tensor {k} is {theirs[k]} in {source} but {shape} in the recipe's head",
                key="model.head_weights",
                suggestion='use head_weights = "new" for other classes, or match model.num_classes / model.head',
            )


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if not path.is_file():
        raise RecipeError(
            f"file not found: {path}", key="model.weights", suggestion="the path is relative to the recipe's folder"
        )
    try:
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception as exc:
        raise RecipeError(f"{path} is not a plain state_dict ({type(exc).__name__})", key="model.weights") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def resolve_trials(
    name: str,
    phase: Phase,
    begin: int,
    spe: int,
    group_names: list[str],
    below: BelowHead,
    augment: list[dict[str, Any]],
    num_classes: int,
    ema: bool = False,
) -> ResolvedPhase:
    """A phase, or with a trials table each of its alternatives resolved exactly like a phase."""
    if phase.trials is None:
        return resolve_phase(name, phase, begin, spe, group_names, below, augment)
    resolved = []
    for alt in alternatives(name, phase, num_classes, ema):
        try:
            resolved.append((alt, resolve_phase(name, alt.phase, begin, spe, group_names, below, augment)))
        except RecipeError as err:
            raise RecipeError(
                f"{err.message} (trial alternative {alt.k}: {alt.label})", key=err.key, suggestion=err.suggestion
            ) from None
    check_distinct_resolved(name, resolved)
    t, first = phase.trials, resolved[0][1]
    prune = prune_plan(name, phase, first.begin, first.end, len(resolved))
    return replace(
        first, trials=ResolvedTrials(select=t.select, mode=t.mode, keep=t.keep, alternatives=resolved, prune=prune)
    )


def _counts(
    data: dict[str, Any],
    folder: Path,
    train_size: int | None,
    val_size: int | None,
    num_classes: int | str,
    nominal: bool = False,
    needs_data: bool = False,
) -> tuple[Any, tuple[str, ...]]:
    """Count the data; a folder that is absent takes the size given on the command line
    (or, for `check`, a nominal one). Returns the counts and the keys given nominal sizes."""
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
            _absent_error(data, folder, key, needs_data)
    present = {key: datasets.count_folder(data, folder, key) for key in sizes if key not in absent and data[key[5:]]}
    if "data.train" in present:
        names, counts = present["data.train"]
    else:
        names = present["data.val"][0] if present else _names_without_data(data, num_classes, nominal)
        counts = (0,) * len(names)
    size = {key: sum(present[key][1]) if key in present else sizes[key] or 0 for key in sizes}
    return datasets.DataCounts(size["data.train"], size["data.val"], tuple(names), tuple(counts)), tuple(used)


def _absent_error(data: dict[str, Any], folder: Path, key: str, needs_data: bool = False) -> None:
    """The absent folder's own error, with the way to go on: for `plan` and `check`, sizes
    that stand in for the data; for `run`, which needs the images, where they may be."""
    try:
        datasets.count_folder(data, folder, key)
    except RecipeError as err:
        err.suggestion = (
            f"{err.suggestion}, or give --data-root DIR, the folder they are relative to"
            if needs_data
            else f"{err.suggestion}; without the data here: --dataset-size N --val-size M"
        )
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
