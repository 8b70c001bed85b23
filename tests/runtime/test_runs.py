"""summary.json and `ftcompile runs`: finished, failed, running and interrupted runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ftcompile.runtime.loop import Hooks, Session, StepInfo, observe
from runtime_helpers import child_env, cli, recipe_text, write_recipe

from ftcompile.errors import RecipeError

pytestmark = pytest.mark.slow


def test_summary_of_a_finished_run(used_run: tuple[Path, str]) -> None:
    run_dir, _ = used_run
    s = json.loads((run_dir / "summary.json").read_text())
    evals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert s["status"] == "finished" and s["error"] is None and s["step"] == s["total_steps"] == 8
    assert s["phases_done"] == ["warm", "full"]
    assert s["phases"]["warm"]["metrics"]["top1"] == [e for e in evals if e["step"] == 4][-1]["top1"]
    assert s["final"]["top1"] == evals[-1]["top1"]
    assert s["best"]["top1"] == max(e["top1"] for e in evals)
    assert s["wall_s"] > 0


def test_runs_lists_finished_and_failed(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = used_run

    # A run that fails mid-phase: a hook raises the error a diverging loss raises.
    class Boom(Hooks):
        def on_step(self, session: Session, info: StepInfo) -> None:
            if info.step == 1:
                raise RecipeError("loss became nan at step 2", key="phases", suggestion="lower the learning rate")

    phases = '[phases.boom]\ntrain = ["head"]\nsteps = 3\nlr = { head = 0.01 }\n'
    recipe = write_recipe(tmp_path, recipe_text("boom", phases, batch=16))
    failed = tmp_path / "runs" / "boom"
    with observe(Boom()):
        assert cli(capsys, "run", recipe, "--out", failed).rc == 2
    s = json.loads((failed / "summary.json").read_text())
    assert s["status"] == "failed" and "loss became" in s["error"] and s["step"] == 2
    shutil.copytree(run_dir, tmp_path / "runs" / "used")  # runs does not follow symlinks (no loops)
    r = cli(capsys, "runs", tmp_path / "runs", "--json")
    rows = {Path(row["path"]).name: row for row in json.loads(r.out)}
    assert rows["used"]["status"] == "finished" and rows["used"]["phases_done"] == 2
    assert rows["boom"]["status"] == "failed" and "loss became" in rows["boom"]["error"]
    r = cli(capsys, "runs", tmp_path / "runs")
    assert r.rc == 0 and "finished" in r.out and "failed" in r.out and "loss became" in r.out
    r = cli(capsys, "runs", tmp_path / "nowhere")
    assert r.rc == 2 and "not a folder" in r.err


def test_running_then_interrupted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A live process holds the run: running; killed (nothing can be written): interrupted."""
    phases = '[phases.long]\ntrain = ["head"]\nsteps = 100000\nlr = { head = 0.01 }\n'
    recipe = write_recipe(tmp_path, recipe_text("long", phases, batch=16))
    run_dir = tmp_path / "runs" / "long"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftcompile", "run", str(recipe), "--out", str(run_dir)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 900  # start-up on a loaded machine
        while not (run_dir / "summary.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        r = cli(capsys, "runs", tmp_path / "runs", "--json")
        assert json.loads(r.out)[0]["status"] == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    r = cli(capsys, "runs", tmp_path / "runs", "--json")
    assert json.loads(r.out)[0]["status"] == "interrupted"


def test_resumed_summary_reads_only_what_the_checkpoint_logged(used_run: tuple[Path, str], tmp_path: Path) -> None:
    """On resume the evaluations after the checkpoint are logged again: not counted twice."""
    import shutil

    from ftcompile.runtime.status import RunStatus

    from ftcompile.plan import Plan

    run_dir, _ = used_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    lines = (copy / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    # The checkpoint at step 4 had logged everything up to the eval at step 4 (the phase end).
    upto = next(i for i, x in enumerate(lines) if b'"eval"' in x and b'"step": 4,' in x) + 1
    status = RunStatus(
        copy, Plan.load(copy / "plan.json"), {"logs": {"metrics.jsonl": len(b"".join(lines[:upto]))}, "step": 4}
    )
    assert [e["step"] for e in status.evals] == [2, 4] and status.step == 4 and status.attempts == 2
    status.write("running")
    s = json.loads((copy / "summary.json").read_text())
    assert s["phases_done"] == ["warm"] and s["wall_s"] >= json.loads((run_dir / "summary.json").read_text())["wall_s"]
