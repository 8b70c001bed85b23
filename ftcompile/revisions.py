"""`REV:path`: a recipe as it was at a git revision, ready to compile.

`git show` reads the recipe at the revision, and with it every recipe it reads (its
`extends` chain, an upstream recipe named as weights), each at the same revision; they are
written into a temporary folder at their paths relative to the repository, so relative
paths between them resolve as they did at that revision. Data folders are not in git: they
are looked up where the recipe's folder is in the work tree.
"""

from __future__ import annotations

import posixpath
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ftcompile.errors import RecipeError
from ftcompile.load import RECIPE_ENCODING


@dataclass(frozen=True)
class Checkout:
    recipe: Path  # the recipe's copy under the temporary folder
    data_root: Path  # the recipe's folder in the work tree, where data paths start
    label: str  # REV:path as the user gave it


def split_revision(spec: str) -> tuple[str, str] | None:
    """("HEAD~1", "recipes/a.toml") for "HEAD~1:recipes/a.toml"; None for a plain path."""
    if ":" not in spec or Path(spec).exists():
        return None
    rev, _, path = spec.partition(":")
    if not path or (len(rev) == 1 and rev.isalpha() and path.startswith(("\\", "/"))):  # C:\... is a path
        return None
    return rev, path


def _refuse_options(spec: str, rev: str, path: str) -> None:
    """A revision or path that begins with '-' would reach git as an option (`--output=FILE`
    writes a file wherever it says): refused before git runs."""
    for what, text in (("revision", rev), ("path", path)):
        if text.startswith("-"):
            raise RecipeError(
                f"the {what} {text!r} begins with '-', which git would read as an option",
                file=spec,
                key="REV:path",
                suggestion="give a revision such as HEAD~1 or a commit hash, and a path such as recipes/r.toml "
                "(for a file whose name begins with '-', write ./-name.toml)",
            )


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """git in `repo`. Callers put `--end-of-options` before any text that came from the user
    (git >= 2.24), so none of it is ever parsed as an option."""
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RecipeError(
            f"cannot run git: {exc}", key="REV:path", suggestion="install git, or compare files"
        ) from None


def _toplevel(path: Path) -> Path:
    folder = path.parent.resolve()
    while not folder.is_dir():  # the recipe (or its folder) may exist only at the revision
        folder = folder.parent
    done = _git(folder, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise RecipeError(
            f"{path.parent} is not in a git repository",
            file=str(path),
            key="REV:path",
            suggestion="REV:path reads files from git; give plain files or run directories otherwise",
        )
    return Path(done.stdout.decode().strip())


def checkout(spec: str, into: Path) -> Checkout:
    """Write the recipe at REV (and the recipes it reads) under `into`."""
    split = split_revision(spec)
    assert split is not None, spec
    rev, path = split
    _refuse_options(spec, rev, path)
    top = _toplevel(Path(path))
    try:
        rel = Path(path).resolve().relative_to(top.resolve()).as_posix()
    except ValueError:
        raise RecipeError(f"{path} is not inside the repository {top}", file=spec, key="REV:path") from None
    _fetch(top, rev, rel, into, spec, seen=set())
    return Checkout(into / rel, top / posixpath.dirname(rel), spec)


def _fetch(top: Path, rev: str, rel: str, into: Path, spec: str, seen: set[str]) -> None:
    if rel in seen:
        return  # a cycle: the compiler reports it
    seen.add(rel)
    done = _git(top, "show", "--end-of-options", f"{rev}:{rel}")
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().removeprefix("fatal: ")
        raise RecipeError(
            f"cannot read {rel} at revision {rev!r}: {why}",
            file=spec,
            suggestion="ftcompile needs git 2.24 or newer (see git --version)"
            if "--end-of-options" in why
            else "check the revision (git log -- PATH) and that the file existed there",
        )
    target = into / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(done.stdout)
    try:
        data = tomllib.loads(done.stdout.decode(RECIPE_ENCODING))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # the compiler reports the syntax error, with its line
    folder = posixpath.dirname(rel)
    model = data.get("model")
    weights = model.get("weights") if isinstance(model, dict) else None
    for ref in (data.get("extends"), weights):
        if isinstance(ref, str) and ref.endswith(".toml") and not posixpath.isabs(ref):
            _fetch(top, rev, posixpath.normpath(posixpath.join(folder, ref)), into, spec, seen)
