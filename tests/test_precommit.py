"""The pre-commit hooks in .pre-commit-hooks.yaml, run by the real `pre-commit try-repo` in a
temporary git repository: each passes on good recipes, fails with the check's message on a
bad one, and leaves other .toml files alone.

Wherever the user installed (a virtual environment, the base interpreter, --user):

- `ftcompile-check-system` (language: system) runs the `ftcompile` of the interpreter that
  runs these tests, put first on PATH as an activated environment would. pre-commit installs
  nothing for it.
- `ftcompile-check` (language: python): pre-commit builds the hook's own virtualenv and
  pip-installs this repository into it. So that the test does not download torch again, pip
  installs ftcompile alone (PIP_NO_DEPS) and the hook finds its dependencies through
  PYTHONPATH: the site-packages folders of the interpreter running the tests (the hook
  environment's own base interpreter may have no torch at all, as in a fresh venv made from
  a system Python). Everything else is what a user's `pre-commit run` does.

try-repo of a working tree with uncommitted changes takes only the changes of tracked files;
the hooks are tried from a snapshot repository of the whole working tree instead, so a new
module not yet committed is there too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

pytest.importorskip("pre_commit")

NAMES = {"ftcompile-check": "ftcompile check", "ftcompile-check-system": "ftcompile check (installed ftcompile)"}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def snapshot(dest: Path) -> Path:
    """A git repository with one commit: this working tree's files, tracked or new (not ignored)."""
    files = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", ".")
    git(dest, "commit", "-q", "-m", "snapshot")
    return dest


def installed_ftcompile(folder: Path) -> Path:
    """A folder whose `ftcompile` is this interpreter's: its console script when it sits in
    the interpreter's scripts folder (a venv's bin/), else a two-line stand-in."""
    script = shutil.which("ftcompile", path=sysconfig.get_path("scripts"))
    if script is not None:
        return Path(script).parent
    folder.mkdir()
    (folder / "ftcompile").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ftcompile "$@"\n')
    (folder / "ftcompile").chmod(0o755)
    return folder


def hook_env(hook: str, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    env.pop("VIRTUALENV_SYSTEM_SITE_PACKAGES", None)  # the hook must not need the base interpreter's packages
    if hook == "ftcompile-check-system":
        env["PATH"] = os.pathsep.join([str(installed_ftcompile(tmp_path / "bin")), env.get("PATH", "")])
    else:
        site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
        env.update(
            PIP_NO_DEPS="1",
            PIP_NO_BUILD_ISOLATION="1",
            PYTHONPATH=os.pathsep.join([*site_dirs, *filter(None, [env.get("PYTHONPATH")])]),
        )
    return env


def try_repo(
    hooks: Path, project: Path, hook: str, env: dict[str, str], *files: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(hooks), hook, "--verbose", "--files", *files],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize("hook", list(NAMES))
def test_hook_passes_good_recipes_and_fails_bad_ones(tmp_path: Path, hook: str) -> None:
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    for name in ("quickstart.toml", "digits-pretrain.toml", "resnet50-gradual.toml"):  # the last one's data is absent
        (project / "recipes" / name).write_text((RECIPES / name).read_text())
    (project / "pyproject.toml").write_text("[tool.black]\nline-length = 100\n")  # not a recipe: skipped
    bad = (
        (RECIPES / "quickstart.toml")
        .read_text()
        .replace(
            'layer4 = "head / 3" }\nscheduler = { type = "CosineAnnealingLR" }\n\n[phases.layer3]',
            'layer4 = "head / 3" }\nscheduler = { type = "CosineAnnealingLR", T_maks = 3 }\n\n[phases.layer3]',
        )
    )
    assert "T_maks" in bad
    (project / "recipes" / "bad.toml").write_text(bad)
    git(project, "init", "-q")
    git(project, "add", ".")
    hooks = snapshot(tmp_path / "hooks")
    env = hook_env(hook, tmp_path)

    good = try_repo(
        hooks,
        project,
        hook,
        env,
        "recipes/quickstart.toml",
        "recipes/digits-pretrain.toml",
        "recipes/resnet50-gradual.toml",
        "pyproject.toml",
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert NAMES[hook] in good.stdout and "Passed" in good.stdout
    assert "ok   recipes/resnet50-gradual.toml: 3 phases (data not found here: step counts not checked)" in good.stdout
    assert "pyproject" not in good.stdout.split("Passed", 1)[1]

    failed = try_repo(hooks, project, hook, env, "recipes/bad.toml", "pyproject.toml")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Failed" in failed.stdout
    assert (
        "FAIL recipes/bad.toml:" in failed.stdout
        and "phases.layer4.scheduler.T_maks: CosineAnnealingLR has no argument 'T_maks'" in failed.stdout
    )
