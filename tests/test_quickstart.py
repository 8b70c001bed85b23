"""The README's main job, end to end: the quickstart trains its upstream recipe first, then
really fine-tunes (from weights that never saw digits 5-9) to a high accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftcompile.arch import build_model
from ftcompile.plan import Plan

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"


@pytest.mark.slow
def test_quickstart_fine_tunes(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ftcompile", "run", str(QUICKSTART)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,  # ~75 s on an idle 2-core CPU
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / out.stdout.strip().splitlines()[-1]
    assert run_dir.parent.name == "quickstart"
    upstream = list((tmp_path / "runs" / "digits-pretrain").glob("*/model.pt"))
    assert len(upstream) == 1  # trained first, because it did not exist
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    first, last = evals[0], evals[-1]
    assert last["top1"] >= 0.9, last
    assert last["top1"] > first["top1"]
    # model.pt loads into the torchvision model with the recipe's head, keys as torchvision names them
    plan = Plan.load(run_dir / "plan.json")
    model = build_model("resnet18", 5, plan.model.head, device="cpu")
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True), strict=True)
