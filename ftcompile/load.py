"""Stage 1: TOML text -> merged dict, with a map from key paths to line numbers.

`extends` is resolved here, before validation, so the schema only ever sees one recipe.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ftcompile.errors import RecipeError
from ftcompile.keylines import key_lines, line_in
from ftcompile.overrides import Override, apply_overrides, parse_override

# Keys whose values are paths relative to the recipe that holds them.
PATH_KEYS = (("data", "train"), ("data", "val"), ("model", "weights"))


@dataclass
class LoadedRecipe:
    """A recipe file after `extends` merging: raw data plus where each key came from."""

    path: Path
    data: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()  # --set, already applied to `data`

    @property
    def folder(self) -> Path:
        return self.path.parent

    def source_of(self, key: str | None) -> str:
        """Where the value at `key` came from: the file, or the file and the --set that replaced it."""
        for o in reversed(self.overrides):
            if o.covers(key):
                return f"{self.path} {o.where}"
        return str(self.path)

    def line_of(self, key: str) -> int | None:
        """Line of a key path, or of its nearest enclosing key that has one (none for a --set value)."""
        if any(o.covers(key) for o in self.overrides):
            return None
        return line_in(self.lines, key)

    def source_hash(self) -> str:
        """Hash of the merged content: comments and key order do not change it."""
        return hashlib.sha256(canonical_json(self.data).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
# A base recipe that extends another that extends another ... this deep is a mistake (or a
# generated chain); each level is read, parsed and merged, so the depth is bounded.
MAX_EXTENDS_DEPTH = 32
# Tables and arrays nested deeper than this are no recipe; later stages (merge, validation,
# the canonical JSON of the hash) walk values recursively, so the depth is bounded here.
MAX_NESTING = 32


# How recipe files are decoded, everywhere one is read: UTF-8, and a byte-order mark (which
# Windows editors write) is not part of the text; tomllib would call it an invalid statement.
RECIPE_ENCODING = "utf-8-sig"


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding=RECIPE_ENCODING)
    except FileNotFoundError:
        raise RecipeError("file not found", file=path, suggestion="check the path to the recipe") from None
    except IsADirectoryError:
        raise RecipeError(
            "is a folder, not a recipe file", file=path, suggestion="give the path of a recipe (a .toml file)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read the file: {exc}", file=path) from None
    try:
        return tomllib.loads(text), text
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise RecipeError(
            "arrays or inline tables are nested too deeply to read",
            file=path,
            suggestion="a recipe nests a few levels at most; flatten the values",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        pos = _TOML_POS.search(msg)
        line = int(pos.group(1)) if pos else None
        col = pos.group(2) if pos else None
        clean = _TOML_POS.sub("", msg).strip()
        where = f" (line {line}, column {col})" if pos else ""
        raise RecipeError(
            f"TOML syntax error{where}: {clean}",
            file=path,
            line=line,
            suggestion="fix the TOML syntax; strings need quotes, tables need [brackets]",
        ) from None


def _check_nesting(data: dict[str, Any], path: Path, lines: dict[str, int]) -> None:
    """Refuse values nested deeper than MAX_NESTING, naming the first key path that is."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_NESTING:
            top = key.split(".")[0].split("[")[0]
            raise RecipeError(
                f"values nested more than {MAX_NESTING} levels deep",
                file=path,
                key=key,
                line=lines.get(top),
                suggestion="a recipe nests a few levels at most; flatten the value",
            )
        if isinstance(value, dict):
            stack += [(v, f"{key}.{k}" if key else str(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child over base: tables merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _rebase_paths(data: dict[str, Any], src: Path, dst: Path) -> None:
    """Make a base recipe's relative paths relative to the child's folder."""
    for section, key in PATH_KEYS:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if not isinstance(value, str) or os.path.isabs(value):
            continue
        if key == "weights" and not _looks_like_path(value):
            continue
        data[section][key] = os.path.relpath(src / value, dst)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def load_recipe(path: str | Path, _chain: tuple[Path, ...] = ()) -> LoadedRecipe:
    """Read a recipe and everything it extends, merged into one dict."""
    path = Path(path)
    real = path.resolve()
    if real in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, real))
        raise RecipeError(f"extends cycle: {cycle}", file=path, key="extends", suggestion="remove one of the extends")
    data, text = read_toml(path)
    lines = key_lines(text)
    _check_nesting(data, path, lines)
    parent = data.pop("extends", None)
    if parent is None:
        return LoadedRecipe(path, data, lines)
    if not isinstance(parent, str):
        raise RecipeError("must be a path string", file=path, key="extends", line=lines.get("extends"))
    base_path = path.parent / parent
    if not base_path.is_file():
        what = (
            "is a folder, not a recipe file"
            if base_path.is_dir()
            else "is not a regular file"
            if base_path.exists()
            else "not found"
        )
        raise RecipeError(
            f"base recipe {base_path} {what}",
            file=path,
            key="extends",
            line=lines.get("extends"),
            suggestion='extends names one recipe file (e.g. extends = "base.toml"), relative to this recipe\'s folder',
        )
    if len(_chain) + 1 >= MAX_EXTENDS_DEPTH:
        raise RecipeError(
            f"the extends chain is longer than {MAX_EXTENDS_DEPTH} recipes"
            + (f" (it starts at {_chain[0].name})" if _chain else ""),
            file=path,
            key="extends",
            line=lines.get("extends"),
            suggestion="merge some of the base recipes into one",
        )
    base = load_recipe(base_path, (*_chain, real))
    base_data = copy.deepcopy(base.data)
    _rebase_paths(base_data, base_path.parent, path.parent)
    return LoadedRecipe(path, deep_merge(base_data, data), lines)


def load_overridden(path: str | Path, overrides: Sequence[str] = ()) -> LoadedRecipe:
    """A recipe as `load_recipe` reads it, with `--set KEY=VALUE` overrides applied in order."""
    loaded = load_recipe(path)
    if not overrides:
        return loaded
    parsed = tuple(parse_override(text) for text in overrides)
    return LoadedRecipe(loaded.path, apply_overrides(loaded.data, parsed), loaded.lines, parsed)
