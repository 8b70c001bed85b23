"""The compile pipeline end to end: load -> validate -> resolve -> changes -> trace -> plan.

This is where the stages are wired together, so no stage imports the one that calls it:
an upstream recipe named as weights is compiled here, first, and its plan handed to the
resolver.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import ftcompile
from ftcompile import portable
from ftcompile.changes import build_all_changes, param_groups
from ftcompile.errors import RecipeError, RecipeErrors
from ftcompile.load import LoadedRecipe, load_overridden
from ftcompile.metrics import check_available
from ftcompile.options import CompileOptions
from ftcompile.plan import (
    FORMAT,
    Change,
    GroupSpec,
    PhasePlan,
    Plan,
    RecipeRecord,
    RunSpec,
    StopEarlySpec,
    TrialPlan,
    TrialsPlan,
)
from ftcompile.resolve import Resolved, ResolvedPhase, Upstream, resolve
from ftcompile.schema import Recipe, validate
from ftcompile.trace import lr_summary, lr_trace
from ftcompile.tv_table import torchvision_version


@dataclass(frozen=True)
class Compiled:
    plan: Plan
    nominal_data: tuple[str, ...] = ()  # recipe keys of absent data folders given nominal sizes


def locate(err: RecipeError, loaded: LoadedRecipe) -> RecipeError:
    """Give an error raised deep in the pipeline its file and line (or its --set)."""
    for e in err.errors if isinstance(err, RecipeErrors) else [err]:
        e.located(loaded.source_of(e.key), loaded.line_of(e.key) if e.key else None)
    return err


def compile_recipe(
    path: str | Path,
    dataset_size: int | None = None,
    val_size: int | None = None,
    *,
    options: CompileOptions | None = None,
) -> Plan:
    """The plan of a recipe file; `options` (when given) replaces the two sizes."""
    return compile_checked(path, options or CompileOptions(dataset_size, val_size)).plan


def compile_checked(path: str | Path, options: CompileOptions, _chain: tuple[Path, ...] = ()) -> Compiled:
    """The plan, and what could not be checked here (data folders that are absent)."""
    loaded = load_overridden(path, options.overrides)
    try:
        recipe = validate(loaded)
        check_extras(recipe)
        chain = (*_chain, loaded.path.resolve())
        root = options.data_root or loaded.folder
        upstream, upstream_nominal = compile_upstream(recipe.model.weights, loaded.folder, chain, options)
        portable.check_upstream(recipe.run.reproducible, recipe.model.weights, upstream.plan if upstream else None)
        resolved = resolve(
            recipe,
            root,
            options.dataset_size,
            options.val_size,
            upstream,
            nominal=options.nominal_data,
            build_transforms=options.build_transforms,
            needs_data=options.needs_data,
        )
        plan = build_plan(resolved, recipe, loaded.path.name, loaded.source_hash(), options.overrides)
        return Compiled(plan, upstream_nominal + resolved.nominal_data)
    except RecipeError as err:
        raise locate(err, loaded) from None


# Optional features and the package (and extra) each needs: asking without it is a compile error.
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard")}


def check_extras(recipe: Recipe) -> None:
    """`[run] log = ["tensorboard"]` without the tensorboard package fails now, not mid-run."""
    for name in recipe.run.log:
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            if importlib.util.find_spec(module) is None:
                raise RecipeError(
                    f"run.log asks for {name}, but the {module} package is not installed",
                    key="run.log",
                    suggestion=f"pip install 'ftcompile[{extra}]', or remove \"{name}\" from run.log",
                )


def compile_upstream(
    weights: str, folder: Path, chain: tuple[Path, ...], options: CompileOptions
) -> tuple[Upstream | None, tuple[str, ...]]:
    """`weights = "pretrain.toml"`: that recipe's plan (compiled with its own data), or None."""
    if not weights.endswith(".toml"):
        return None, ()
    path = (folder / weights).resolve()
    if not path.is_file():
        raise RecipeError(
            f"upstream recipe not found: {folder / weights}",
            key="model.weights",
            suggestion="the path is relative to this recipe's folder",
        )
    if path in chain:
        raise RecipeError(
            "upstream recipes form a cycle", key="model.weights", suggestion="remove one weights reference"
        )
    relative = os.path.relpath(path.parent, folder.resolve())
    # Its own data, its own recipe: neither the sizes nor the --set of this command apply.
    own = CompileOptions(
        nominal_data=options.nominal_data,
        build_transforms=options.build_transforms,
        data_root=options.data_root / relative if options.data_root else None,
    )
    try:
        compiled = compile_checked(path, own, _chain=chain)
    except RecipeError as err:
        raise RecipeError(f"upstream recipe {weights} fails to compile: {err}", key="model.weights") from None
    return Upstream(compiled.plan, relative), tuple(f"{weights}: {key}" for key in compiled.nominal_data)


