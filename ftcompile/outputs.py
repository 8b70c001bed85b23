"""Every file ftcompile writes: where it may go (one guard) and how it is written (one writer).

The guard, `check_output`, runs before a command does its work, for every path a user names
(`plan -o/--trace/--plot`, `report -o`, `export -o`, `lr-find -o`) and for the default paths
of those commands. It refuses, as one user error (exit 2) naming the path and what it would
have destroyed:
- anything that is not a regular file (a folder, a device such as /dev/full, a FIFO, a socket),
  even with --force: replacing it would swap the device for a file;
- a path inside a run directory (a folder holding plan.json and env.json, or any folder below
  one) unless it is one of this command's own outputs for that run (export's model.onnx,
  report's report.html): nothing else may touch a run's weights, plan or logs;
- an existing file that is not an earlier output of the same kind (recognised by its content,
  or an export by its sidecar), unless --force is given.

The writer, `writing`, puts the bytes in a temporary file beside the target
(`.<name>.tmp-<pid>`), fsyncs it, renames it over the target and fsyncs the folder: a crash,
a kill or a full disk at any moment leaves the old file or the new one, never a torn one. A
failure removes the temporary file (an interrupt too: SIGTERM is raised as an exception, see
signals.py); only SIGKILL or a power loss can leave one, and `remove_stale_temps` (run and
resume, for their run directory) and the next write of the same file remove it. An OS error
is one RecipeError naming the target and the OS's reason. Every file gets the mode a plain
`open(path, "w")` gives (0666 less the umask, 0644 usually), whatever created its temporary
file: a library or an opener may make it 0600, and a model exported to share must not be.

No torch here: `plan` writes through this module too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ftcompile.errors import RecipeError, os_error

# ---------------------------------------------------------------- temporary files

# `.model.pt.tmp-4711`: hidden, beside its target, with the PID of the process writing it.
# The one pattern of ftcompile's temporary files: nothing else is ever removed as debris.
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>[0-9]+)$")


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def file_mode() -> int:
    """0o666 less the process's umask: the mode of a file made by `open(path, "w")`. Linux
    states the umask in /proc; elsewhere it is read by setting it and putting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _alive(pid: int) -> bool:
    """Whether another process with this PID runs (its temporary file is still being written)."""
    if pid == os.getpid():
        return False  # ours: a write in progress here never outlives its own `writing`
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # another user's process; an absurd PID is no process
    return True


