"""Where each key of a TOML text is: key path -> line number.

tomllib keeps no positions, so a line scan finds them. Errors name the line of their key with
it: the compiler's (ftcompile/load.py's LoadedRecipe) and the runtime's, of a run directory's
stored recipe.toml (runtime/rundir.py), which needs no more of the recipe language than this.
"""

from __future__ import annotations

# Characters of a (dotted, possibly quoted) key as the line scan sees it.
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.\"' ")


def key_lines(text: str) -> dict[str, int]:
    """Key path -> line number, from a line scan (tomllib keeps no positions).

    Each line is looked at a constant number of times (no backtracking regex): a recipe
    line of any length costs time proportional to its length.
    """
    lines: dict[str, int] = {}
    table = ""
    for no, raw in enumerate(text.splitlines(), start=1):
        header = _header(raw)
        if header is not None:
            table = _strip_quotes(header)
            lines.setdefault(table, no)
            continue
        key = _key(raw)
        if key is not None and not raw.lstrip().startswith("#"):
            name = _strip_quotes(key)
            full = f"{table}.{name}" if table else name
            lines.setdefault(full, no)
    return lines


def _header(raw: str) -> str | None:
    """The name in a `[table]` or `[[array]]` line (a comment may follow), else None."""
    rest = raw.lstrip()
    if not rest.startswith("["):
        return None
    rest = rest[2:] if rest.startswith("[[") else rest[1:]
    close = rest.find("]")
    if close < 0:
        return None
    name, after = rest[:close], rest[close + 1 :]
    after = (after[1:] if after.startswith("]") else after).lstrip()
    if not name.strip() or (after and not after.startswith("#")):
        return None
    return name.strip()


def _key(raw: str) -> str | None:
    """The key of a `key = value` line (dotted and quoted parts kept as written), else None."""
    head, eq, _ = raw.partition("=")
    name = head.strip()
    if not eq or not name or not _KEY_CHARS.issuperset(name):
        return None
    return name


def line_in(lines: dict[str, int], key: str) -> int | None:
    """Line of a key path in `lines` (from key_lines), or of its nearest enclosing key that has one."""
    parts = key.replace("[", ".[").split(".")
    while parts:
        found = lines.get(".".join(parts).replace(".[", "["))
        if found is not None:
            return found
        parts.pop()
    return None


def _strip_quotes(key: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in key.split("."))
