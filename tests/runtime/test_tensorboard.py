"""`[run] log = ["jsonl", "tensorboard"]`: event files that say what metrics.jsonl says."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from runtime_helpers import recipe_text, write_recipe

from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError


@pytest.mark.slow
def test_event_files_match_metrics(used_run: tuple[Path, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = used_run
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert loss == pytest.approx({r["step"]: r["loss"] for r in steps}, rel=1e-6)
    for group in steps[0]["lr"]:
        lr = {e.step: e.value for e in acc.Scalars(f"lr/{group}")}
        assert lr == pytest.approx({r["step"]: r["lr"][group] for r in steps}, rel=1e-6)
    for key, tag in (("val_loss", "val/loss"), ("top1", "val/top1"), ("top5", "val/top5")):
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)] == [
            (r["step"], r[key]) for r in evals
        ]
    assert len(acc.Scalars("train/images_per_s")) == len(steps)
    assert {e.step: e.value for e in acc.Scalars("phase/index")} == {0: 0, 4: 1}


def test_tensorboard_missing_is_a_compile_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    phases = '[phases.a]\ntrain = ["head"]\nsteps = 2\nlr = { head = 0.01 }\n'
    recipe = write_recipe(tmp_path, recipe_text("tb", phases, run='log = ["jsonl", "tensorboard"]'))
    with pytest.raises(RecipeError) as info:
        compile_recipe(recipe)
    err = info.value
    assert err.key == "run.log" and "pip install 'ftcompile[tensorboard]'" in str(err) and err.line is not None


def test_default_log_keeps_the_plan_hash(tmp_path: Path) -> None:
    """`log` is left out of plan.json when it is the default: plans made before it keep their hash."""
    phases = '[phases.a]\ntrain = ["head"]\nsteps = 2\nlr = { head = 0.01 }\n'
    plain = compile_recipe(write_recipe(tmp_path, recipe_text("tb", phases), "a.toml"))
    same = compile_recipe(write_recipe(tmp_path, recipe_text("tb", phases, run='log = ["jsonl"]'), "b.toml"))
    board = compile_recipe(
        write_recipe(tmp_path, recipe_text("tb", phases, run='log = ["jsonl", "tensorboard"]'), "c.toml")
    )
    assert "log" not in plain.to_dict()["run"] and "log" not in same.to_dict()["run"]
    assert board.to_dict()["run"]["log"] == ["jsonl", "tensorboard"] and board.hash != plain.hash
