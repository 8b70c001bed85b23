"""Helpers for the runtime tests: tiny recipes, in-process CLI runs, instrumented runs.

The tiny model is a real torchvision resnet18 on 16x16 digits (3 or 5 classes), a handful of
steps per phase: every run takes a few seconds on a CPU. Runs go through `ftcompile.cli.main`
in this process (no interpreter start-up) except where a test needs a separate process.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from ftcompile.runtime.loop import TIMING_FIELDS, Hooks, Session, observe

from ftcompile.cli import main
from ftcompile.plan import Plan

REPO = Path(__file__).resolve().parents[2]

# The three recipe groups of every resnet18 recipe here.
GROUPS = """
[groups]
early = ["stem", "stage1", "stage2"]
late = ["stage3", "stage4"]
head = ["head"]
"""


def recipe_text(
    name: str,
    phases: str,
    *,
    optimizer: str = 'type = "SGD"\nmomentum = 0.9\nweight_decay = 1e-4',
    classes: str = '["0", "1", "2"]',
    weights: str = "none",
    head: str = "",
    data: str | None = None,
    run: str = 'checkpoint_every = "100 steps"\neval_every = "100 steps"',
    batch: int = 16,
) -> str:
    """A resnet18 recipe on 16x16 digits; `phases` is the TOML of its [phases.*] tables."""
    data = data or f'builtin = "digits"\nclasses = {classes}\nimage_size = 16\nbatch_size = {batch}\nworkers = 0'
    return (
        f'name = "{name}"\nseed = 0\n\n[model]\narch = "resnet18"\nweights = "{weights}"\n{head}\n'
        f"[data]\n{data}\n\n[optimizer]\n{optimizer}\n{GROUPS}\n{phases}\n"
        f'[run]\ndevice = "cpu"\n{run}\n'
    )


def write_recipe(folder: Path, text: str, file: str = "recipe.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    path.write_text(text)
    return path


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str] | None, *args: str | Path) -> CliResult:
    """`ftcompile ARGS` in this process: exit code and what it printed."""
    if capsys is not None:
        capsys.readouterr()
    rc = main([str(a) for a in args])
    if capsys is None:
        return CliResult(rc, "", "")
    out, err = capsys.readouterr()
    return CliResult(rc, out, err)


def cli_process(*args: str | Path, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`ftcompile ARGS` in a new Python process."""
    return subprocess.run(
        [sys.executable, "-m", "ftcompile", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
        **kwargs,
    )


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def metrics_bytes(run_dir: Path) -> bytes:
    """metrics.jsonl without the step records' timing fields and without the memory records
    (runtime/cost.py: what the process measured of itself, which differs between two runs of
    one plan and is not counted on a step a resume did not see), re-encoded as the runtime encodes records: the rest compares bitwise."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "step":
            assert set(TIMING_FIELDS) <= set(rec), rec  # every step record has its timing
            rec = {k: v for k, v in rec.items() if k not in TIMING_FIELDS}
        elif rec.get("type") == "memory":
            continue
        out.append(json.dumps(rec, allow_nan=True) + "\n")
    return "".join(out).encode()


@dataclass
class Recorded:
    """What an instrumented run saw: the state at step 0 and at every checkpoint."""

    run_dir: Path
    plan: Plan
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> model state
    optimizer_groups: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # step -> param_groups
    per_step: list[dict[str, Any]] = field(default_factory=list)  # each optimizer.step(): names, lr, momentum
    optimizers_built: int = 0
    state_keys: dict[int, set[int]] = field(default_factory=dict)  # step -> optimizer state indices


class _Recorder(Hooks):
    """Records what a session does through its hooks; the run itself is unchanged."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.groups: dict[int, list[dict[str, Any]]] = {}
        self.state_keys: dict[int, set[int]] = {}
        self.per_step: list[dict[str, Any]] = []
        self.built = 0

    def on_start(self, session: Session) -> None:
        self.states[0] = {k: v.detach().clone() for k, v in session.model.state_dict().items()}
        self.built += 1

        def before_step(opt: torch.optim.Optimizer, *_: Any) -> None:
            self.per_step.append(
                {
                    "optimizer": id(opt),
                    "names": [g["name"] for g in opt.param_groups],
                    "sizes": [len(g["params"]) for g in opt.param_groups],
                    "lr": [float(g["lr"]) for g in opt.param_groups],
                    "momentum": [
                        float(g["momentum"]) if "momentum" in g else float(g["betas"][0]) for g in opt.param_groups
                    ],
                }
            )

        session.optimizer.register_step_pre_hook(before_step)

    def on_checkpoint(self, session: Session, step: int, state: dict[str, Any]) -> None:
        self.states[step] = {k: v.detach().clone() for k, v in state["model"].items()}
        self.groups[step] = copy.deepcopy(state["optimizer"]["param_groups"])
        self.state_keys[step] = set(state["optimizer"]["state"])


def run_recorded(recipe: Path, out: Path) -> Recorded:
    """`ftcompile run RECIPE --out OUT`, recording model and optimizer state as it goes:
    the state at step 0 and at every checkpoint, and the optimizer's groups at every step."""
    rec = _Recorder()
    with observe(rec):
        assert cli(None, "run", recipe, "--out", out).rc == 0
    return Recorded(out, Plan.load(out / "plan.json"), rec.states, rec.groups, rec.per_step, rec.built, rec.state_keys)


# Recipe A: SGD with momentum, 3 classes. One-cycle warm-up of the head; CyclicLR (which also
# cycles momentum) on head + late with BatchNorm of frozen groups frozen and the optimizer
# state reset; a phase with no scheduler that trains everything; StepLR on the head alone,
# so groups trained before are frozen again while they hold momentum buffers.
PHASES_A = """
[phases.warm]
train = ["head"]
steps = 4
lr = { head = 0.05 }
scheduler = { type = "OneCycleLR", pct_start = 0.3 }

[phases.cyclic]
after = ["warm"]
train = ["head", "late"]
steps = 6
lr = { head = 0.02, late = "head / 10" }
bn = "frozen"
optimizer_state = "reset"
scheduler = { type = "CyclicLR", base_lr = "lr / 10", max_lr = "lr", step_size_up = "2 steps" }

[phases.constant]
after = ["cyclic"]
train = ["early", "late", "head"]
steps = 3
lr = { head = 0.01, late = 0.005, early = 0.001 }

[phases.stepped]
after = ["constant"]
train = ["head"]
steps = 4
lr = { head = 0.01 }
scheduler = { type = "StepLR", step_size = "2 steps", gamma = 0.5 }
"""

# Recipe B: AdamW with weight decay, 5 classes (top5 not reported: always 100% with 5). LinearLR warm-up of
# head + late; SGDR on the head alone (late frozen, holding Adam moments: decoupled weight
# decay must not touch it); cosine over everything with a per-group weight decay override.
PHASES_B = """
[phases.linear]
train = ["head", "late"]
steps = 4
lr = { head = 1e-3, late = "head / 10" }
scheduler = { type = "LinearLR", start_factor = 0.1 }

[phases.sgdr]
after = ["linear"]
train = ["head"]
steps = 5
lr = { head = 1e-3 }
scheduler = { type = "CosineAnnealingWarmRestarts", T_0 = "2 steps", eta_min = 1e-5 }

[phases.cosine]
after = ["sgdr"]
train = ["early", "late", "head"]
steps = 4
lr = { head = 5e-4, late = 2e-4, early = 1e-4 }
weight_decay = { early = 0.0 }
scheduler = { type = "CosineAnnealingLR", eta_min = 1e-6 }
"""
OPTIMIZER_B = 'type = "AdamW"\nweight_decay = 0.05'
HEAD_B = '[model.head]\npool = "concat"\nhidden = [32]\ndropout = 0.1\nbatchnorm = true\n'


def recipe_a() -> str:
    return recipe_text("tiny-a", PHASES_A)


def recipe_b() -> str:
    return recipe_text("tiny-b", PHASES_B, optimizer=OPTIMIZER_B, classes='["0", "1", "2", "3", "4"]', head=HEAD_B)


class FullDisk(io.FileIO):
    """A checkpoint file on a disk that fills up after `budget` bytes: the write that crosses
    it lands partly, then raises ENOSPC, as a real full disk does."""

    def __init__(self, path: Path, budget: int) -> None:
        super().__init__(path, "wb")
        self.budget = budget

    def write(self, data: object) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self.budget:
            super().write(view[: self.budget])
            self.budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(view)
        return super().write(view)
