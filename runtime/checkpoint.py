"""Atomic, verified checkpoints that load with weights_only=True.

A checkpoint is written to a temporary file in the same folder, fsynced, then renamed over
its final name (and the folder fsynced), so a kill or a failed write at any moment leaves
either the old newest checkpoint or the new one, never a torn file. RNG states are stored as
tensors and plain values so that the runtime's own files need no pickle code either.

Each checkpoint also carries a sha256 digest of its content, taken at save time. A file can
still be damaged afterwards (a disk, a copy, a truncation that keeps the zip readable, a
flipped bit that torch.load does not notice), so a checkpoint counts only once it loads and
its digest matches: `load_newest` falls back past a bad one, and a bad file is moved to
`checkpoints/damaged/` (never deleted, never counted among the KEEP kept).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import numpy as np
import torch

from ftcompile import outputs
from ftcompile.errors import RecipeError, os_error

KEEP = 2  # newest good checkpoints kept; older ones are deleted after a new one is safe
DAMAGED = "damaged"  # sub-folder that bad checkpoint files are moved to
_NAME = re.compile(r"^step-(\d+)\.pt$")
# Files this process wrote or verified, by (size, mtime): they need not be loaded again to
# know that they are good when older checkpoints are pruned.
_known_good: dict[Path, tuple[int, int]] = {}


# ---------------------------------------------------------------- writing


class _Writer:
    """The file torch.save writes to, remembering what stopped a write: torch turns any
    exception of a write into a RuntimeError ("unexpected pos ..."), which no longer says that
    the disk is full, or that Ctrl-C / SIGTERM arrived while the bytes were going out."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except BaseException as err:  # noqa: BLE001 - re-raised by atomic_save as it was
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def _open_new(path: Path) -> BinaryIO:
    """Where a checkpoint's bytes go first (a seam for tests that make writes fail)."""
    return open(path, "wb")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save(obj, path) through the one atomic writer (ftcompile.outputs.writing), all or
    nothing; an OS failure is a RecipeError naming `path`."""
    writer: _Writer | None = None
    try:
        with outputs.writing(path, _open_new) as fh:
            writer = _Writer(fh)
            torch.save(obj, cast("IO[bytes]", writer))  # a file as far as torch.save goes: write and flush
    except RuntimeError as exc:
        if writer is not None and writer.error is not None:
            if isinstance(writer.error, OSError):
                raise os_error(writer.error, path) from None
            raise writer.error from None  # an interrupt is an interrupt, not a full disk
        if "unexpected pos" in str(exc):  # torch's words for a short write
            raise RecipeError(
                f"cannot write: {str(exc).splitlines()[0]}",
                file=path,
                suggestion="check the free disk space; checkpoints written before are intact",
            ) from None
        raise


# ---------------------------------------------------------------- content digest


class _Key(str):
    """A dict key on the digest's work stack (told apart from a string value)."""


def content_digest(obj: Any) -> str:
    """sha256 over a checkpoint's content: every tensor's dtype, shape and bytes, every
    plain value, every key, in order. Equal before torch.save and after torch.load."""
    h = hashlib.sha256()
    stack: list[Any] = [obj]
    while stack:  # depth-first, in order, without recursion
        item = stack.pop()
        if isinstance(item, _Key):
            h.update(b"K" + item.encode() + b";")
        elif isinstance(item, torch.Tensor):
            t = item.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(item, dict):
            h.update(f"D{len(item)};".encode())
            for key, value in reversed(list(item.items())):
                stack += [value, _Key(repr(key))]
        elif isinstance(item, (list, tuple)):
            h.update(f"{type(item).__name__}{len(item)};".encode())
            stack += list(reversed(item))
        else:
            h.update(repr(item).encode() + b";")
    return h.hexdigest()


# ---------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: the MT19937 state as a tuple
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np_state
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the checkpoint folder


