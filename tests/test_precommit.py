"""The pre-commit hook in .pre-commit-hooks.yaml, installed by the real `pre-commit` into a
temporary git repository with `pre-commit try-repo`: it passes on a good recipe, fails with
the check's message on a bad one, and leaves other .toml files alone.

pre-commit builds the hook's own virtualenv and pip-installs this repository into it. So that
the test does not download torch again, the virtualenv sees the installed packages
(VIRTUALENV_SYSTEM_SITE_PACKAGES) and pip installs ftcompile alone (PIP_NO_DEPS, built with
the installed setuptools); everything else is what a user's `pre-commit run` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

pytest.importorskip("pre_commit")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)


def try_repo(project: Path, home: Path, *files: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(home),
        "VIRTUALENV_SYSTEM_SITE_PACKAGES": "1",
        "PIP_NO_DEPS": "1",
        "PIP_NO_BUILD_ISOLATION": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "ftcompile-check", "--verbose", "--files", *files],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_hook_passes_good_recipes_and_fails_bad_ones(tmp_path: Path) -> None:
    project, home = tmp_path / "project", tmp_path / "pre-commit-home"
    (project / "recipes").mkdir(parents=True)
    for name in ("quickstart.toml", "digits-pretrain.toml", "resnet50-gradual.toml"):  # the last one's data is absent
        (project / "recipes" / name).write_text((RECIPES / name).read_text())
    (project / "pyproject.toml").write_text("[tool.black]\nline-length = 100\n")  # not a recipe: skipped
    bad = (RECIPES / "quickstart.toml").read_text().replace('layer4 = "head / 3" }\nscheduler = { type = "CosineAnnealingLR" }\n\n[phases.layer3]',
                                                              'layer4 = "head / 3" }\nscheduler = { type = "CosineAnnealingLR", T_maks = 3 }\n\n[phases.layer3]')
    assert "T_maks" in bad
    (project / "recipes" / "bad.toml").write_text(bad)
    git(project, "init", "-q")
    git(project, "add", ".")

    good = try_repo(project, home, "recipes/quickstart.toml", "recipes/digits-pretrain.toml", "recipes/resnet50-gradual.toml", "pyproject.toml")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ftcompile check" in good.stdout and "Passed" in good.stdout
    assert "ok   recipes/resnet50-gradual.toml: 3 phases (data not found here: step counts not checked)" in good.stdout
    assert "pyproject" not in good.stdout.split("Passed", 1)[1]

    failed = try_repo(project, home, "recipes/bad.toml", "pyproject.toml")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Failed" in failed.stdout
    assert "FAIL recipes/bad.toml:" in failed.stdout and "phases.layer4.scheduler.T_maks: CosineAnnealingLR has no argument 'T_maks'" in failed.stdout
