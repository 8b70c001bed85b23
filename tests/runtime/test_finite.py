"""A non-finite model is a failed run, not a result: parameters are checked at every
checkpoint and at the end, the validation loss at every evaluation. A last update that makes
the weights inf (the loss before it was finite) ends with exit 2, a message naming the step
and the first bad parameter, no model.pt, and the previous checkpoint intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ftcompile.runtime.loop import check_finite, first_non_finite
from ftcompile.runtime.trials import Diverged
from runtime_helpers import cli, recipe_text, write_recipe
from torch import nn

# `blowup` takes one step at lr 3e38 (near fp32's largest) with weight decay 1e30: the update
# lr * (grad + 1e30 * w) overflows to inf for every nonzero weight, so fc.weight is inf after it
# while the loss of that step (computed before the update) was finite.
PHASES = """
[phases.fine]
train = ["head"]
steps = 2
lr = { head = 0.05 }
bn = "frozen"

[phases.blowup]
after = ["fine"]
train = ["head"]
steps = 1
lr = { head = 3e38 }
weight_decay = { head = 1e30 }
bn = "frozen"
"""


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_first_non_finite_tensor_is_named(bad: float) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    assert first_non_finite(model) is None
    with torch.no_grad():
        model[2].weight[0, 1] = bad
    assert first_non_finite(model) == "2.weight"
    with torch.no_grad():
        model[1].running_var[0] = bad  # buffers count too
    assert first_non_finite(model) == "1.running_var"
    with pytest.raises(Diverged, match=r"parameter 1.running_var is not finite after step 7"):
        check_finite(model, 7, "nothing written")


@pytest.mark.slow
def test_a_last_update_to_inf_fails_the_run_and_keeps_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(
        tmp_path, recipe_text("blowup", PHASES, run='checkpoint_every = "1 steps"\neval_every = "100 steps"')
    )
    run_dir = tmp_path / "run"
    result = cli(capsys, "run", recipe, "--out", run_dir)
    assert result.rc == 2 and "Traceback" not in result.err, result.err
    assert "parameter fc.weight is not finite after step 3" in result.err, result.err
    assert not (run_dir / "model.pt").exists()
    # The step-2 checkpoint (the end of `fine`) is intact and finite; no checkpoint of step 3.
    files = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))
    assert files[-1] == "step-00000002.pt", files
    state = torch.load(run_dir / "checkpoints" / files[-1], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["type"] == "step"] == [0, 1, 2]
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e30 for r in steps if r["type"] == "step")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_non_finite_validation_loss_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weights that are finite but so large that the logits overflow: the evaluation says so."""
    # Without the weight decay the step-3 update leaves fc.weight finite (about 3e38 * grad)
    # while the logits of the validation images overflow to inf, and their loss is nan.
    phases = PHASES.replace("weight_decay = { head = 1e30 }\n", "")
    recipe = write_recipe(tmp_path, recipe_text("bigval", phases, run='eval_every = "100 steps"'))
    run_dir = tmp_path / "run"
    result = cli(capsys, "run", recipe, "--out", run_dir)
    assert result.rc == 2 and "Traceback" not in result.err, result.err
    assert "the validation loss is nan at step 3" in result.err, result.err
    assert not (run_dir / "model.pt").exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
