"""ftcompile/signals.py: SIGINT and SIGTERM raise `Interrupted` inside the block, and only there."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from ftcompile.signals import Interrupted, exit_code, raised_as_interrupts, signal_name


@pytest.fixture
def sigterm_fails_the_test() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise AssertionError("SIGTERM reached the handler set before the block")

    previous = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C / SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_in_the_block_is_an_interrupt_with_the_shells_exit_code(
    signum: int, code: int, name: str, sigterm_fails_the_test: None
) -> None:
    with pytest.raises(Interrupted) as caught, raised_as_interrupts():
        os.kill(os.getpid(), signum)
    assert isinstance(caught.value, KeyboardInterrupt)  # code that handles Ctrl-C handles SIGTERM alike
    assert exit_code(caught.value) == code and signal_name(caught.value) == name


def test_the_handlers_before_the_block_come_back(sigterm_fails_the_test: None) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with raised_as_interrupts():
        pass
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert exit_code(KeyboardInterrupt()) == 130  # Python's own Ctrl-C


def test_a_signal_the_process_ignores_stays_ignored() -> None:
    """`nohup ftcompile run ...` ignores SIGHUP, a background job SIGINT: not undone here."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with raised_as_interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # nothing happens
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
