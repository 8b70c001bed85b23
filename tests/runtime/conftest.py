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
