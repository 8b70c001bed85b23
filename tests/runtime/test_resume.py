"""`ftcompile resume RUN_DIR` on CPU gives bitwise the run an uninterrupted process gives:
model.pt, metrics.jsonl and lr.csv, whether it stopped at a checkpoint or was killed."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ftcompile.runtime.checkpoint as checkpoint
from runtime_helpers import (
    PHASES_A,
    assert_same_tensors,
    child_env,
    cli,
    cli_process,
    load_tensors,
    metrics_bytes,
    recipe_text,
    write_recipe,
)

EVERY_3 = 'checkpoint_every = "3 steps"\neval_every = "100 steps"\nkeep_checkpoints = "all"'
RUN_FILES = ("recipe.toml", "plan.json", "env.json", "metrics.jsonl", "lr.csv")


def recipe_every_3() -> str:
    return recipe_text("tiny-resume", PHASES_A, run=EVERY_3)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Recipe A checkpointed every 3 steps, every checkpoint kept."""
    folder = tmp_path_factory.mktemp("baseline")
    recipe = write_recipe(folder, recipe_every_3())
    assert cli(None, "run", recipe, "--out", folder / "run").rc == 0
    return folder / "run"


def assert_same_run(a: Path, b: Path) -> None:
    assert_same_tensors(load_tensors(a / "model.pt"), load_tensors(b / "model.pt"))
    assert metrics_bytes(a) == metrics_bytes(b)
    assert (a / "lr.csv").read_bytes() == (b / "lr.csv").read_bytes()


def stopped_at(baseline: Path, step: int | None, dest: Path) -> Path:
    """The run directory as a process stopped right after checkpoint `step` would leave it:
    logs already longer than the checkpoint, no model.pt, no later checkpoints."""
    dest.mkdir()
    for name in RUN_FILES:
        shutil.copyfile(baseline / name, dest / name)
    (dest / "checkpoints").mkdir()
    if step is not None:
        name = f"step-{step:08d}.pt"
        shutil.copyfile(baseline / "checkpoints" / name, dest / "checkpoints" / name)
    return dest


def test_baseline_checkpoints(baseline: Path) -> None:
    steps = [int(p.stem.split("-")[1]) for p in checkpoint.list_checkpoints(baseline / "checkpoints")]
    # every 3 steps from each phase's begin, and each phase's end: [0, 4) [4, 10) [10, 13) [13, 17)
    assert steps == [3, 4, 7, 10, 13, 16, 17]


# 4: a phase end (the next phase resets optimizer state, freezes BatchNorm, starts CyclicLR);
# 7: inside CyclicLR; 16: inside StepLR; None: stopped before the first checkpoint. (The kill
# test below lands on other steps.)
@pytest.mark.slow
@pytest.mark.parametrize("step", [4, 7, 16, None])
def test_resume_from_a_checkpoint_is_bitwise_identical(
    baseline: Path, tmp_path: Path, step: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = stopped_at(baseline, step, tmp_path / "run")
    result = cli(capsys, "resume", run_dir)
    assert result.rc == 0, result.err
    assert ("starting from step 0" if step is None else f"resuming at step {step} of 17") in result.err
    assert_same_run(baseline, run_dir)


def test_resume_of_a_finished_run_changes_nothing(baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = stopped_at(baseline, 17, tmp_path / "run")
    shutil.copyfile(baseline / "model.pt", run_dir / "model.pt")
    assert cli(capsys, "resume", run_dir).rc == 0
    assert_same_run(baseline, run_dir)


def newest_step(folder: Path) -> int:
    files = checkpoint.list_checkpoints(folder)
    return int(files[-1].stem.split("-")[1]) if files else -1


def kill_after_checkpoint(proc: subprocess.Popen, folder: Path, step: int, delay: float) -> None:
    """SIGKILL `proc` `delay` seconds after a checkpoint of step >= `step` is complete."""
    deadline = time.monotonic() + 300
    while newest_step(folder) < step:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "the process ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def start(cwd: Path, *args: str | Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ftcompile", *map(str, args)],
        cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(baseline: Path, tmp_path: Path) -> None:
    """Kill `ftcompile run` at a random moment after a checkpoint, resume and kill that
    process too, then resume to the end: the same bytes as the uninterrupted baseline.

    The moments are drawn with a fixed seed, so a failure reproduces; the kill lands in a
    training step or in a checkpoint write depending on the machine's speed.
    """
    rng = random.Random(7)
    recipe = write_recipe(tmp_path, recipe_every_3())
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"

    kill_after_checkpoint(start(tmp_path, "run", recipe, "--out", run_dir), folder,
                          rng.choice([3, 4, 7, 10]), rng.uniform(0.0, 0.4))
    assert not (run_dir / "model.pt").exists()
    # whatever the kill interrupted, every step-*.pt on disk is complete and loads
    for path in checkpoint.list_checkpoints(folder):
        checkpoint.torch.load(path, weights_only=True)
    first_kill = newest_step(folder)

    kill_after_checkpoint(start(tmp_path, "resume", run_dir), folder, first_kill + 1, rng.uniform(0.0, 0.3))
    assert newest_step(folder) > first_kill

    result = cli_process("resume", run_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming at step" in result.stderr
    assert_same_run(baseline, run_dir)
