"""The compile pipeline end to end: load -> validate -> resolve -> changes -> trace -> plan.

This is where the stages are wired together, so no stage imports the one that calls it:
an upstream recipe named as weights is compiled here, first, and its plan handed to the
resolver.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcompile import portable
from ftcompile.changes import build_all_changes, param_groups
from ftcompile.errors import RecipeError, RecipeErrors
from ftcompile.load import LoadedRecipe, load_overridden
from ftcompile.metrics import check_available
from ftcompile.plan import (
    FORMAT,
    Change,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    PhasePlan,
    Plan,
    RunSpec,
    TrialPlan,
    TrialsPlan,
    WeightsSpec,
)
from ftcompile.resolve import Resolved, ResolvedPhase, resolve
from ftcompile.schema import Recipe, validate
from ftcompile.trace import lr_summary, lr_trace


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
        portable.check_upstream(recipe.run.reproducible, recipe.model.weights, upstream)
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
    import importlib.util

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
) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
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
    plan = {"plan": json.loads(compiled.plan.to_json()), "root": relative}
    return plan, tuple(f"{weights}: {key}" for key in compiled.nominal_data)


def build_plan(
    resolved: Resolved, recipe: Recipe, source_name: str, source_hash: str, overrides: tuple[str, ...] = ()
) -> Plan:
    import torch

    import ftcompile
    from ftcompile.tv_table import torchvision_version

    pgs = param_groups(resolved)
    total = resolved.model["total_params"]
    group_numel = {g.name: g.numel for g in resolved.groups}
    changes, trial_changes = build_all_changes(resolved, pgs)
    phases = tuple(
        PhasePlan(
            name=ph.name,
            after=ph.after,
            begin=ph.begin,
            end=ph.end,
            epochs=float(ph.epochs),
            train=ph.train,
            trainable_params=sum(group_numel[g] for g in ph.train),
            trainable_pct=round(100.0 * sum(group_numel[g] for g in ph.train) / max(total, 1), 2),
            bn=ph.bn,
            optimizer_state=ph.optimizer_state,
            scheduler=ph.scheduler and {"type": ph.scheduler["type"], "args": ph.scheduler["args"]},
            lr={},
            cache=ph.cache,
            **metric_driven(recipe, ph.name, resolved.model["num_classes"]),
            data=ph.data,
            trials=_trials_plan(ph, trial_changes.get(ph.name, [])),
        )
        for ph in resolved.phases
    )
    if recipe.run.keep_best:
        check_available(
            recipe.run.keep_best, resolved.model["num_classes"], "run.keep_best", recipe.run.ema is not None
        )
    draft = Plan(
        format=FORMAT,
        # --set overrides are part of what was compiled (the key is absent without any).
        recipe={
            "name": recipe.name,
            "file": source_name,
            "source_hash": source_hash,
            **({"overrides": list(overrides)} if overrides else {}),
        },
        versions={"torch": torch.__version__, "torchvision": torchvision_version(), "ftcompile": ftcompile.__version__},
        seed=recipe.seed,
        model=ModelSpec(**{**resolved.model, "weights": WeightsSpec(**resolved.model["weights"])}),
        data=DataSpec(**resolved.data),
        optimizer=OptimizerSpec(**resolved.optimizer),
        groups=tuple({"name": g.name, "selectors": list(g.selectors), "numel": g.numel} for g in resolved.groups),
        param_groups=pgs,
        phases=phases,
        changes=changes,
        run=RunSpec(
            **{
                **recipe.run.model_dump(),
                "eval_every": resolved.eval_every,
                "checkpoint_every": resolved.checkpoint_every,
                "bn_modules": resolved.bn_groups,
                **(resolved.run_extra or {}),
            }
        ),
        total_steps=resolved.total_steps,
    )
    final = Plan(**{**_shallow(draft), "phases": tuple(lr_summary(lr_trace(draft), draft))})
    # == plan_hash(final.to_dict()): canonical JSON is unchanged by a JSON round trip.
    return Plan(**{**_shallow(final), "hash": hashlib.sha256(final.canonical_body().encode()).hexdigest()})


def metric_driven(recipe: Recipe, name: str, num_classes: int) -> dict[str, Any]:
    """A phase's `stop_early` and `restore_best`, with the metric restore_best compares made
    explicit: stop_early's metric, else run.keep_best's, else val_loss."""
    phase = recipe.phases[name]
    out: dict[str, Any] = {}
    if phase.stop_early is not None:
        check_available(
            phase.stop_early.metric, num_classes, f"phases.{name}.stop_early.metric", recipe.run.ema is not None
        )
        out["stop_early"] = phase.stop_early.model_dump()
    if phase.restore_best:
        out["restore_best"] = phase.stop_early.metric if phase.stop_early else recipe.run.keep_best or "val_loss"
    return out


def _trials_plan(ph: ResolvedPhase, changes: list[tuple[Change, ...]]) -> TrialsPlan | None:
    """The alternatives of a trial phase; their LR summaries come from the trace."""
    if ph.trials is None:
        return None
    alts = tuple(
        TrialPlan(k=alt.k, label=alt.label, values=alt.values, train=rp.train, lr={}, changes=alt_changes)
        for (alt, rp), alt_changes in zip(ph.trials["alternatives"], changes, strict=False)
    )
    t = ph.trials
    return TrialsPlan(select=t["select"], mode=t["mode"], keep=t["keep"], alternatives=alts, prune=t.get("prune"))


def _shallow(plan: Plan) -> dict[str, Any]:
    return {f: getattr(plan, f) for f in plan.__dataclass_fields__}
