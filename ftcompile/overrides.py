"""`--set KEY=VALUE`: change one recipe field from the command line, and write the result back.

KEY is a dotted TOML key into the recipe after `extends` is merged (`phases.layer4.epochs`,
`phases.layer4.lr.layer4`), VALUE is a TOML value (`5`, `"head / 30"`, `[0.5, 1.0]`,
`{ type = "StepLR", step_size = 10 }`). The value replaces what was there (a table is
replaced, not merged), and missing tables on the way are created, so a phase can be added.
The overridden recipe is then validated like the file; an error in it names the `--set`.

A run records the recipe it compiled: with overrides that is no longer the file, so
`to_toml` writes the merged, overridden recipe as TOML (tomllib reads it back equal).
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ftcompile.errors import RecipeError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Override:
    text: str  # as given on the command line, KEY=VALUE
    path: tuple[str, ...]  # the key's parts
    value: Any

    @property
    def where(self) -> str:
        """`--set KEY=VALUE` as messages name it: one line (a newline in a value shows as \\n)."""
        return shown_set(self.text)

    @property
    def key(self) -> str:
        """The key path as error messages spell it (`phases.layer4.epochs`)."""
        return ".".join(self.path)

    def covers(self, key: str | None) -> bool:
        """Whether an error at `key` is about a value this override gave."""
        if not key:
            return False
        return key == self.key or key.startswith((self.key + ".", self.key + "["))


def shown_set(text: str) -> str:
    return f"--set {text}" if text.isprintable() else f"--set {text!r}"


def _split(text: str) -> tuple[str, str]:
    """KEY and VALUE at the first '=' outside quotes (a quoted key may hold '=')."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "=":
            return text[:i].strip(), text[i + 1 :].strip()
    raise RecipeError(
        f"{shown_set(text)}: expected KEY=VALUE",
        key="--set",
        suggestion="for example --set phases.layer4.epochs=5 or --set 'phases.layer4.lr.layer4=\"head / 30\"'",
    )


def parse_override(text: str) -> Override:
    """One `--set KEY=VALUE`, its key and value parsed as TOML."""
    key, raw = _split(text)
    where = shown_set(text)
    try:
        nested = tomllib.loads(f"{key} = 0")
        if "\n" in key or "\r" in key:  # "[run]\nseed" parses, as a table header and a key
            raise tomllib.TOMLDecodeError("a key is one line")
    except tomllib.TOMLDecodeError:
        raise RecipeError(
            f"{key!r} is not a TOML key",
            file=where,
            key="--set",
            suggestion="a dotted key such as phases.layer4.epochs",
        ) from None
    path: list[str] = []
    while isinstance(nested, dict):
        ((name, nested),) = nested.items()
        path.append(name)
    if path[0] == "extends":
        raise RecipeError(
            "extends cannot be set from the command line",
            file=where,
            key="extends",
            suggestion="edit the recipe, or give the other recipe to the command",
        )
    try:
        doc = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(
            f"the value {raw!r} is not TOML ({exc})",
            file=where,
            key=".".join(path),
            suggestion=f"strings need quotes inside the shell's: --set '{key}=\"{raw}\"'",
        ) from None
    if list(doc) != ["v"]:  # `1\n[run]\nseed = 3`: a value, then more TOML that would be dropped
        raise RecipeError(
            f"the value {raw!r} is one TOML value followed by more TOML ({', '.join(k for k in doc if k != 'v')})",
            file=where,
            key=".".join(path),
            suggestion="a --set value is exactly one TOML value; give each field its own --set KEY=VALUE",
        )
    return Override(text, tuple(path), doc["v"])


def apply_overrides(data: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """A copy of `data` with every override set, in order."""
    out = copy.deepcopy(data)
    for o in overrides:
        table = out
        for i, part in enumerate(o.path[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise RecipeError(
                    f"{'.'.join(o.path[: i + 1])} is not a table, so it has no key {o.path[i + 1]!r}",
                    file=o.where,
                    key=o.key,
                    suggestion="set the whole value instead",
                )
        table[o.path[-1]] = copy.deepcopy(o.value)
    return out


# ----------------------------------------------------------------------------- writing TOML


def to_toml(data: dict[str, Any], header: Sequence[str] = ()) -> str:
    """TOML that tomllib reads back equal to `data` (tables of scalars become inline tables)."""
    lines = [f"# {part}" for line in header for part in line.splitlines() or [""]]  # a --set value may hold a newline
    _table(lines, (), data)
    return "\n".join(lines).strip("\n") + "\n"


def _table(lines: list[str], path: tuple[str, ...], table: dict[str, Any]) -> None:
    sections = {k: v for k, v in table.items() if isinstance(v, dict) and any(isinstance(x, dict) for x in v.values())}
    if path and (len(sections) < len(table) or not table):
        lines += ["", f"[{'.'.join(_key(p) for p in path)}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items() if k not in sections]
    for k, v in sections.items():
        _table(lines, (*path, k), v)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)  # fullmatch: "$" would let "W\\n" through


def _string(text: str) -> str:
    # JSON's escapes are TOML's; DEL is the one character TOML wants escaped and JSON does not.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
