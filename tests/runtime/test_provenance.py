"""env.json provenance (git commit, uncommitted recipe changes along the extends chain, the
data's fingerprint, what bitwise equality depends on) and what rerun / resume say when any of
it changed; `run --set` stores the overridden recipe."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ftcompile.runtime.rundir import changed_since
from PIL import Image
from runtime_helpers import cli, recipe_text

from ftcompile import provenance
from ftcompile.compiler import compile_recipe
from ftcompile.plan import Plan

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PHASES = """
[phases.only]
train = ["head"]
steps = 2
lr = { head = 0.05 }
"""
FOLDER_DATA = 'train = "data/train"\nval = "data/val"\nimage_size = 16\nbatch_size = 4\nworkers = 0'


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def images(folder: Path, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (30 * i % 256, 0, 0)).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run of a child recipe (extends a base) on ImageFolder data, in git."""
    repo = tmp_path_factory.mktemp("repo")
    images(repo / "data" / "train", {"ant": 2, "bee": 2})
    images(repo / "data" / "val", {"ant": 1, "bee": 1})
    (repo / "base.toml").write_text(recipe_text("prov", PHASES, data=FOLDER_DATA))
    (repo / "child.toml").write_text('# a child\nextends = "base.toml"\nname = "prov-child"\n')
    git(repo, "init", "-q")
    git(repo, "add", "base.toml", "child.toml")
    git(repo, "commit", "-qm", "recipes")
    out = repo / "run"
    assert cli(None, "run", repo / "child.toml", "--out", out).rc == 0
    return out


def env_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "env.json").read_text())


def test_env_records_git_recipe_files_data_and_machine(finished: Path) -> None:
    env = env_of(finished)
    repo = finished.parent
    assert env["git"] == {
        "commit": git(repo, "rev-parse", "HEAD"),
        "dirty": False,
        "repo": str(repo.resolve()),
        "files": ["child.toml", "base.toml"],
    }
    assert [f["path"] for f in env["recipe_files"]] == [
        str((repo / "child.toml").resolve()),
        str((repo / "base.toml").resolve()),
    ]
    assert env["recipe_files"][0]["sha256"] == hashlib.sha256((repo / "child.toml").read_bytes()).hexdigest()
    assert env["overrides"] == []
    assert env["data"]["train"] == {"ant": 2, "bee": 2} and env["data"]["val"] == {"ant": 1, "bee": 1}
    assert len(env["data"]["fingerprint"]) == 64 and env["data"]["builtin"] is None
    m = env["machine"]
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and m["threads"] == torch.get_num_threads()
    assert set(m) == set(provenance.MACHINE_KEYS)
    assert (finished / "recipe.toml").read_text() == (repo / "child.toml").read_text()  # no --set: the file itself


