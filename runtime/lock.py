"""One process per run directory: an exclusive lock held for the whole run.

Two processes resuming (or running into) one directory would interleave their logs and
delete each other's temporary checkpoints. `RunLock` takes an exclusive `flock` on
`<run dir>/.lock` and writes its PID there; a second process is refused with a message
naming that PID. The kernel drops a flock when its process ends, however it ends (SIGKILL
included), so a lock left behind by a dead process never blocks anyone. The file itself is
never deleted: unlinking a lock file lets two processes lock two different files.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from ftcompile.errors import RecipeError, os_error

LOCK_FILE = ".lock"


class RunLock:
    """`lock.acquire(run_dir)` once; released by `with lock:` ending or `release()`."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.path: Path | None = None

    def acquire(self, run_dir: Path) -> None:
        path = run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise os_error(err, path, "create the run's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RecipeError(
                f"the run directory is in use by another ftcompile process ({holder})",
                file=run_dir,
                suggestion="wait for that process to end, or stop it; a lock left by a process that has ended never blocks",
            ) from None
        except OSError as err:  # a file system without flock
            os.close(fd)
            raise os_error(err, path, "lock the run directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _holder(fd: int) -> str:
    """'PID n' of the process holding the lock (it writes its PID right after locking)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return f"PID {text}"
        time.sleep(0.05)
    return "PID unknown"