def build_plan(
    resolved: Resolved, recipe: Recipe, source_name: str, source_hash: str, overrides: tuple[str, ...] = ()
) -> Plan:
    pgs = param_groups(resolved)
    changes, trial_changes = build_all_changes(resolved, pgs)
    phases = tuple(_phase_plan(ph, recipe, resolved, trial_changes.get(ph.name, [])) for ph in resolved.phases)
    if recipe.run.keep_best:
        check_available(recipe.run.keep_best, resolved.model.num_classes, "run.keep_best", recipe.run.ema is not None)
    draft = Plan(
        format=FORMAT,
        # --set overrides are part of what was compiled (the key is absent without any).
        recipe=RecipeRecord(name=recipe.name, file=source_name, source_hash=source_hash, overrides=overrides),
        versions={"torch": torch.__version__, "torchvision": torchvision_version(), "ftcompile": ftcompile.__version__},
        seed=recipe.seed,
        model=resolved.model,
        data=resolved.data,
        optimizer=resolved.optimizer,
        groups=tuple(GroupSpec(g.name, tuple(g.selectors), g.numel) for g in resolved.groups),
        param_groups=pgs,
        phases=phases,
        changes=changes,
        run=RunSpec(
            **{
                **recipe.run.model_dump(),
                "eval_every": resolved.eval_every,
                "checkpoint_every": resolved.checkpoint_every,
                "bn_modules": resolved.bn_groups,
                "ema": resolved.ema,
            }
        ),
        total_steps=resolved.total_steps,
    )
    final = Plan(**{**_shallow(draft), "phases": tuple(lr_summary(lr_trace(draft), draft))})
    # == plan_hash(final.to_dict()): canonical JSON is unchanged by a JSON round trip.
    return Plan(**{**_shallow(final), "hash": hashlib.sha256(final.canonical_body().encode()).hexdigest()})


def _phase_plan(
    ph: ResolvedPhase, recipe: Recipe, resolved: Resolved, trial_changes: list[tuple[Change, ...]]
) -> PhasePlan:
    """A phase of the plan; its LR windows come from the trace."""
    group_numel = {g.name: g.numel for g in resolved.groups}
    trainable = sum(group_numel[g] for g in ph.train)
    stop_early, restore_best = metric_driven(recipe, ph.name, resolved.model.num_classes)
    return PhasePlan(
        name=ph.name,
        after=ph.after,
        begin=ph.begin,
        end=ph.end,
        epochs=float(ph.epochs),
        train=ph.train,
        trainable_params=trainable,
        trainable_pct=round(100.0 * trainable / max(resolved.model.total_params, 1), 2),
        bn=ph.bn,
        optimizer_state=ph.optimizer_state,
        scheduler=ph.scheduler,
        lr={},
        cache=ph.cache,
        stop_early=stop_early,
        restore_best=restore_best,
        data=ph.data,
        trials=_trials_plan(ph, trial_changes),
    )


def metric_driven(recipe: Recipe, name: str, num_classes: int) -> tuple[StopEarlySpec | None, str | None]:
    """A phase's `stop_early` and `restore_best`, with the metric restore_best compares made
    explicit: stop_early's metric, else run.keep_best's, else val_loss."""
    phase = recipe.phases[name]
    s = phase.stop_early
    if s is not None:
        check_available(s.metric, num_classes, f"phases.{name}.stop_early.metric", recipe.run.ema is not None)
    stop_early = StopEarlySpec(metric=s.metric, patience=s.patience, min_delta=s.min_delta) if s else None
    restore_best = (s.metric if s else recipe.run.keep_best or "val_loss") if phase.restore_best else None
    return stop_early, restore_best


def _trials_plan(ph: ResolvedPhase, changes: list[tuple[Change, ...]]) -> TrialsPlan | None:
    """The alternatives of a trial phase; their LR summaries come from the trace."""
    if ph.trials is None:
        return None
    alts = tuple(
        TrialPlan(k=alt.k, label=alt.label, values=alt.values, train=rp.train, lr={}, changes=alt_changes)
        for (alt, rp), alt_changes in zip(ph.trials.alternatives, changes, strict=False)
    )
    t = ph.trials
    return TrialsPlan(select=t.select, mode=t.mode, keep=t.keep, alternatives=alts, prune=t.prune)


def _shallow(plan: Plan) -> dict[str, Any]:
    return {f: getattr(plan, f) for f in plan.__dataclass_fields__}
