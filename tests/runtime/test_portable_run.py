"""`run.reproducible = "portable"`: the same final model, bit for bit, whatever instruction set
and thread count the caller's environment asks for, and on every x86-64 CPU with AVX2.

GOLDEN is the sha256 of the final model.pt of RECIPE run in portable mode: resnet18 from
random init on the digits 0-4 at 32 px, batch 32, 8 head-only steps then 24 steps of
everything (32 optimizer steps, two evaluations). Recorded on 2026-12-07 on an AMD EPYC
(AVX-512 capable; torch 2.14.1, torchvision 0.29.1). Every machine that runs the suite
checks it, so a CI runner on another CPU is a cross-machine test of the mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from runtime_helpers import child_env

from ftcompile import portable
from ftcompile.cli import main

GOLDEN = "eb7de26cc537ce1e6cec721e54093e3073167dbb1edd42fe20999d1da3c28de6"
GOLDEN_VERSIONS = ("2.14.1", "0.29.1")  # torch, torchvision (local build tags ignored)

RECIPE = """\
name = "portable-golden"
seed = 0

[model]
arch = "resnet18"
weights = "none"

[data]
builtin = "digits"
classes = ["0", "1", "2", "3", "4"]
image_size = 32
batch_size = 32
workers = 0
augment = [{ op = "RandomAffine", degrees = 10, translate = [0.1, 0.1] }]

[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4

[groups]
body = ["backbone"]
head = ["head"]

[phases.head]
train = ["head"]
steps = 8
lr = { head = 0.05 }

[phases.all]
after = ["head"]
train = ["body", "head"]
steps = 24
lr = { head = 0.05, body = "head / 3" }
scheduler = { type = "OneCycleLR", pct_start = 0.25 }

[run]
reproducible = "portable"
eval_every = "16 steps"
checkpoint_every = "never"
keep_checkpoints = "none"
"""

# What a caller's environment may say: the pins must win over it.
AVX512 = {
    "ATEN_CPU_CAPABILITY": "avx512",
    "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
    "DNNL_MAX_CPU_ISA": "AVX512_CORE",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _golden_applies() -> str | None:
    """Why the recorded hash cannot apply here, or None."""
    versions = (torch.__version__.split("+")[0], torchvision.__version__.split("+")[0])
    if versions != GOLDEN_VERSIONS:
        return f"GOLDEN was recorded with torch/torchvision {GOLDEN_VERSIONS}, this is {versions}"
    if platform.machine() not in ("x86_64", "AMD64") or portable.cpu_has_avx2() is False:
        return "portable mode promises its bits on x86-64 CPUs with AVX2"
    return None


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("portable")
    (folder / "golden.toml").write_text(RECIPE)
    return folder / "golden.toml"


@pytest.fixture(scope="module")
def by_process(recipe: Path) -> Path:
    """`ftcompile run` as a program, in an environment that asks for AVX-512 and 2 threads:
    it replaces itself (execve) with the pinned command."""
    out = recipe.parent / "by-process"
    env = {**child_env(), **AVX512}
    env.pop(portable.MARK, None)
    done = subprocess.run(
        [sys.executable, "-m", "ftcompile", "run", str(recipe), "--out", str(out)],
        cwd=recipe.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "restarting with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2" in done.stderr
    return out


@pytest.mark.slow
def test_the_pins_win_over_the_callers_environment(
    recipe: Path, by_process: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() called from Python, in this process's (unpinned) environment: a pinned child runs it
    for k in AVX512:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    out = recipe.parent / "in-process"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    assert _sha(out / "model.pt") == _sha(by_process / "model.pt")


@pytest.mark.slow
def test_env_json_records_the_pins(by_process: Path) -> None:
    env = json.loads((by_process / "env.json").read_text())
    assert env["reproducible"]["mode"] == "portable" and env["reproducible"]["pins"] == portable.PINS
    assert env["reproducible"]["threads"] == 1
    assert env["machine"]["threads"] == 1
    if portable.cpu_has_avx2():
        assert env["machine"]["cpu_capability"] == "AVX2"  # pinned, whatever the CPU has


@pytest.mark.slow
def test_golden_hash(by_process: Path) -> None:
    why = _golden_applies()
    if why:
        pytest.skip(why)
    assert _sha(by_process / "model.pt") == GOLDEN


@pytest.mark.slow
def test_rerun_of_a_portable_run_is_pinned_too(by_process: Path, tmp_path: Path) -> None:
    env = {**child_env(), "OMP_NUM_THREADS": "2"}
    again = tmp_path / "again"
    done = subprocess.run(
        [sys.executable, "-m", "ftcompile", "rerun", str(by_process), "--out", str(again)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "restarting with" in done.stderr and "warning: results are bitwise" not in done.stderr
    assert _sha(again / "model.pt") == _sha(by_process / "model.pt")


def test_an_unpinned_runtime_refuses_a_portable_plan(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called past the CLI (which restarts itself pinned), the runtime refuses before it makes
    a run directory: the environment can no longer be set for this process."""
    from ftcompile.runtime.rundir import start_run

    from ftcompile.compiler import compile_recipe
    from ftcompile.errors import RecipeError

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with pytest.raises(RecipeError, match="a portable run needs its environment pinned"):
        start_run(compile_recipe(recipe), recipe, recipe.parent, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert os.environ["OMP_NUM_THREADS"] == "2"


@pytest.mark.slow
def test_lr_find_of_a_portable_plan_runs_pinned(recipe: Path, tmp_path: Path) -> None:
    """lr-find restarts itself pinned as run does: the same curve whatever the caller's
    environment asks for (AVX-512 and 2 threads, or nothing)."""
    curves = []
    for name, extra in (("asked-avx512", AVX512), ("plain", {})):
        env = {**child_env(), **extra}
        env.pop(portable.MARK, None)
        out = tmp_path / name
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ftcompile",
                "lr-find",
                str(recipe),
                "--phase",
                "all",
                "--steps",
                "4",
                "-o",
                str(out),
            ],
            cwd=recipe.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "restarting with ONEDNN_MAX_CPU_ISA=AVX2" in done.stderr
        curves.append((out / "lr_find.csv").read_bytes())
    assert curves[0] == curves[1]
    assert len(curves[0].splitlines()) == 5  # a header and the 4 steps of the test


def test_nproc_of_a_portable_plan_starts_torchrun_pinned(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --nproc N` of a portable plan restarts itself pinned before torchrun starts (its
    workers inherit the environment); once pinned, it launches torchrun."""
    from ftcompile.runtime import distributed

    launched: list[tuple[int, list[str]]] = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append((nproc, argv)) or 0)
    restarts: list[str] = []
    real_restart = portable.restart_pinned
    monkeypatch.setattr(portable, "restart_pinned", lambda mode, argv: restarts.append(mode) or 7)
    for name in (*portable.PINS, portable.MARK):
        monkeypatch.delenv(name, raising=False)
    assert main(["run", str(recipe), "--nproc", "2"]) == 7  # the pinned child's exit code
    assert restarts == ["portable"] and launched == []

    monkeypatch.setattr(portable, "restart_pinned", real_restart)
    monkeypatch.setattr(os, "environ", portable.pinned_environment())  # as the restarted process sees it
    assert main(["run", str(recipe), "--nproc", "2"]) == 0
    assert launched and launched[0][0] == 2