def test_dirty_along_the_extends_chain(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text("seed = 1\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n')
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "x")
    assert provenance.git_info(tmp_path / "child.toml")["dirty"] is False
    (tmp_path / "base.toml").write_text("seed = 2\n")  # only the parent changed
    assert provenance.git_info(tmp_path / "child.toml")["dirty"] is True
    assert provenance.git_info(None) == {"commit": None, "dirty": None}


def test_nothing_changed_nothing_said(finished: Path) -> None:
    plan = Plan.load(finished / "plan.json")
    assert changed_since(finished, plan, env_of(finished)) == []


def test_recipe_edits_are_named(finished: Path) -> None:
    repo, plan, env = finished.parent, Plan.load(finished / "plan.json"), env_of(finished)
    child, base = repo / "child.toml", repo / "base.toml"
    text_child, text_base = child.read_text(), base.read_text()
    try:
        child.write_text(text_child.replace("# a child", "# a child, reworded"))
        assert changed_since(finished, plan, env) == [
            f"note: {child.resolve()} changed since the run, in comments or formatting only"
        ]
        child.write_text(text_child + "seed = 5\n")
        assert changed_since(finished, plan, env) == [
            f"warning: the recipe on disk differs from the run's ({child.resolve()} changed): seed (absent -> 5)"
        ]
        child.write_text(text_child)
        base.write_text(text_base.replace("steps = 2", "steps = 3"))
        assert changed_since(finished, plan, env) == [
            f"warning: the recipe on disk differs from the run's ({base.resolve()} changed)"
        ]
    finally:
        child.write_text(text_child)
        base.write_text(text_base)


def test_data_changes_are_named(finished: Path) -> None:
    repo, plan, env = finished.parent, Plan.load(finished / "plan.json"), env_of(finished)
    extra = repo / "data" / "train" / "bee" / "9.png"
    Image.new("RGB", (8, 8)).save(extra)
    try:
        (line,) = changed_since(finished, plan, env)
        assert line.startswith("warning: the data differs from the run's (fingerprint ") and line.endswith(
            ": train bee 2 -> 3"
        )
    finally:
        extra.unlink()
    first = repo / "data" / "val" / "ant" / "0.png"
    kept = first.read_bytes()
    first.write_bytes(kept + b"\0" * 7)  # same names and counts, another size
    try:
        (line,) = changed_since(finished, plan, env)
        assert line.endswith("same counts per class, but file names or sizes differ")
    finally:
        first.write_bytes(kept)


def test_machine_differences_are_named(finished: Path) -> None:
    env = env_of(finished)
    env["machine"] = {**env["machine"], "threads": env["machine"]["threads"] + 7, "cpu_capability": "AVX9000"}
    (line,) = changed_since(finished, Plan.load(finished / "plan.json"), env)
    assert line.startswith("warning: results are bitwise equal only on the same kind of machine; here differs: ")
    assert (
        "cpu_capability 'AVX9000' -> " in line
        and f"threads {env['machine']['threads']} -> {torch.get_num_threads()}" in line
    )


@pytest.mark.slow
def test_rerun_and_resume_print_what_changed(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child = finished.parent / "child.toml"
    text = child.read_text()
    child.write_text(text + "seed = 5\n")
    try:
        result = cli(capsys, "rerun", finished, "--out", tmp_path / "again")
        assert (
            result.rc == 0
            and "warning: the recipe on disk differs from the run's" in result.err
            and "seed (absent -> 5)" in result.err
        )
        result = cli(capsys, "resume", finished)
        assert result.rc == 0 and "seed (absent -> 5)" in result.err
    finally:
        child.write_text(text)
    again = env_of(tmp_path / "again")
    assert again["rerun_of"] == str(finished) and again["machine"] == env_of(finished)["machine"]


@pytest.mark.slow
def test_run_with_set_stores_the_overridden_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text("setrun", PHASES))
    out = tmp_path / "run"
    result = cli(capsys, "run", recipe, "--out", out, "--set", "phases.only.steps=3", "--set", "seed=4")
    assert result.rc == 0, result.err
    plan = Plan.load(out / "plan.json")
    assert plan.recipe.overrides == ("phases.only.steps=3", "seed=4") and plan.total_steps == 3
    stored = tomllib.loads((out / "recipe.toml").read_text())
    assert stored["seed"] == 4 and stored["phases"]["only"]["steps"] == 3
    # the stored recipe compiles to the same training (only the recorded overrides differ)
    again = compile_recipe(out / "recipe.toml").to_dict()
    assert {k: again[k] for k in ("changes", "phases", "seed")} == {
        k: plan.to_dict()[k] for k in ("changes", "phases", "seed")
    }
    env = env_of(out)
    assert env["overrides"] == ["phases.only.steps=3", "seed=4"]
    assert changed_since(out, plan, env) == []  # the file on disk plus the run's --set is still this recipe
    again_dir = tmp_path / "again"
    assert cli(capsys, "rerun", out, "--out", again_dir).rc == 0
    assert (again_dir / "recipe.toml").read_text() == (out / "recipe.toml").read_text()
    assert (again_dir / "model.pt").read_bytes() == (out / "model.pt").read_bytes()
