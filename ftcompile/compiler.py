"""The compile pipeline end to end: load -> validate -> resolve -> changes -> trace -> plan.

This is where the stages are wired together, so no stage imports the one that calls it:
an upstream recipe named as weights is compiled here, first, and its plan handed to the
resolver.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ftcompile.changes import build_changes, param_groups
from ftcompile.errors import RecipeError, RecipeErrors
from ftcompile.load import LoadedRecipe, load_recipe
from ftcompile.plan import FORMAT, DataSpec, ModelSpec, OptimizerSpec, PhasePlan, Plan, RunSpec, WeightsSpec
from ftcompile.resolve import Resolved, resolve
from ftcompile.schema import Recipe, validate
from ftcompile.trace import lr_summary, lr_trace


def locate(err: RecipeError, loaded: LoadedRecipe) -> RecipeError:
    """Give an error raised deep in the pipeline its file and line."""
    for e in err.errors if isinstance(err, RecipeErrors) else [err]:
        e.located(loaded.path, loaded.line_of(e.key) if e.key else None)
    return err


def compile_recipe(
    path: str | Path, dataset_size: int | None = None, val_size: int | None = None, _chain: tuple[Path, ...] = ()
) -> Plan:
    loaded = load_recipe(path)
    try:
        recipe = validate(loaded)
        chain = (*_chain, loaded.path.resolve())
        upstream = compile_upstream(recipe.model.weights, loaded.folder, chain)
        resolved = resolve(recipe, loaded.folder, dataset_size, val_size, upstream)
        return build_plan(resolved, recipe, loaded.path.name, loaded.source_hash())
    except RecipeError as err:
        raise locate(err, loaded) from None


def compile_upstream(weights: str, folder: Path, chain: tuple[Path, ...]) -> dict[str, Any] | None:
    """`weights = "pretrain.toml"`: that recipe's plan (compiled with its own data), or None."""
    if not weights.endswith(".toml"):
        return None
    path = (folder / weights).resolve()
    if not path.is_file():
        raise RecipeError(f"upstream recipe not found: {folder / weights}", key="model.weights",
                          suggestion="the path is relative to this recipe's folder")
    if path in chain:
        raise RecipeError("upstream recipes form a cycle", key="model.weights", suggestion="remove one weights reference")
    try:
        plan = compile_recipe(path, _chain=chain)
    except RecipeError as err:
        raise RecipeError(f"upstream recipe {weights} fails to compile: {err}", key="model.weights") from None
    return {"plan": json.loads(plan.to_json()), "root": os.path.relpath(path.parent, folder.resolve())}


def build_plan(resolved: Resolved, recipe: Recipe, source_name: str, source_hash: str) -> Plan:
    import torch
    import torchvision

    import ftcompile

    pgs = param_groups(resolved)
    total = resolved.model["total_params"]
    group_numel = {g.name: g.numel for g in resolved.groups}
    changes = build_changes(resolved, pgs)
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
        )
        for ph in resolved.phases
    )
    draft = Plan(
        format=FORMAT,
        recipe={"name": recipe.name, "file": source_name, "source_hash": source_hash},
        versions={"torch": torch.__version__, "torchvision": torchvision.__version__, "ftcompile": ftcompile.__version__},
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
            }
        ),
        total_steps=resolved.total_steps,
    )
    final = Plan(**{**_shallow(draft), "phases": tuple(lr_summary(lr_trace(draft), draft))})
    # == plan_hash(final.to_dict()): canonical JSON is unchanged by a JSON round trip.
    return Plan(**{**_shallow(final), "hash": hashlib.sha256(final.canonical_body().encode()).hexdigest()})


def _shallow(plan: Plan) -> dict[str, Any]:
    return {f: getattr(plan, f) for f in plan.__dataclass_fields__}
