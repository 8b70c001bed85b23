"""`ftcompile diff OLD NEW`: recipes, plan.json files, run directories and git revisions, compared
as plans; exit 0 equal, 1 different, 2 error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcompile.cli import main
from ftcompile.compiler import CompileOptions
from ftcompile.diff import _phases, compare, leaf_changes, read_side
from ftcompile.errors import RecipeError

Writer = Callable[..., Path]


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


@pytest.fixture
def repo(tmp_path: Path, tiny: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding the tiny recipe at recipes/r.toml, committed; cwd is its root."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.toml").write_text("# the tiny recipe\n" + tiny)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "tiny")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def report(old: str, new: str) -> dict:
    options = CompileOptions()
    return compare(read_side(old, options), read_side(new, options))


def test_comment_only_edit_is_equal(capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    edit(repo / "recipes/r.toml", "# the tiny recipe", "# the tiny recipe, reworded\n# and a second line")
    rc, out, err = run(capsys, "diff", "HEAD:recipes/r.toml", "recipes/r.toml")
    assert rc == 0, err
    assert out.splitlines()[-1] == "the plans are equal"


def test_one_lr_edited_is_that_group_from_its_phases_first_step(capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    # full is [23, 46) (1442 images, batch 64); body's LR is head / 10 -> head / 20
    edit(repo / "recipes/r.toml", 'body = "head / 10"', 'body = "head / 20"')
    r = report("HEAD:recipes/r.toml", "recipes/r.toml")
    assert not r["equal"]
    assert {x["param_group"] for x in r["lr"]} == {"body", "body.no_decay"}
    for x in r["lr"]:
        # constant LR: 0.01 / 10 = 0.001 -> 0.01 / 20 = 0.0005 over the whole phase
        assert (x["first_step"], x["old"], x["new"]) == (23, 0.001, 0.0005)
        assert x["max_abs"] == pytest.approx(0.0005) and x["max_rel"] == pytest.approx(0.5)
    assert [(d["side"], d["step"], d["change"]["target"]) for d in r["changes"]] == [
        ("-", 23, "body"),
        ("-", 23, "body.no_decay"),
        ("+", 23, "body"),
        ("+", 23, "body.no_decay"),
    ]
    assert "phases" not in r and "groups" not in r and "sections" not in r
    rc, out, _ = run(capsys, "diff", "HEAD:recipes/r.toml", "recipes/r.toml")
    assert rc == 1
    assert "  body           step 23: 0.001 -> 0.0005; max abs 0.0005 (step 23), max rel 50% (step 23)" in out


def test_phase_inserted(repo: Path, tiny: str) -> None:
    edit(
        repo / "recipes/r.toml",
        '[phases.full]\nafter = ["warmup"]',
        (
            '[phases.middle]\nafter = ["warmup"]\ntrain = ["head"]\nsteps = 5\nlr = { head = 0.05 }\n\n'
            '[phases.full]\nafter = ["middle"]'
        ),
    )
    r = report("HEAD:recipes/r.toml", "recipes/r.toml")
    assert r["phases"]["added"] == [{"name": "middle", "window": [23, 28]}]
    assert r["phases"]["moved"] == [{"name": "full", "old": [23, 46], "new": [28, 51]}]
    assert r["phases"]["changed"] == [{"key": "full.after[0]", "old": "warmup", "new": "middle"}]
    assert r["sections"]["total_steps"] == [{"key": "total_steps", "old": 46, "new": 51}]
    head = next(x for x in r["lr"] if x["param_group"] == "head")
    assert (head["first_step"], head["old"], head["new"]) == (23, 0.01, 0.05)  # full began at 23, now middle does
    assert {
        "side": "+",
        "step": 23,
        "change": {"step": 23, "op": "phase", "target": "middle", "field": None, "value": None},
    } in r["changes"]


def test_phases_reordered_and_removed() -> None:
    def phase(name: str, begin: int, end: int, **extra) -> dict:
        return {"name": name, "begin": begin, "end": end, "train": ["head"], **extra}

    old = {"phases": [phase("a", 0, 5), phase("b", 5, 9), phase("c", 9, 12)]}
    new = {"phases": [phase("b", 0, 4), phase("a", 4, 9)]}
    p = _phases(old, new)
    assert p["removed"] == [{"name": "c", "window": [9, 12]}]
    assert p["reordered"] == {"old": ["a", "b", "c"], "new": ["b", "a"]}
    assert [m["name"] for m in p["moved"]] == ["b", "a"]


def test_trial_alternatives_added_and_removed_by_label() -> None:
    # trials are compared by label wherever a phase holds a `trials` list
    old = {
        "phases": [
            {
                "name": "l4",
                "begin": 0,
                "end": 9,
                "trials": [{"label": "lr.layer4=head / 3"}, {"label": "lr.layer4=head / 10"}],
            }
        ]
    }
    new = {
        "phases": [
            {
                "name": "l4",
                "begin": 0,
                "end": 9,
                "trials": [{"label": "lr.layer4=head / 10"}, {"label": "lr.layer4=head / 30"}],
            },
            {"name": "l3", "begin": 9, "end": 12, "trials": [{"label": "train=a"}, {"label": "train=b"}]},
        ]
    }
    p = _phases(old, new)
    assert p["trials"] == [
        {"phase": "l4", "added": ["lr.layer4=head / 30"], "removed": ["lr.layer4=head / 3"]},
        {"phase": "l3", "added": ["train=a", "train=b"], "removed": []},
    ]
    assert "changed" not in p  # the trials are not reported twice


def test_extends_parent_edited_in_one_revision(capsys: pytest.CaptureFixture[str], repo: Path, tiny: str) -> None:
    (repo / "recipes/base.toml").write_text(tiny)
    (repo / "recipes/child.toml").write_text('extends = "base.toml"\nname = "child"\n')
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "child")
    edit(repo / "recipes/base.toml", "momentum = 0.9", "momentum = 0.8")
    git(repo, "commit", "-qam", "base momentum")
    r = report("HEAD~1:recipes/child.toml", "HEAD:recipes/child.toml")
    assert r["sections"]["optimizer"] == [{"key": "optimizer.kwargs.momentum", "old": 0.9, "new": 0.8}]
    assert {(d["change"]["target"], d["change"]["value"]) for d in r["changes"] if d["side"] == "+"} >= {
        ("head", 0.8),
        ("body", 0.8),
    }
    # the child file itself did not change between the revisions; the work tree agrees with HEAD
    assert run(capsys, "diff", "HEAD:recipes/child.toml", "recipes/child.toml")[0] == 0


def test_revision_without_the_file_is_exit_2(capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    (repo / "recipes/new.toml").write_text((repo / "recipes/r.toml").read_text())
    rc, out, err = run(capsys, "diff", "HEAD:recipes/new.toml", "recipes/new.toml")
    assert rc == 2 and out == ""
    assert err.startswith("error: HEAD:recipes/new.toml: cannot read recipes/new.toml at revision 'HEAD':")
    assert "not in 'HEAD'" in err and "Traceback" not in err
    rc, _, err = run(capsys, "diff", "nosuchrev:recipes/r.toml", "recipes/r.toml")
    assert rc == 2 and "cannot read recipes/r.toml at revision 'nosuchrev'" in err


def test_errors_at_a_revision_name_the_revision(capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    edit(repo / "recipes/r.toml", "epochs = 1\nlr = { head = 0.1 }", "epoch = 1\nlr = { head = 0.1 }")
    git(repo, "commit", "-qam", "typo")
    rc, _, err = run(capsys, "diff", "HEAD:recipes/r.toml", "HEAD~1:recipes/r.toml")
    assert rc == 2 and "HEAD:recipes/r.toml:" in err and "phases.warmup.epoch: unknown key" in err


def test_plan_files_and_run_directories(capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    run_dir = repo / "runs" / "tiny" / "1-abcdef12"
    run_dir.mkdir(parents=True)
    assert run(capsys, "plan", "recipes/r.toml", "-o", run_dir / "plan.json")[0] == 0
    edit(repo / "recipes/r.toml", "seed = 0", "seed = 7")
    assert run(capsys, "plan", "recipes/r.toml", "-o", repo / "new.json")[0] == 0
    rc, out, _ = run(capsys, "diff", run_dir, "new.json", "--json")
    assert rc == 1
    r = json.loads(out)
    assert r["old"]["source"] == str(run_dir) and r["sections"] == {"seed": [{"key": "seed", "old": 0, "new": 7}]}
    assert "lr" not in r and "changes" not in r  # the seed changes no LR and no change record
    rc, _, err = run(capsys, "diff", repo / "recipes", "new.json")
    assert rc == 2 and "folder without plan.json" in err


def test_upstream_recipe_compared_as_a_plan(repo: Path, tiny: str) -> None:
    (repo / "recipes/up.toml").write_text(tiny.replace('name = "tiny"', 'name = "up"'))
    edit(repo / "recipes/r.toml", '[model]\narch = "resnet18"', '[model]\narch = "resnet18"\nweights = "up.toml"')
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "upstream")
    edit(repo / "recipes/up.toml", "seed = 0", "seed = 1")
    r = report("HEAD:recipes/r.toml", "recipes/r.toml")
    assert r["sections"]["model"][0]["key"] == "model.weights.plan"  # its hash
    assert r["upstream"]["sections"] == {"seed": [{"key": "seed", "old": 0, "new": 1}]}


def test_leaf_changes() -> None:
    assert leaf_changes({"a": {"b": [1, 2]}, "c": 1}, {"a": {"b": [1, 3]}, "d": 2}) == [
        {"key": "a.b[1]", "old": 2, "new": 3},
        {"key": "c", "old": 1, "new": None},
        {"key": "d", "old": None, "new": 2},
    ]
    assert leaf_changes([1, 2], [1, 2, 3], "x") == [{"key": "x", "old": [1, 2], "new": [1, 2, 3]}]


# ---------------------------------------------------------------- no user text reaches git as an option


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".git" not in p.relative_to(root).parts}


@pytest.fixture
def nested_repo(tmp_path: Path, tiny: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/outer/repo holding r.toml, committed; cwd is the repository (its parent, outer,
    and tmp_path are where a `--output=../x` would land)."""
    top = tmp_path / "outer" / "repo"
    top.mkdir(parents=True)
    (top / "r.toml").write_text(tiny)
    git(top, "init", "-q")
    git(top, "add", ".")
    git(top, "commit", "-qm", "tiny")
    monkeypatch.chdir(top)
    return top


