"""torchrun + DDP on CPU (gloo, 2 processes): ranks stay in sync across unfreezing, a killed
2-process run resumes bitwise, and the loss matches a 1-process run with the same global batch.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runtime_helpers import metrics_bytes

pytestmark = pytest.mark.slow

# Three phases that unfreeze twice. BatchNorm parameters sit in a group that never trains
# and `bn = "frozen"` keeps those layers in eval mode, so a forward pass is per-sample: two
# ranks with B/2 images each then compute exactly the gradient of one process with B
# images, up to the order of float additions in the all-reduce. 10 steps per phase stay
# inside the first epoch (no padded last batch).
RECIPE = """
name = "ddp"
seed = 0
[model]
arch = "resnet18"
weights = "none"
[data]
builtin = "digits"
classes = ["0", "1", "2", "3", "4"]
image_size = 32
batch_size = 16
workers = 0
augment = [{ op = "RandomAffine", degrees = 10 }]
[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4
[groups]
norms = ["*bn*", "*downsample.1"]
layer3 = ["layer3.*.conv*", "layer3.*.downsample.0"]
layer4 = ["layer4.*.conv*", "layer4.*.downsample.0"]
head = ["head"]
[phases.head]
train = ["head"]
steps = 10
lr = { head = 0.05 }
bn = "frozen"
[phases.layer4]
after = ["head"]
train = ["head", "layer4"]
steps = 10
lr = { head = 0.02, layer4 = "head / 10" }
bn = "frozen"
scheduler = { type = "CosineAnnealingLR" }
[phases.layer3]
after = ["layer4"]
train = ["head", "layer4", "layer3"]
steps = 10
lr = { head = 0.01, layer4 = "head / 10", layer3 = "layer4 / 10" }
bn = "frozen"
scheduler = { type = "OneCycleLR" }
[run]
device = "cpu"
eval_every = "100 steps"
checkpoint_every = "4 steps"
"""

# The classic bug, on purpose: keep the DDP wrapper built when only the head trained.
STALE_WRAPPER = """
import sys
import ftcompile.runtime.distributed as rd
original, calls = rd.wrap, []
def stale(model, d, device):
    calls.append(1)
    if len(calls) <= 1:
        stale.net = original(model, d, device)
    return stale.net
rd.wrap = stale
from ftcompile.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted 2-process run and one 1-process run of the same recipe."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "r.toml").write_text(RECIPE)
    for name, cmd in (("two", torchrun("-m", "ftcompile")), ("one", [sys.executable, "-m", "ftcompile"])):
        out = subprocess.run(
            [*cmd, "run", "r.toml", "--out", name], cwd=root, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
    return {"root": root, "two": root / "two", "one": root / "one"}


def test_ranks_bitwise_equal_after_each_phase(runs: dict[str, Path]) -> None:
    syncs = records(runs["two"], "sync")
    assert [s["step"] for s in syncs] == [10, 20, 30]  # every phase end
    for s in syncs:
        assert s["ranks"] == 2 and len(set(s["digests"])) == 1
    assert len({s["digests"][0] for s in syncs}) == 3  # and the parameters did change


def test_stale_ddp_wrapper_is_caught(runs: dict[str, Path]) -> None:
    """Without the rebuild, newly unfrozen layer4 skips the all-reduce and the ranks drift."""
    root = runs["root"]
    (root / "stale.py").write_text(STALE_WRAPPER)
    out = subprocess.run(
        [*torchrun("stale.py"), "run", "r.toml", "--out", "stale"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode != 0
    assert "ranks drifted apart at step 20" in out.stdout + out.stderr


def test_loss_tracks_one_process(runs: dict[str, Path]) -> None:
    """Same global batch: per-step losses agree to float-summation error (measured ~3e-6)."""
    one = [r["loss"] for r in records(runs["one"], "step")]
    two = [r["loss"] for r in records(runs["two"], "step")]
    assert len(one) == len(two) == 30
    assert max(abs(a - b) for a, b in zip(one, two, strict=False)) < 1e-4


def test_killed_two_process_run_resumes_bitwise(runs: dict[str, Path]) -> None:
    root = runs["root"]
    proc = subprocess.Popen(
        [*torchrun("-m", "ftcompile"), "run", "r.toml", "--out", "killed"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    target = random.Random(1).choice([4, 8, 10, 12, 16])  # a checkpoint in phase 1, 2 or 3
    folder = root / "killed" / "checkpoints"

    def newest() -> int:
        return max((int(p.stem.split("-")[1]) for p in folder.glob("step-*.pt")), default=-1) if folder.is_dir() else -1

    deadline = time.time() + 300
    while newest() < target and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    # torchrun starts its workers in sessions of their own: kill the whole tree, as a crash would.
    tree = [proc.pid, *descendants(proc.pid)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    while any(alive(pid) for pid in tree):
        time.sleep(0.01)
    assert not (root / "killed" / "model.pt").exists()
    out = subprocess.run(
        [*torchrun("-m", "ftcompile"), "resume", "killed"], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert metrics_bytes(root / "killed") == metrics_bytes(runs["two"]), f"killed at checkpoint {target}"
    assert (root / "killed" / "lr.csv").read_bytes() == (runs["two"] / "lr.csv").read_bytes()
    a = torch.load(root / "killed" / "model.pt", weights_only=True)
    b = torch.load(runs["two"] / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nproc_option_starts_torchrun(runs: dict[str, Path]) -> None:
    """`ftcompile run --nproc 2` is the same run as `torchrun --nproc_per_node=2 -m ftcompile run`,
    also from a folder holding a `runtime/` package of the user's own (`python -m` and
    `torchrun -m` put the working folder first on sys.path; ftcompile's runtime installs as
    ftcompile.runtime, so the user's never shadows it)."""
    root = runs["root"]
    (root / "runtime").mkdir()
    (root / "runtime" / "__init__.py").write_text('raise ImportError("the user\'s own runtime package")\n')
    planned = subprocess.run(
        [sys.executable, "-m", "ftcompile", "plan", "r.toml"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert planned.returncode == 0 and "plan " in planned.stdout, planned.stderr[-3000:]
    out = subprocess.run(
        [sys.executable, "-m", "ftcompile", "run", "r.toml", "--nproc", "2", "--out", "nproc"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert metrics_bytes(root / "nproc") == metrics_bytes(runs["two"])
