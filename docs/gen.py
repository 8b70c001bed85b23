"""Writes the parts of the docs that must not drift from the code (STYLE.md, habit 20).

- docs/reference.md, the recipe reference, from the recipe JSON Schema (ftcompile/schema.py).
- Every block under a marker in README.md and docs/*.md:
    <!-- output: ftcompile plan recipes/quickstart.toml -->   the command's output, run here (fenced)
    <!-- output: CMD | from "TEXT" until "TEXT" -->            a part of it (`to "TEXT"`: inclusive)
    <!-- file: recipes/quickstart-trials.toml -->              a file of the repository (fenced)
    <!-- include: docs/index.md | from "TEXT" until "TEXT" --> markdown of another page, up to
    ...                                                         <!-- end include -->
  An output marker also records the torch and torchvision it was made with (` | made with ...`):
  plan hashes include them, so another build of torch gives other hashes, not a stale page.

    python docs/gen.py          rewrite them
    python docs/gen.py --check  say what differs, exit 1 (tests/test_docs.py runs this)
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
FENCED = re.compile(r"^<!-- (output|file): (.*?) -->\n```(\w*)\n.*?^```$", re.MULTILINE | re.DOTALL)
INCLUDED = re.compile(r"^<!-- include: (.*?) -->\n.*?^<!-- end include -->$", re.MULTILINE | re.DOTALL)
PART = re.compile(r'\s*(from|to|until) "([^"]*)"')


# --- the recipe reference ---------------------------------------------------------------------


@dataclass
class Table:
    path: str  # "model.head"; "" is the top level
    schema: dict[str, Any]

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9_]+", "-", self.path.lower()).strip("-") or "top-level"

    @property
    def title(self) -> str:
        return f"`[{self.path}]`" if self.path else "Top level"


def _tables(schema: dict[str, Any]) -> list[Table]:
    """Every TOML table of a recipe, depth first in field order; a model reached twice
    (`mix` in `[data]` and in a phase's `data`) is listed once, where it is first reached."""
    defs, seen, out = schema["$defs"], set(), []

    def visit(path: str, node: dict[str, Any]) -> None:
        out.append(Table(path, node))
        for key, prop in node.get("properties", {}).items():
            ref, sub = _model_ref(prop)
            if ref and ref not in seen:
                seen.add(ref)
                visit(f"{path}.{key}{sub}".lstrip("."), defs[ref])

    visit("", schema)
    return out


def _model_ref(prop: dict[str, Any]) -> tuple[str | None, str]:
    """The model a property holds (directly, or as `<name> = {...}` values), and the path suffix."""
    for alt in [prop, *prop.get("anyOf", [])]:
        if "$ref" in alt:
            return alt["$ref"].rsplit("/", 1)[1], ""
        extra = alt.get("additionalProperties")
        if isinstance(extra, dict) and "$ref" in extra:
            return extra["$ref"].rsplit("/", 1)[1], ".<name>"
    return None, ""


def _type(node: dict[str, Any], links: dict[str, Table]) -> str:
    if "$ref" in node:
        table = links[node["$ref"].rsplit("/", 1)[1]]
        return f"table [{table.title}](#{table.anchor})"
    if "anyOf" in node:
        return " or ".join(_type(alt, links) for alt in node["anyOf"] if alt.get("type") != "null")
    if "const" in node:
        return f"`{_toml(node['const'])}`"
    if "enum" in node:
        return " or ".join(f"`{_toml(v)}`" for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        many = f", at least {node['minItems']}" if "minItems" in node else ""
        return f"list of {_nested(node.get('items', {}), links)}{many}"
    if kind == "object":
        extra = node.get("additionalProperties")
        many = f", at least {node['minProperties']} key" if "minProperties" in node else ""
        return (f"table of {_nested(extra, links)}" if isinstance(extra, dict) else "table") + many
    bounds = [
        f"{sign} {node[key]:{'d' if isinstance(node[key], int) else 'g'}}"
        for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
        if key in node
    ]
    if "pattern" in node:
        bounds.append(f"matching `{node['pattern']}`")
    if "maxLength" in node:
        bounds.append(f"at most {node['maxLength']} characters")
    name = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}.get(kind, "any")
    return name + (" " + ", ".join(bounds) if bounds else "")


def _nested(node: dict[str, Any], links: dict[str, Table]) -> str:
    text = _type(node, links)
    return f"({text})" if " or " in text else text


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, float) or not value.is_integer() else repr(value)


