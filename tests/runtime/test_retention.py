"""Checkpoint retention ([run] keep_checkpoints), the finished-run resume, Ctrl-C, top-k,
step timing and the progress bar: what a new user tripped over (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ftcompile.runtime import checkpoint
from ftcompile.runtime.logs import Progress
from ftcompile.runtime.loop import Hooks, Session, StepInfo, evaluate, observe
from runtime_helpers import PHASES_A, Recorded, cli, metrics, recipe_text, write_recipe
from torch import nn

from ftcompile.plan import checkpoints_kept
from ftcompile.render import checkpoints_line


def steps_on_disk(run_dir: Path) -> list[int]:
    return [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(run_dir / "checkpoints")]


@pytest.mark.parametrize(
    ("policy", "finished", "wanted"),
    [
        ("boundaries", False, {4, 10, 12}),
        ("boundaries", True, {4, 10}),
        ("all", True, {3, 4, 7, 10, 12}),
        ("last", False, {12}),
        ("last", True, {12}),
        ("none", False, {12}),
        ("none", True, set()),
    ],
)
def test_kept(policy: str, finished: bool, wanted: set[int]) -> None:
    assert checkpoints_kept([3, 4, 7, 10, 12], {4, 10}, policy, finished) == wanted


def test_a_finished_run_keeps_the_phase_starts(run_a: Recorded) -> None:
    """Default policy: after the run only the checkpoints trials and lr-find --from start from."""
    starts = [ph.begin for ph in run_a.plan.phases[1:]]
    assert steps_on_disk(run_a.run_dir) == starts
    assert f"kept once finished: steps {', '.join(map(str, starts))}" in checkpoints_line(run_a.plan)


def fingerprint(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_resume_of_a_finished_run_touches_nothing(run_a: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    before = fingerprint(run_a.run_dir)
    result = cli(capsys, "resume", run_a.run_dir)
    assert result.rc == 0
    assert result.out.strip() == f"run is finished: {run_a.run_dir}"
    assert fingerprint(run_a.run_dir) == before


class _Interrupt(Hooks):
    def on_step(self, session: Session, info: StepInfo) -> None:
        if info.step == 5:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, recipe_text("tiny-ctrl-c", PHASES_A, run='checkpoint_every = "never"'))
    run_dir = tmp_path / "run"
    with observe(_Interrupt()):
        result = cli(capsys, "run", recipe, "--out", run_dir)
    assert result.rc == 130
    assert result.err.strip().endswith(f"interrupted; continue with `ftcompile resume {run_dir}`")
    assert steps_on_disk(run_dir) == [4]  # "never": the phase end before the interrupt, nothing periodic
    result = cli(capsys, "resume", run_dir)
    assert result.rc == 0, result.err
    # the summary comes from metrics.jsonl: the phase trained before the resume has its numbers
    warm = next(line for line in result.out.splitlines() if line.startswith("warm "))
    assert "-" not in warm.split(")", 1)[1], result.out
    assert steps_on_disk(run_dir) == [ph.begin for ph in run_a_phases(run_dir)[1:]]


def run_a_phases(run_dir: Path) -> Any:
    from ftcompile.plan import Plan

    return Plan.load(run_dir / "plan.json").phases


def test_step_records_carry_their_timing(run_a: Recorded) -> None:
    steps = [r for r in metrics(run_a.run_dir) if r["type"] == "step"]
    batch = run_a.plan.data.batch_size
    for r in steps:
        assert r["seconds"] > 0
        # a full batch over the step's wall time; the last batch may be smaller. Both figures are
        # rounded (seconds to 1 us, images/s to 0.01), hence the relative 1e-4 and the 0.01.
        assert r["images_per_s"] <= batch / r["seconds"] * (1 + 1e-4) + 0.01


@pytest.mark.parametrize("classes", [3, 5, 6])
def test_top5_only_with_more_than_5_classes(classes: int) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.arange(12) % classes
    no_autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    out = evaluate(nn.Linear(4, classes), [(x, y)], torch.device("cpu"), no_autocast, classes)
    assert ("top5" in out) == (classes > 5)
    assert 0.0 <= out["top1"] <= out.get("top5", 1.0) <= 1.0


def test_progress_bar_and_eval_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal the bar is tqdm's on stderr; evaluation lines go to stdout, whole."""
    progress = Progress(10, enabled=True)
    for step in range(1, 11):
        progress.update(step, 0.5, 0.01, 4)
        if step == 5:
            progress.write("eval  line")
    progress.done()
    out, err = capsys.readouterr()
    assert out == "eval  line\n"
    assert "10/10" in err and "loss 0.5000" in err
    quiet = Progress(10, enabled=False)
    quiet.update(1, 0.5, 0.01, 4)
    quiet.write("eval  line")
    quiet.done()
    out, err = capsys.readouterr()
    assert (out, err) == ("eval  line\n", "")
