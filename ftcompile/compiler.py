"""The compile pipeline end to end: load -> validate -> resolve -> plan."""

from __future__ import annotations

from pathlib import Path

from ftcompile.errors import RecipeError, RecipeErrors
from ftcompile.load import LoadedRecipe, load_recipe
from ftcompile.plan import Plan, build_plan
from ftcompile.resolve import resolve
from ftcompile.schema import validate


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
        resolved = resolve(recipe, loaded.folder, dataset_size, val_size, (*_chain, loaded.path.resolve()))
        return build_plan(resolved, recipe, loaded.path.name, loaded.source_hash())
    except RecipeError as err:
        raise locate(err, loaded) from None
