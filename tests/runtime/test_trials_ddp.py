"""Trials under torchrun (gloo, 2 processes): every rank runs the same alternatives, chooses
the same one, and the ranks stay bitwise equal (checked at every alternative's end)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RECIPE = """
name = "ddp-trials"
seed = 0
[model]
arch = "resnet18"
weights = "none"
[data]
builtin = "digits"
classes = ["0", "1", "2"]
image_size = 16
batch_size = 16
workers = 0
[optimizer]
type = "SGD"
momentum = 0.9
[groups]
late = ["stage3", "stage4"]
head = ["head"]
rest2 = ["stem", "stage1", "stage2"]
[phases.head]
train = ["head"]
steps = 2
lr = { head = 0.05 }
[phases.late]
after = ["head"]
train = ["head", "late"]
steps = 3
lr = { head = 0.02, late = "head / 10" }
[phases.late.trials]
"lr.late" = ["head / 3", "head / 30"]
[phases.tail]
after = ["late"]
train = ["head"]
steps = 2
lr = { head = 0.01 }
[run]
device = "cpu"
eval_every = "100 steps"
checkpoint_every = "100 steps"
"""


def test_two_ranks_run_the_same_alternatives_and_stay_equal(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(RECIPE)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ftcompile",
        "run",
        "r.toml",
        "--out",
        "two",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "two"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    syncs = [r for r in recs if r["type"] == "sync"]
    # One check at each phase end: head, each alternative of late, tail; every rank's digest equal.
    assert [r["step"] for r in syncs] == [2, 5, 5, 7]
    assert all(r["ranks"] == 2 and len(set(r["digests"])) == 1 for r in syncs)
    rows = (run / "trials.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and sum(row.endswith(",true") for row in rows) == 1
