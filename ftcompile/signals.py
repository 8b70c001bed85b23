"""Ctrl-C (SIGINT) and SIGTERM become one exception, raised where the program is.

Python turns SIGINT into KeyboardInterrupt but leaves SIGTERM to the OS, which ends the
process at once: no `finally`, no cleanup of a temporary file, summary.json left saying
"running". Raising `Interrupted` for both lets every atomic write remove its temporary file,
lets the run record "interrupted", and gives the shell's exit code for the signal (128 + its
number: 130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal asked the process to stop (a KeyboardInterrupt, so code that handles Ctrl-C
    handles SIGTERM alike)."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "interrupted") -> None:
        super().__init__(message)
        self.signum = int(signum)


def signum_of(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGINT for a KeyboardInterrupt raised by other code."""
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's code for a process ended by signal N, 128 + N: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + signum_of(exc)


def signal_name(exc: KeyboardInterrupt) -> str:
    """What summary.json says stopped the run: "Ctrl-C / SIGINT", "SIGTERM"."""
    signum = signum_of(exc)
    return "Ctrl-C / SIGINT" if signum == signal.SIGINT else signal.Signals(signum).name


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def raised_as_interrupts() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise `Interrupted`; a signal the process was
    started to ignore (`nohup`, a background job's SIGINT) stays ignored. Outside the main
    thread (where Python cannot set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    for signum in CAUGHT:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _raise)
    try:
        yield
    finally:
        for caught, handler in previous.items():
            signal.signal(caught, signal.SIG_DFL if handler is None else handler)
