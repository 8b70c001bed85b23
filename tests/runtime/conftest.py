"""Fixtures of the runtime tests: the two tiny recipes, each run once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import Recorded, recipe_a, recipe_b, run_recorded, write_recipe


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing a test does lands in the repository (runs/ is relative to the working folder)."""
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def run_a(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    folder = tmp_path_factory.mktemp("a")
    return run_recorded(write_recipe(folder, recipe_a()), folder / "run")


@pytest.fixture(scope="session")
def run_b(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    folder = tmp_path_factory.mktemp("b")
    return run_recorded(write_recipe(folder, recipe_b()), folder / "run")


# A finished tiny run on all 10 digits (top-5 defined) with TensorBoard logging, shared by the
# tests of eval / predict / export / report / runs / tensorboard, which only read it.
USE_PHASES = """
[phases.warm]
train = ["head"]
steps = 4
lr = { head = 0.05 }

[phases.full]
after = ["warm"]
train = ["early", "late", "head"]
steps = 4
lr = { head = 0.02, late = "head / 3", early = "late / 3" }
scheduler = { type = "CosineAnnealingLR" }
"""


@pytest.fixture(scope="session")
def used_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(run directory, what `ftcompile run` printed) of the shared finished run."""
    import contextlib
    import io

    from runtime_helpers import cli, recipe_text

    folder = tmp_path_factory.mktemp("used")
    text = recipe_text(
        "used",
        USE_PHASES,
        classes="[]",
        batch=32,
        run='checkpoint_every = "4 steps"\neval_every = "2 steps"\nlog = ["jsonl", "tensorboard"]',
    )
    recipe = write_recipe(folder, text)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(None, "run", recipe, "--out", folder / "run").rc == 0
    return folder / "run", out.getvalue()
