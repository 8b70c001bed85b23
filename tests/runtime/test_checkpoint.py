"""Checkpoints: atomic (a crash mid-write leaves the previous one loadable and no torn file),
complete (model, optimizer, scheduler, step, RNG states, scaler) and loadable with
weights_only=True."""

from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path

import ftcompile.runtime.checkpoint as checkpoint
import numpy as np
import pytest
import torch
from ftcompile.runtime.optim import build_optimizer
from runtime_helpers import FullDisk, Recorded

from ftcompile.arch import build_model
from ftcompile.errors import RecipeError


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


def checkpoint_size(tmp_path: Path) -> int:
    checkpoint.save(tmp_path / "probe", 6, payload(6))
    return (tmp_path / "probe" / "step-00000006.pt").stat().st_size


@pytest.mark.parametrize("fraction", [0.0, 1e-4, 0.01, 0.25, 0.5, 0.75, 0.999, 1.0])
@pytest.mark.parametrize("same_step", [False, True], ids=["new-step", "same-step"])
def test_a_write_that_fails_part_way_leaves_no_torn_file_and_replaces_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fraction: float, same_step: bool
) -> None:
    """The disk fills after any number of bytes (0 .. all of them, then the fsync): the save
    is one RecipeError naming the file, no step-*.pt is torn, no temporary file stays, and
    the good checkpoints, including one of the same step, are byte for byte what they were."""
    budget = int(fraction * checkpoint_size(tmp_path))
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 3, payload(3))
    checkpoint.save(folder, 6, payload(6))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(checkpoint, "_open_new", lambda path: FullDisk(path, budget))
    if fraction == 1.0:  # every byte fits; the disk then fails the fsync
        monkeypatch.setattr(
            checkpoint.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        )
    step = 6 if same_step else 9
    with pytest.raises(RecipeError) as caught:
        checkpoint.save(folder, step, payload(99))
    monkeypatch.undo()

    assert f"step-{step:08d}.pt: cannot write: No space left on device" in str(caught.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    state = checkpoint.load_newest(folder)
    assert state is not None and state["step"] == 6 and torch.equal(state["model"]["w"], payload(6)["model"]["w"])


def test_save_fsyncs_the_file_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else f"fsync file {os.fstat(fd).st_size}")
        real_fsync(fd)

    def replace(src: Path, dst: Path) -> None:
        calls.append(f"rename {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    checkpoint.save(tmp_path, 3, payload(3))
    monkeypatch.undo()
    size = (tmp_path / "step-00000003.pt").stat().st_size
    # the whole file is on disk before its name appears, and the name is on disk after
    assert calls == [
        f"fsync file {size}",
        f"rename .step-00000003.pt.tmp-{os.getpid()} -> step-00000003.pt",
        "fsync folder",
    ]


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
    torn = newest.read_bytes()[:777]
    newest.write_bytes(torn)  # damaged after the fact (disk, copy)
    warnings: list[str] = []
    state = checkpoint.load_newest(folder, warn=warnings.append)
    assert state is not None and state["step"] == 3
    assert (folder / "damaged" / "step-00000006.pt").read_bytes() == torn  # evidence is never deleted
    assert len(warnings) == 1 and str(newest) in warnings[0] and "does not load" in warnings[0]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gauss in numpy's state
    random.gauss(0, 1)
    path = tmp_path / "rng.pt"
    torch.save(checkpoint.rng_state(), path)
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.standard_normal(),
        torch.rand(3),
    )
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(torch.load(path, weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(), torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_run_checkpoint_holds_everything_and_loads_weights_only(run_a: Recorded) -> None:
    plan = run_a.plan
    files = checkpoint.list_checkpoints(run_a.run_dir / "checkpoints")
    # keep_checkpoints = "boundaries": once finished, the phase starts; the rest deleted
    assert [int(p.stem.split("-")[1]) for p in files] == [4, 10, 13]
    state = torch.load(files[2], map_location="cpu", weights_only=True)
    assert set(state) == {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "step",
        "rng",
        "next_change",
        "plan_hash",
        "logs",
        "log_digests",
        "digest",
        "watch",
        "trials",
        "executed",
    }
    assert state["step"] == 13 and state["plan_hash"] == plan.hash
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["scheduler"] is None  # phase `constant` has no scheduler
    assert set(state["logs"]) == set(state["log_digests"]) == {"metrics.jsonl", "lr.csv"}
    assert all(state["log_digests"][name]["size"] == size for name, size in state["logs"].items())
    # the next change to apply is the first one after the checkpoint
    assert (
        plan.changes[state["next_change"] - 1].op == "checkpoint" and plan.changes[state["next_change"] - 1].step == 13
    )

    model = build_model("resnet18", 3, None, device="cpu")
    model.load_state_dict(state["model"], strict=True)
    optimizer = build_optimizer(model, plan)
    optimizer.load_state_dict(state["optimizer"])
    assert [g["name"] for g in optimizer.param_groups] == plan.param_group_names

    last = torch.load(files[1], map_location="cpu", weights_only=True)
    assert last["scheduler"]["_step_count"] > 0  # CyclicLR of phase `cyclic`, at its end
    assert last["rng"]["torch"].dtype == torch.uint8 and isinstance(last["scaler"], dict)