@pytest.mark.parametrize(
    "spec",
    [
        "--output=../x:r.toml",  # the case: git show wrote ../x:r.toml
        "--output=../../x:r.toml",
        "--output=x:r.toml",
        "-ox:r.toml",
        "HEAD:--output=../x",  # a path beginning with '-'
    ],
)
def test_diff_refuses_option_like_revisions_and_writes_no_file(nested_repo: Path, tmp_path: Path, spec: str) -> None:
    """The real command in a real repository: exit 2 with a message, and no file anywhere."""
    before = files_under(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "ftcompile", "diff", "--", spec, "r.toml"], capture_output=True, text=True, timeout=120
    )
    assert files_under(tmp_path) == before  # nothing written in the repository, its parent or above
    assert done.returncode == 2, done.stderr
    assert "begins with '-'" in done.stderr and "which git would read as an option" in done.stderr
    assert "Traceback" not in done.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rest=st.text(alphabet=st.characters(blacklist_characters=":\x00", blacklist_categories=("Cs",)), max_size=30))
def test_any_revision_beginning_with_a_dash_is_refused_before_git_runs(
    nested_repo: Path, tmp_path: Path, rest: str
) -> None:
    import ftcompile.revisions as revisions

    def no_git(argv: list[str], **kwargs: object) -> None:
        raise AssertionError(f"git ran: {argv}")

    before = files_under(tmp_path)
    spec = f"-{rest}:r.toml"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(RecipeError) as info:
        mp.setattr(revisions.subprocess, "run", no_git)
        read_side(spec, CompileOptions())
    assert info.value.key == "REV:path" and info.value.file == spec and "begins with '-'" in info.value.message
    assert files_under(tmp_path) == before