def _default(key: str, node: dict[str, Any], required: list[str]) -> str:
    if key in required:
        return "required"
    if "default" not in node:
        return "—"
    value = node["default"]
    if value is None:
        return "unset"
    if isinstance(value, dict) and value:
        return "its defaults"
    return f"`{_toml(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def reference() -> str:
    from ftcompile.schema import json_schema

    schema = json_schema()
    tables = _tables(schema)
    links = {t.schema["title"]: t for t in tables if t.path}
    open_tables = ", ".join(t.title for t in tables if t.schema.get("additionalProperties") is True)
    lines = [
        "# Recipe reference",
        "",
        "<!-- Generated by docs/gen.py from ftcompile/schema.py (the field descriptions): do not edit. -->",
        "",
        "Every key a recipe may hold, table by table, generated from the recipe schema in",
        "`ftcompile/schema.py` (`ftcompile schema` prints it as JSON Schema; `recipes/recipe.schema.json`",
        "is the copy TOML editors read). Unknown keys are errors with a suggestion, except in",
        f"{open_tables}, whose other keys are described there. How the keys work together:",
        "[Writing a recipe](recipes.md) and [Phases and the plan](phases.md).",
    ]
    for table in tables:
        node = table.schema
        slug = re.sub(r"[^\w\s-]", "", table.title).strip().lower().replace(" ", "-")  # the heading's own id
        lines += ["", f'<a id="{table.anchor}"></a>'] * (slug != table.anchor) + ["", f"## {table.title}", ""]
        if table.path and node.get("description"):
            lines += [_cell(node["description"]), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, prop in node.get("properties", {}).items():
            meaning = _cell(prop.get("description", ""))
            lines.append(
                f"| `{key}` | {_cell(_type(prop, links))} | {_default(key, prop, node.get('required', []))} "
                f"| {meaning} |"
            )
    return "\n".join(lines) + "\n"


# --- command outputs and files shown in the pages ---------------------------------------------


def made_with() -> str:
    import torch

    from ftcompile.tv_table import torchvision_version

    return f"torch {torch.__version__}, torchvision {torchvision_version()}"


@functools.cache  # several pages show parts of one output
def run_command(command: str) -> str:
    """`ftcompile ...` run in this process from the repository root, stdout and stderr as one
    stream, as a terminal shows them; a non-zero exit is shown as `(exit N)`. It runs as on a
    machine whose torch hub cache is empty (what it says about weights does not depend on this
    one's), shown at its default place, ~/.cache/torch."""
    from ftcompile.cli import main

    words = shlex.split(command)
    assert words[0] == "ftcompile", command
    argv = [w for word in words[1:] for w in (sorted(glob.glob(word, root_dir=ROOT)) if "*" in word else [word])]
    out, cwd, saved = io.StringIO(), os.getcwd(), dict(os.environ)
    with tempfile.TemporaryDirectory() as torch_home:
        os.environ.update(COLUMNS="80", TORCH_HOME=torch_home)  # argparse wraps --help to COLUMNS
        os.chdir(ROOT)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    rc = main(argv)
                except SystemExit as exc:  # --help
                    rc = int(exc.code or 0)
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(saved)
    text = f"$ {command}\n{out.getvalue()}".replace(torch_home, "~/.cache/torch")
    return text + (f"(exit {rc})\n" if rc else "")


def _select(lines: list[str], spec: str) -> tuple[int, int]:
    """The half-open line range `from "A"` (inclusive) ... `to "B"` (inclusive) / `until "B"`."""
    begin, end = 0, len(lines)
    for word, needle in PART.findall(spec):
        if word == "from":
            begin = next(i for i, line in enumerate(lines) if needle in line)
        else:
            hit = next(i for i, line in enumerate(lines) if i >= begin and needle in line)
            end = hit + 1 if word == "to" else hit
    return begin, end


def _fenced(kind: str, spec: str) -> tuple[str, str]:
    """(marker text, block body) of an output or file marker, made now; a part is shown with
    `...` where lines are left out."""
    source, *parts = spec.split(" | ")
    part = " ".join(p for p in parts if not p.startswith("made with "))
    if kind == "output":
        head, *lines = run_command(source).splitlines()
        marker = " | ".join(filter(None, [source, part, f"made with {made_with()}"]))
    else:
        head, lines, marker = "", (ROOT / source).read_text().splitlines(), spec
    begin, end = _select(lines, part)
    while end > begin and not lines[end - 1].strip():
        end -= 1
    kept = [head] * bool(head) + ["..."] * (begin > 0) + lines[begin:end] + ["..."] * (end < len(lines))
    return marker, "\n".join(kept) + "\n"


def _included(spec: str, page: Path) -> str:
    """Markdown of another page (a part of it) as written there; its relative links are made
    relative to `page` (docs/index.md's `runs.md` is `docs/runs.md` in README.md)."""
    source, _, part = spec.partition(" | ")
    path = ROOT / source
    lines = path.read_text().splitlines()
    begin, end = _select(lines, part)
    text = "\n".join(lines[begin:end]).strip("\n") + "\n"
    prefix = os.path.relpath(path.parent, page.parent).replace(os.sep, "/")
    if prefix != ".":
        text = re.sub(r"\]\((?![a-z]+:|#)([^)]+)\)", lambda m: f"]({prefix}/{m.group(1)})", text)
    return text


def pages() -> Iterator[Path]:
    yield ROOT / "README.md"
    yield from (page for page in sorted((ROOT / "docs").glob("*.md")) if page != REFERENCE)


def regenerate(text: str, page: Path) -> str:
    def fenced(match: re.Match[str]) -> str:
        kind, spec, lang = match.groups()
        marker, body = _fenced(kind, spec)
        return f"<!-- {kind}: {marker} -->\n```{lang}\n{body}```"

    def included(match: re.Match[str]) -> str:
        return f"<!-- include: {match.group(1)} -->\n{_included(match.group(1), page)}<!-- end include -->"

    return INCLUDED.sub(included, FENCED.sub(fenced, text))


def stale() -> list[str]:
    """What differs between the pages and what they would be now. An output made with another
    torch / torchvision is not compared: the plan hashes in it cannot match here."""
    here = f"made with {made_with()}"
    problems = []
    if REFERENCE.read_text() != reference():
        problems.append(f"{REFERENCE.relative_to(ROOT)}: differs from the schema")
    for page in pages():
        text = page.read_text()
        for match in [*FENCED.finditer(text), *INCLUDED.finditer(text)]:
            marker = match.group(0).partition(" -->")[0]
            if "made with " in marker and not marker.endswith(here):
                continue
            if regenerate(match.group(0), page) != match.group(0):
                problems.append(f"{page.relative_to(ROOT)}: the block under {marker} --> is stale")
    return problems


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        problems = stale()
        for problem in problems:
            print(problem)
        if problems:
            print("run: python docs/gen.py")
        return 1 if problems else 0
    REFERENCE.write_text(reference())
    for page in pages():
        text = page.read_text()
        new = regenerate(text, page)
        if new != text:
            page.write_text(new)
            print(f"wrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