def stale_temps(folder: Path, target: str | None = None) -> list[Path]:
    """Temporary files in `folder` (of `target` only, when given) whose writer has ended."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        m = TEMP_NAME.match(p.name)
        if (
            m
            and (target is None or m["target"] == target)
            and p.is_file()
            and not p.is_symlink()
            and not _alive(int(m["pid"]))
        ):
            found.append(p)
    return found


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Remove the temporary files that killed writers left anywhere in a run directory
    (checkpoints/, trials/... included); only names of TEMP_NAME's pattern are touched."""
    removed = []
    for folder, _, _ in os.walk(run_dir):
        for p in stale_temps(Path(folder)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


# ---------------------------------------------------------------- the writer


def open_new(path: Path) -> BinaryIO:
    """Where a file's bytes go first (a seam for tests that make writes fail)."""
    return open(path, "wb")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; when the block ends without an error, its file gets the
    usual mode, is fsynced and renamed over `path`, and the folder is fsynced. Any exception
    removes the temporary file; an OSError becomes a RecipeError naming `path`."""
    tmp = temp_path(path)
    try:
        for stale in stale_temps(path.parent, path.name):  # a killed earlier writer of this file
            stale.unlink(missing_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, file_mode())  # not the writer's mode (a temporary file's 0600)
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_folder(path.parent)  # and the new name is on disk too
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_error(exc, path) from None
        raise


@contextlib.contextmanager
def writing(path: Path, opener: Callable[[Path], BinaryIO] | None = None) -> Iterator[BinaryIO]:
    """A binary file whose content replaces `path` when the block ends without an error:
    all or nothing (temporary file, fsync, rename, fsync of the folder)."""
    with _replacing(path) as tmp, (opener or open_new)(tmp) as fh:
        yield fh


@contextlib.contextmanager
def written_by_library(path: Path) -> Iterator[Path]:
    """For a library that writes to a file name itself (the ONNX exporter): it writes the
    temporary path, which then replaces `path` as `writing` does."""
    with _replacing(path) as tmp:
        yield tmp


def fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_bytes(path: Path, data: bytes) -> None:
    with writing(path) as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_lines(path: Path, lines: Iterator[str]) -> None:
    """A long text (a trace of every step) written as it is made, never joined in memory."""
    with writing(path) as fh:
        for line in lines:
            fh.write(line.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """The run's JSON files (env.json, summary.json, eval.json): sorted keys, one per line."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n")


# ---------------------------------------------------------------- what a file is


@dataclass(frozen=True)
class Kind:
    """A kind of file a command writes, and how an earlier one is recognised (which may be
    replaced without --force)."""

    name: str  # in messages: "an LR trace CSV"
    looks_like: Callable[[Path], bool]
    tag: str = ""  # figures: the PNG's Software text (png_metadata)


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def _json(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _starts_with(prefix: bytes) -> Callable[[Path], bool]:
    return lambda path: _head(path, len(prefix)) == prefix


def _is_plan(path: Path) -> bool:
    data = _json(path)
    return isinstance(data, dict) and isinstance(data.get("format"), int) and "hash" in data and "phases" in data


def sidecar_of(path: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`: what an export's file expects and means."""
    return path.with_name(path.name + ".json")


REPORT_MARK = "<meta name='generator' content='ftcompile report'>"


def _is_report(path: Path) -> bool:
    head = _head(path, 1024)
    return REPORT_MARK.encode() in head or b"<title>ftcompile report:" in head  # reports before the mark


def _figure(name: str, tag: str) -> Kind:
    text = f"ftcompile {tag}".encode()
    return Kind(name, lambda path: (h := _head(path)).startswith(b"\x89PNG") and text in h, tag)


def png_metadata(kind: Kind) -> dict[str, str]:
    """savefig(metadata=...): the text that tells a figure of this kind from any other PNG."""
    return {"Software": f"ftcompile {kind.tag}"}


PLAN = Kind("a plan JSON", _is_plan)
TRACE = Kind("an LR trace CSV", _starts_with(b"step,phase,trial,"))
LR_PLOT = _figure("an LR plot", "lr-plot")
REPORT = Kind("an ftcompile report", _is_report)
LR_FIND_CSV = Kind("an lr-find CSV", _starts_with(b"step,multiplier,"))
LR_FIND_PLOT = _figure("an lr-find plot", "lr-find")
CURVES = _figure("a curves figure", "curves")
CONFUSION = _figure("a confusion matrix figure", "confusion")


# ---------------------------------------------------------------- the guard


def is_run_dir(folder: Path) -> bool:
    """What `ftcompile run` makes: a folder holding plan.json and env.json."""
    return (folder / "plan.json").is_file() and (folder / "env.json").is_file()


def enclosing_run(folder: Path) -> Path | None:
    """The run directory that `folder` is (or lies in), if any."""
    for f in (folder, *folder.parents):
        if is_run_dir(f):
            return f
    return None


def where(path: Path) -> Path:
    """Where a rename to `path` lands: its folder with links and `..` resolved as the kernel
    does (`link/../x` is x beside the link's target, not beside the link), then its name."""
    p = path.absolute()
    if p.name in ("", ".", ".."):
        return p.resolve()
    return p.parent.resolve() / p.name


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def check_new_folder(path: Path, option: str) -> None:
    """A folder a command makes and fills (`run --out DIR`): never inside a run directory."""
    run = enclosing_run(where(path).parent)
    if run is not None:
        raise RecipeError(
            f"{path} is inside the run directory {run}: only that run writes there",
            key=option,
            suggestion="give a folder outside any run directory",
        )


def check_output(path: Path, kind: Kind, option: str, *, force: bool = False, own: Sequence[Path] = ()) -> None:
    """Refuse a path whose writing would destroy what is not this command's to replace.

    `own`: the command's own outputs inside a run directory (export's default file, the
    report beside its run); no other path inside a run directory is ever written."""
    target = where(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise os_error(err, path, "check the output path") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = next((text for test, text in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
        raise RecipeError(
            f"{path} is {what}; writing {kind.name} there would replace it with a file",
            key=option,
            suggestion="give the path of a file (ftcompile writes only regular files)",
        )
    run = enclosing_run(target.parent)
    if run is not None and target not in {where(p) for p in own}:
        harm = (
            f"it would replace the run's own {target.relative_to(run)}"
            if st is not None
            else "only the run writes there"
        )
        raise RecipeError(
            f"{path} is inside the run directory {run}: {harm}",
            key=option,
            suggestion="give a path outside the run directory",
        )
    if st is not None and not force and not kind.looks_like(target):
        raise RecipeError(
            f"{path} exists and is not {kind.name} written by ftcompile; writing would destroy it",
            key=option,
            suggestion="give another path, or add --force to replace the file",
        )