def test_git_show_gets_end_of_options_so_no_revision_is_an_option(nested_repo: Path, tmp_path: Path) -> None:
    """Behind the refusal: even a revision that reached git could not be an option."""
    from ftcompile.revisions import _fetch

    before = files_under(tmp_path)
    with pytest.raises(RecipeError, match="cannot read r.toml at revision '--output=../y'"):
        _fetch(nested_repo, "--output=../y", "r.toml", tmp_path / "into", "--output=../y:r.toml", set())
    assert files_under(tmp_path) == before


def test_a_path_beginning_with_a_dash_is_read_as_dot_slash(
    capsys: pytest.CaptureFixture[str], nested_repo: Path
) -> None:
    """The hint's way round the refusal works: ./-name.toml."""
    (nested_repo / "r.toml").rename(nested_repo / "-r.toml")
    git(nested_repo, "add", "-A")
    git(nested_repo, "commit", "-qm", "renamed")
    rc, out, err = run(capsys, "diff", "HEAD:./-r.toml", "./-r.toml")
    assert rc == 0, err
    assert out.splitlines()[-1] == "the plans are equal"


def test_a_recipe_with_a_bom_at_a_revision_brings_its_base(
    capsys: pytest.CaptureFixture[str], nested_repo: Path
) -> None:
    """REV:path reads the recipes a recipe extends from git too; a BOM hid its `extends`."""
    (nested_repo / "base.toml").write_bytes((nested_repo / "r.toml").read_bytes())
    (nested_repo / "r.toml").write_bytes('\ufeffextends = "base.toml"\nseed = 3\n'.encode("utf-8"))
    git(nested_repo, "add", "-A")
    git(nested_repo, "commit", "-qm", "a child with a BOM")
    rc, out, err = run(capsys, "diff", "HEAD:r.toml", "r.toml")
    assert rc == 0, err
    assert out.splitlines()[-1] == "the plans are equal"
