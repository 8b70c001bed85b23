"""Checkpoints: atomic (a crash mid-write leaves the previous one loadable and no torn file),
complete (model, optimizer, scheduler, step, RNG states, scaler) and loadable with
weights_only=True."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

import ftcompile.runtime.checkpoint as checkpoint
from ftcompile.runtime.optim import build_optimizer
from runtime_helpers import Recorded
from ftcompile.arch import build_model


def payload(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "next_change": 1, "plan_hash": "h", "logs": {}}


def test_save_then_load_newest(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    for step in (3, 6, 9):
        checkpoint.save(folder, step, payload(step))
    # only the newest KEEP = 2 are kept; names sort by step
    assert [p.name for p in checkpoint.list_checkpoints(folder)] == ["step-00000006.pt", "step-00000009.pt"]
    state = checkpoint.load_newest(folder)
    assert state is not None and state["step"] == 9 and torch.equal(state["model"]["w"], torch.full((64, 64), 9.0))
    assert checkpoint.load_newest(tmp_path / "nothing-here") is None


def test_crash_during_write_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 3, payload(3))
    before = (folder / "step-00000003.pt").read_bytes()
    real_save = torch.save

    def torn_save(obj: object, fh: object, *args: object, **kwargs: object) -> None:
        """Write the start of a real checkpoint, then die (disk full, kill, power cut)."""
        real_save(obj, fh, *args, **kwargs)
        fh.seek(0)
        fh.truncate(1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(OSError):
        checkpoint.save(folder, 6, payload(6))
    monkeypatch.undo()

    assert sorted(p.name for p in folder.iterdir()) == ["step-00000003.pt"]  # no torn step-6, no temp file
    assert (folder / "step-00000003.pt").read_bytes() == before
    state = checkpoint.load_newest(folder)
    assert state is not None and state["step"] == 3


def test_killed_writer_leaves_only_a_temp_file_that_is_ignored_then_removed(tmp_path: Path) -> None:
    """A SIGKILL between open() and rename leaves `.step-N.pt.tmp-PID`: never listed, never
    loaded, and removed by the next save."""
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 3, payload(3))
    torn = folder / ".step-00000006.pt.tmp-12345"
    torn.write_bytes((folder / "step-00000003.pt").read_bytes()[:500])
    assert [p.name for p in checkpoint.list_checkpoints(folder)] == ["step-00000003.pt"]
    assert checkpoint.load_newest(folder)["step"] == 3
    checkpoint.save(folder, 6, payload(6))
    assert not torn.exists()


def test_damaged_newest_falls_back_and_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 3, payload(3))
    checkpoint.save(folder, 6, payload(6))
    newest = folder / "step-00000006.pt"
    newest.write_bytes(newest.read_bytes()[:777])  # damaged after the fact (disk, copy)
    state = checkpoint.load_newest(folder)
    assert state is not None and state["step"] == 3
    assert newest.exists()  # evidence is never deleted


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gauss in numpy's state
    random.gauss(0, 1)
    path = tmp_path / "rng.pt"
    torch.save(checkpoint.rng_state(), path)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(torch.load(path, weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(), torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_run_checkpoint_holds_everything_and_loads_weights_only(run_a: Recorded) -> None:
    plan = run_a.plan
    files = checkpoint.list_checkpoints(run_a.run_dir / "checkpoints")
    assert [int(p.stem.split("-")[1]) for p in files] == [13, 17]  # phase ends; the older ones deleted
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "step", "rng", "next_change", "plan_hash", "logs"}
    assert state["step"] == 13 and state["plan_hash"] == plan.hash
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["scheduler"] is None  # phase `constant` has no scheduler
    assert set(state["logs"]) == {"metrics.jsonl", "lr.csv"}
    # the next change to apply is the first one after the checkpoint
    assert plan.changes[state["next_change"] - 1].op == "checkpoint" and plan.changes[state["next_change"] - 1].step == 13

    model = build_model("resnet18", 3, None, device="cpu")
    model.load_state_dict(state["model"], strict=True)
    optimizer = build_optimizer(model, plan)
    optimizer.load_state_dict(state["optimizer"])
    assert [g["name"] for g in optimizer.param_groups] == plan.param_group_names

    last = torch.load(files[1], map_location="cpu", weights_only=True)
    assert last["scheduler"]["_step_count"] > 0  # StepLR of phase `stepped`
    assert last["rng"]["torch"].dtype == torch.uint8 and isinstance(last["scaler"], dict)
