"""What `ftcompile plan` shows a new user (issue 9): at most 100 columns unless --wide,
evaluations placed within their phase, -o prints the summary only, the checkpoint policy
(`checkpoint_every = "never"`, `keep_checkpoints`) stated and carried by the plan."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.plan import Plan
from ftcompile.render import WIDTH, render

Writer = Callable[..., Path]


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().out


def three_epochs(tiny: str, run: str = "") -> str:
    return tiny.replace("epochs = 1\nlr = { head = 0.01", "epochs = 3\nlr = { head = 0.01") + (
        f"\n[run]\n{run}\n" if run else ""
    )


def test_mid_phase_evaluations_say_where_they_are(write: Writer, tiny: str) -> None:
    out = render(compile_recipe(write(three_epochs(tiny))), max_changes=10**9)
    assert "       46  evaluate (full, after epoch 1 of 3)" in out
    assert "       69  checkpoint (full, after epoch 2 of 3)" in out
    assert "       92  evaluate (end of full)" in out
    half = render(compile_recipe(write(three_epochs(tiny, 'eval_every = "0.5 epoch"'))), max_changes=10**9)
    assert "evaluate (full, after 0.522 of 3 epochs)" in half  # 12 of 23 steps


def test_long_lines_fit_100_columns_and_wide_keeps_them(write: Writer, tiny: str) -> None:
    # a scheduler with many arguments: its change line would be wider than 100 columns
    text = tiny.replace(
        'lr = { head = 0.01, body = "head / 10" }',
        'lr = { head = 0.01, body = "head / 10" }\nscheduler = { type = "OneCycleLR", pct_start = 0.25, '
        'div_factor = 20, anneal_strategy = "cos", three_phase = true }',
    )
    plan = compile_recipe(write(text))
    narrow, wide = render(plan), render(plan, wide=True)
    assert max(map(len, narrow.splitlines())) <= WIDTH < max(map(len, wide.splitlines()))
    # the same words, only broken across lines
    assert narrow.split("changes (")[1].split() == wide.split("changes (")[1].split()


def test_output_file_prints_the_summary_only(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path
) -> None:
    rc, out = run(capsys, "plan", write(tiny), "-o", tmp_path / "plan.json")
    assert rc == 0
    assert out.splitlines()[0].startswith("plan ") and "\nphase " in out and "\ncheckpoints " in out
    assert "changes (" not in out and "feature cache" not in out
    assert out.endswith(f"wrote plan: {tmp_path / 'plan.json'}\n")


def test_default_policy_is_not_in_plan_json(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    assert plan.run.keep_checkpoints == "boundaries" and "keep_checkpoints" not in plan.to_dict()["run"]
    kept = compile_recipe(write(three_epochs(tiny, 'keep_checkpoints = "all"')))
    assert kept.to_dict()["run"]["keep_checkpoints"] == "all"
    again = Plan.from_dict(json.loads(kept.to_json()))
    assert again.run.keep_checkpoints == "all" and again.hash == kept.hash


@pytest.mark.parametrize(
    ("keep", "steps", "said"),
    [
        ("boundaries", [23], "kept once finished: steps 23"),  # a phase start: trials, lr-find --from
        ("all", [23, 92], "kept once finished: steps 23, 92"),
        ("last", [23, 92], "kept once finished: steps 92"),
        ("none", [], "none written"),
    ],
)
def test_checkpoint_every_never(write: Writer, tiny: str, keep: str, steps: list[int], said: str) -> None:
    plan = compile_recipe(write(three_epochs(tiny, f'checkpoint_every = "never"\nkeep_checkpoints = "{keep}"')))
    assert plan.run.checkpoint_every == 0
    assert [c.step for c in plan.changes if c.op == "checkpoint"] == steps
    assert said in render(plan).replace("\n             ", " ")


def test_a_bad_checkpoint_every(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    path = write(tiny + '\n[run]\ncheckpoint_every = "sometimes"\n')
    capsys.readouterr()
    assert main(["plan", str(path)]) == 2
    assert '"never"' in capsys.readouterr().err
