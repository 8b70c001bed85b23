"""One error type for everything a user can get wrong.

The CLI catches `RecipeError` (and only it) and prints `str(err)` with exit code 2, so every
message must stand alone: which file, which key, what is wrong, what to do instead.
"""

from __future__ import annotations

import difflib
import errno
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class RecipeError(Exception):
    """A user error: bad recipe, bad data, bad plan or run directory."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        line: int | None = None,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        self.suggestion = suggestion

    def located(self, file: str | Path | None = None, line: int | None = None) -> RecipeError:
        """Fill in the file/line when the raiser did not know them."""
        if self.file is None and file is not None:
            self.file = str(file)
        if self.line is None and line is not None:
            self.line = line
        return self

    def __str__(self) -> str:
        # No file: an error of a command-line option or of a run directory (named in the message).
        where = str(self.file) if self.file else ""
        if where and self.line is not None:
            where += f":{self.line}"
        head = f"{where}: " if where else ""
        if self.key:
            head += f"{self.key}: "
        text = head + self.message
        if self.suggestion:
            text += f"\n  hint: {self.suggestion}"
        return text


class RecipeErrors(RecipeError):
    """Several errors of one recipe, reported together."""

    def __init__(self, errors: list[RecipeError]) -> None:
        super().__init__(errors[0].message, file=errors[0].file, key=errors[0].key)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str | None:
    """A 'did you mean' hint, or None when nothing is close."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return None


_OS_HINTS = {
    errno.ENOSPC: "free some disk space or choose another folder; checkpoints written before are intact",
    errno.EDQUOT: "free some of your disk quota or choose another folder; checkpoints written before are intact",
    errno.EACCES: "check the permissions of this path, or choose another folder",
    errno.EPERM: "check the permissions of this path, or choose another folder",
    errno.EROFS: "the file system is mounted read-only; choose a writable folder (run --out DIR)",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "this path is a folder where a file was expected",
    errno.EEXIST: "a file is at this path where a folder should be; choose another path",
    errno.ENOENT: "the folder does not exist; check the path",
    errno.EIO: "the disk reported an I/O error; check the device",
}


def os_error(err: OSError, path: str | Path | None = None, doing: str = "write") -> RecipeError:
    """An operating-system failure (disk full, permission, read-only file system, a file
    where a folder should be) as one message that names the path, for the one error path."""
    where = path if path is not None else err.filename
    reason = err.strerror or str(err) or type(err).__name__
    return RecipeError(
        f"cannot {doing}: {reason}",
        file=where if where is not None else "(path not known)",
        suggestion=_OS_HINTS.get(err.errno or -1, "check the path and the file system"),
    )


# The parts of a pydantic error location that name a type or validator, not a key.
_TYPE_TAG = re.compile(r"[\[\](),]|^(int|float|str|bool|list|dict)$|^(function|constrained|lax|literal|union)")


def loc_to_key(loc: tuple[Any, ...]) -> str:
    """pydantic's loc ('phases', 'warmup', 'lr', 'head') -> 'phases.warmup.lr.head'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TYPE_TAG.search(str(part)):
            out += ("." if out else "") + str(part)
    return out
