"""Issue 17 §5: an interrupt is reported as an interrupt, wherever it lands.

Ctrl-C (SIGINT) and SIGTERM during a checkpoint write, an evaluation or the write of model.pt:
exit 130 / 143, "interrupted; continue with `ftcompile resume RUN_DIR`", summary.json
`interrupted`, the checkpoint before intact with no temporary file beside it, and the resumed
run bitwise the uninterrupted one. In-process runs get a real signal (os.kill of this process)
at the chosen point; one real SIGINT and SIGTERM go to a separate `ftcompile run` process.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ftcompile.runtime.checkpoint as checkpoint
import ftcompile.runtime.loop as loop
import pytest
from runtime_helpers import assert_same_tensors, child_env, cli, load_tensors, metrics_bytes, recipe_text, write_recipe

# 2 digit classes at 8x8, 3 steps: a checkpoint after every step, evaluations at steps 2 and 3.
SMALL = 'builtin = "digits"\nclasses = ["0", "1"]\nimage_size = 8\nbatch_size = 16\nworkers = 0'
PHASES = '[phases.only]\ntrain = ["head"]\nsteps = 3\nlr = { head = 0.05 }\n'
RUN = 'checkpoint_every = "1 step"\neval_every = "2 steps"'


def recipe(folder: Path) -> Path:
    return write_recipe(folder, recipe_text("interrupted", PHASES, data=SMALL, run=RUN))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert cli(None, "run", recipe(folder), "--out", folder / "run").rc == 0
    return folder / "run"


@pytest.fixture
def no_sigterm_death() -> Iterator[None]:
    """Without the run's own SIGTERM handling, SIGTERM would end pytest: here it fails the test."""

    def handler(signum: int, frame: Any) -> None:
        raise AssertionError("SIGTERM reached the test's handler, not the run's")

    previous = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, previous)


class SignalledFile(io.FileIO):
    """A file whose write sends `signum` to this process once `budget` bytes are written: the
    signal lands inside torch.save, with part of the file on disk."""

    def __init__(self, path: Path, signum: int, budget: int) -> None:
        super().__init__(path, "wb")
        self.signum, self.budget = signum, budget

    def write(self, data: Any) -> int:
        n = super().write(data)
        self.budget -= n
        if self.budget <= 0:
            os.kill(os.getpid(), self.signum)
        return n


def interrupt_write(monkeypatch: pytest.MonkeyPatch, signum: int, hit: Callable[[Path], bool]) -> None:
    real_open = checkpoint._open_new
    monkeypatch.setattr(
        checkpoint, "_open_new", lambda path: SignalledFile(path, signum, 20_000) if hit(path) else real_open(path)
    )


def interrupt_evaluation(monkeypatch: pytest.MonkeyPatch, signum: int, at_step: int) -> None:
    real_evaluate = loop.evaluate
    calls = []

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == at_step // 2:  # evaluations come every 2 steps
            os.kill(os.getpid(), signum)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)


def debris(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".tmp-" in p.name)


# (where the signal lands, the signal, the newest checkpoint that must stay intact)
CASES = [
    ("checkpoint-write", signal.SIGINT, 1),
    ("checkpoint-write", signal.SIGTERM, 1),
    ("evaluation", signal.SIGTERM, 2),
    ("model.pt-write", signal.SIGINT, 3),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "signum", "intact"), CASES, ids=[f"{c[0]}-{c[1].name}" for c in CASES])
def test_an_interrupt_is_reported_as_one_and_the_run_resumes_bitwise(
    baseline: Path,
    tmp_path: Path,
    point: str,
    signum: signal.Signals,
    intact: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_sigterm_death: None,
) -> None:
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        if point == "checkpoint-write":
            interrupt_write(m, signum, lambda path: "step-00000002" in path.name)
        elif point == "model.pt-write":
            interrupt_write(m, signum, lambda path: "model.pt" in path.name)
        else:
            interrupt_evaluation(m, signum, at_step=2)
        result = cli(capsys, "run", recipe(tmp_path), "--out", run_dir)

    assert result.rc == 128 + signum, result.err
    assert result.err.strip().endswith(f"interrupted; continue with `ftcompile resume {run_dir}`"), result.err
    assert "disk space" not in result.err and "error" not in result.err, result.err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert summary["error"] == (
        "interrupted (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C / SIGINT)"
    )
    # the checkpoint before the interrupt is the newest, complete; nothing torn, no temporary file
    files = checkpoint.list_checkpoints(run_dir / "checkpoints")
    assert checkpoint.step_of(files[-1]) == intact
    for path in files:
        state, why = checkpoint.verify(path)
        assert state is not None, (path, why)
    assert debris(run_dir) == [] and not (run_dir / "model.pt").exists()

    result = cli(capsys, "resume", run_dir)
    assert result.rc == 0, result.err
    assert f"resuming at step {intact} of 3" in result.err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert_same_tensors(load_tensors(baseline / "model.pt"), load_tensors(run_dir / "model.pt"))
    assert metrics_bytes(baseline) == metrics_bytes(run_dir)
    assert (baseline / "lr.csv").read_bytes() == (run_dir / "lr.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_real_signal_to_a_running_process(tmp_path: Path, signum: signal.Signals) -> None:
    """`ftcompile run` in its own process, signalled once its first checkpoint is on disk."""
    phases = '[phases.long]\ntrain = ["head"]\nsteps = 100000\nlr = { head = 0.01 }\n'
    recipe = write_recipe(tmp_path, recipe_text("long", phases, data=SMALL + "\ndrop_last = true", run=RUN))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftcompile", "run", str(recipe), "--out", str(run_dir)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600  # start-up on a loaded machine
        while not checkpoint.list_checkpoints(run_dir / "checkpoints"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert err.strip().endswith(f"interrupted; continue with `ftcompile resume {run_dir}`"), err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    files = checkpoint.list_checkpoints(run_dir / "checkpoints")
    assert files and all(checkpoint.verify(path)[0] is not None for path in files)
    assert debris(run_dir) == []