def save(folder: Path, step: int, payload: dict[str, Any], keep: int | None = KEEP, number: int | None = None) -> Path:
    """Write checkpoint `step` (with RNG states and a digest); with `keep`, then keep the
    `keep` newest good ones (None: the caller decides what stays, see retention.py).

    `number` orders the files (default: the step). A run with trials goes back to a phase's
    start for each alternative, so it numbers its files by optimizer steps taken in all."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in outputs.stale_temps(folder):  # left by a killed writer (the run lock allows one)
            stale.unlink(missing_ok=True)
    except OSError as err:
        raise os_error(err, folder) from None
    path = folder / f"step-{step if number is None else number:08d}.pt"
    content = {**payload, "step": step, "rng": rng_state()}
    atomic_save({**content, "digest": content_digest(content)}, path)
    _remember(path)
    if keep:
        _prune(folder, step if number is None else number, keep)
    return path


def _prune(folder: Path, step: int, keep: int = KEEP) -> None:
    """Keep the newest `keep` good checkpoints up to `step` (the one just written counts).

    A bad older file never counts toward KEEP: it is moved aside. Files of later steps (a
    resume that fell back past them moved any bad ones already) are left alone.
    """
    kept = 1
    for path in reversed([p for p in list_checkpoints(folder) if step_of(p) < step]):
        if kept >= keep:
            path.unlink(missing_ok=True)
        elif is_good(path):
            kept += 1
        else:
            set_aside(path)


def step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    assert match, path
    return int(match.group(1))


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files, oldest first (temporary files and set-aside ones are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _remember(path: Path) -> None:
    _known_good[path.resolve()] = _stat_key(path)


def is_good(path: Path) -> bool:
    try:
        if _known_good.get(path.resolve()) == _stat_key(path):
            return True
    except OSError:
        return False
    return verify(path)[0] is not None


def verify(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any] | None, str]:
    """(the checkpoint, "") when it loads and its digest matches; (None, why) otherwise.

    A file without a digest (written by an older ftcompile) counts when it loads.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a zip, refused pickle, I/O error
        return None, f"does not load: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        return None, "is not an ftcompile checkpoint"
    stored = state.pop("digest", None)
    if stored is not None and stored != content_digest(state):
        return None, "its content digest does not match the one recorded when it was saved"
    try:
        _remember(path)
    except OSError:
        pass
    return state, ""


def set_aside(path: Path) -> Path:
    """Move a bad checkpoint to checkpoints/damaged/ (a new name if one is there already)."""
    dest_dir = path.parent / DAMAGED
    dest_dir.mkdir(exist_ok=True)
    dest, n = dest_dir / path.name, 1
    while dest.exists():
        dest, n = dest_dir / f"{path.name}.{n}", n + 1
    os.replace(path, dest)
    _known_good.pop(path.resolve(), None)
    return dest


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def load_newest(
    folder: Path,
    map_location: str | torch.device = "cpu",
    move_bad: bool = True,
    warn: Callable[[str], None] = _warn,
    plan_hash: str | None = None,
) -> dict[str, Any] | None:
    """The newest good checkpoint (see `find_newest`), or None."""
    found = find_newest(folder, map_location, move_bad, warn, plan_hash)
    return found[1] if found else None


def find_newest(
    folder: Path,
    map_location: str | torch.device = "cpu",
    move_bad: bool = True,
    warn: Callable[[str], None] = _warn,
    plan_hash: str | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """(file, checkpoint) of the newest checkpoint that loads, matches its digest and, given
    `plan_hash`, belongs to that plan; None when there is none.

    Each bad file met on the way is named (and, with `move_bad`, moved to damaged/ so it
    never shadows or outnumbers the checkpoints written from here on). A checkpoint of
    another plan (copied in from another run) is bad like a damaged one, as long as the run
    has one of its own to fall back to; when every good checkpoint belongs to another plan,
    plan.json itself is what changed: that is an error, and nothing is moved.
    """
    passed: list[tuple[Path, str]] = []  # bad files newer than the one returned
    foreign: Path | None = None
    for path in reversed(list_checkpoints(folder)):
        state, why = verify(path, map_location)
        if state is not None and plan_hash is not None and state.get("plan_hash") != plan_hash:
            why = f"belongs to another plan ({str(state.get('plan_hash'))[:8]}; this run's plan is {plan_hash[:8]})"
            state, foreign = None, foreign or path
        if state is not None:
            _fall_back(passed, move_bad, warn)
            return path, state
        passed.append((path, why))
    if foreign is not None:
        raise RecipeError(
            f"the checkpoint belongs to another plan: it {dict(passed)[foreign]}, and no checkpoint "
            f"in {folder} belongs to this run's plan.json",
            file=foreign,
            suggestion="start a new run (ftcompile run RECIPE), or restore the plan.json the run was made with",
        )
    _fall_back(passed, move_bad, warn)
    return None


def _fall_back(passed: list[tuple[Path, str]], move_bad: bool, warn: Callable[[str], None]) -> None:
    for path, why in passed:
        where = f"; moved to {set_aside(path)}" if move_bad else ""
        warn(f"checkpoint {path} {why}{where}; falling back to the one before")
