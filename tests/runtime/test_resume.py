"""`ftcompile resume RUN_DIR` on CPU gives bitwise the run an uninterrupted process gives:
model.pt, metrics.jsonl and lr.csv, whether it stopped at a checkpoint or was killed."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ftcompile.runtime.checkpoint as checkpoint
import pytest
import torch
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


def test_resume_of_a_finished_run_changes_nothing(
    baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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

    kill_after_checkpoint(
        start(tmp_path, "run", recipe, "--out", run_dir), folder, rng.choice([3, 4, 7, 10]), rng.uniform(0.0, 0.4)
    )
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


# ---------------------------------------------------------------- issue 17 §4: the logs are part of the state


def fingerprint(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the run lock's (.lock, which resume takes first: a run made it)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def cut_lr_csv(run_dir: Path) -> None:
    """lr.csv cut in the middle of step 3's row: its header, steps 0-2 and half a row remain."""
    data = (run_dir / "lr.csv").read_bytes()
    lines = data.splitlines(keepends=True)
    (run_dir / "lr.csv").write_bytes(b"".join(lines[:4]) + lines[4][:5])


def edit_metrics(run_dir: Path) -> None:
    """One digit of step 1's loss changed: the file keeps its length and stays valid JSON."""
    data = bytearray((run_dir / "metrics.jsonl").read_bytes())
    at = data.index(b'"loss": ', data.index(b'"step": 1,')) + len(b'"loss": 0.')
    data[at] = ord("1") if data[at] != ord("1") else ord("2")
    (run_dir / "metrics.jsonl").write_bytes(bytes(data))


# (what was done to the logs, the words of the message). Checkpoint step 7 had seen 7 step
# records (steps 0-6) in each log, and metrics.jsonl the evaluation and the memory record
# (runtime/cost.py) of the phase that ends at step 4.
DAMAGE = {
    "metrics.jsonl-deleted": (
        lambda d: (d / "metrics.jsonl").unlink(),
        "metrics.jsonl: metrics.jsonl is missing: it held the 9 records up to step 7 that "
        "checkpoint step-00000007.pt expects",
    ),
    "lr.csv-cut-before-the-checkpoint": (
        cut_lr_csv,
        "lr.csv: lr.csv holds 3 of the 7 records up to step 7 that checkpoint step-00000007.pt expects",
    ),
    "metrics.jsonl-edited-before-the-checkpoint": (
        edit_metrics,
        "metrics.jsonl: metrics.jsonl was changed before step 7: its first 9 "
        "records differ from those checkpoint step-00000007.pt recorded",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_refuses_logs_that_lost_records_before_its_checkpoint(
    baseline: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resuming would continue a log with a hole in it (and `runs` would count the phases
    the log still shows): exit 2 naming the file, with the checkpoint and the run untouched."""
    run_dir = stopped_at(baseline, 7, tmp_path / "run")
    do, words = DAMAGE[damage]
    do(run_dir)
    before = fingerprint(run_dir)
    result = cli(capsys, "resume", run_dir)
    assert result.rc == 2, result.err
    assert result.err.startswith(f"error: {run_dir}/{words}"), result.err
    assert "Traceback" not in result.err and "resuming at step" not in result.err
    assert fingerprint(run_dir) == before


def test_check_logs_covers_trials_csv(tmp_path: Path) -> None:
    """trials.csv is appended like the others: an edited row before the checkpoint is refused."""
    from ftcompile.runtime.logs import Logs, check_logs

    from ftcompile.errors import RecipeError

    logs = Logs(tmp_path, ["head"], trials=True)
    logs.record({"type": "step", "step": 0})
    logs.trial_results([{"phase": "p", "k": 0, "label": "a", "val_loss": 0.5, "chosen": "true"}])
    state = {"step": 1, "logs": logs.sizes(), "log_digests": logs.digests()}
    logs.close()
    assert state["log_digests"]["trials.csv"]["lines"] == 2  # the header and one row
    check_logs(tmp_path, state, "step-00000001.pt")  # as written: accepted
    data = (tmp_path / "trials.csv").read_bytes()
    (tmp_path / "trials.csv").write_bytes(data[:-2] + b"X\n")  # the row's last character
    with pytest.raises(RecipeError, match="trials.csv was changed before step 1: its first 1 records differ"):
        check_logs(tmp_path, state, "step-00000001.pt")


def without_log_digests(path: Path) -> None:
    """The checkpoint as ftcompile before issue 17 wrote it: log sizes, no log digests."""
    state = torch.load(path, weights_only=True)
    state.pop("digest"), state.pop("log_digests")
    checkpoint.atomic_save({**state, "digest": checkpoint.content_digest(state)}, path)


@pytest.mark.slow
def test_an_older_checkpoint_without_log_digests_resumes_and_its_sizes_are_checked(
    baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = stopped_at(baseline, 7, tmp_path / "cut")
    without_log_digests(run_dir / "checkpoints" / "step-00000007.pt")
    cut_lr_csv(run_dir)
    recorded = torch.load(run_dir / "checkpoints" / "step-00000007.pt", weights_only=True)["logs"]["lr.csv"]
    result = cli(capsys, "resume", run_dir)
    assert result.rc == 2, result.err
    assert (
        f"lr.csv: lr.csv holds {(run_dir / 'lr.csv').stat().st_size} of the {recorded} bytes up to step 7 "
        "that checkpoint step-00000007.pt expects"
    ) in result.err

    run_dir = stopped_at(baseline, 7, tmp_path / "run")
    without_log_digests(run_dir / "checkpoints" / "step-00000007.pt")
    result = cli(capsys, "resume", run_dir)
    assert result.rc == 0 and "resuming at step 7 of 17" in result.err, result.err
    assert_same_run(baseline, run_dir)


# ---------------------------------------------------------------- issue 17 §7: a checkpoint of another plan


@pytest.mark.slow
def test_a_checkpoint_of_another_plan_as_the_newest_file_is_set_aside(
    baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copied in from another run (a good file: it loads and its digest matches): named, moved
    to damaged/ like a damaged one, and the run resumes bitwise from its own newest."""
    run_dir = stopped_at(baseline, 7, tmp_path / "run")
    state = torch.load(baseline / "checkpoints" / "step-00000010.pt", weights_only=True)
    state.pop("digest")
    state["plan_hash"] = "f" * 64
    foreign = run_dir / "checkpoints" / "step-00000010.pt"
    checkpoint.atomic_save({**state, "digest": checkpoint.content_digest(state)}, foreign)
    result = cli(capsys, "resume", run_dir)
    assert result.rc == 0, result.err
    assert (
        f"warning: checkpoint {foreign} belongs to another plan (ffffffff; this run's plan is "
        f"{json.loads((run_dir / 'plan.json').read_text())['hash'][:8]}); moved to "
        f"{run_dir / 'checkpoints' / 'damaged' / 'step-00000010.pt'}; falling back to the one before"
    ) in result.err
    assert "resuming at step 7 of 17" in result.err
    assert (run_dir / "checkpoints" / "damaged" / "step-00000010.pt").is_file()
    assert_same_run(baseline, run_dir)
