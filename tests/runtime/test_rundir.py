"""Run directories: `rerun` repeats a run bitwise, and every bad input a user can cause
(another plan format, an edited plan, a folder that is not a run, missing or corrupt data)
exits 2 with one readable message, no traceback, and leaves the run directory as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import ftcompile.runtime.checkpoint as checkpoint
import pytest
import torch
from ftcompile.runtime.rundir import blamed, open_run, version_warnings
from PIL import Image
from runtime_helpers import Recorded, assert_same_tensors, cli, load_tensors, metrics_bytes, recipe_text, write_recipe

from ftcompile.errors import RecipeError, RecipeErrors
from ftcompile.plan import Plan, plan_hash


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`: 'intact' means this does not change."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_user_error(result, *words: str) -> None:
    assert result.rc == 2
    assert "Traceback" not in result.err and result.err.startswith("error: ")
    for word in words:
        assert word in result.err, (word, result.err)


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def rewrite_plan(run_dir: Path, edit, rehash: bool) -> None:
    data = json.loads((run_dir / "plan.json").read_text())
    edit(data)
    if rehash:
        data["hash"] = plan_hash({k: v for k, v in data.items() if k != "hash"})
    (run_dir / "plan.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------- rerun


@pytest.mark.slow
def test_rerun_is_bitwise_identical(run_a: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    again = tmp_path / "again"
    result = cli(capsys, "rerun", run_a.run_dir, "--out", again)
    assert result.rc == 0 and "warning" not in result.err
    assert_same_tensors(load_tensors(run_a.run_dir / "model.pt"), load_tensors(again / "model.pt"))
    # torch.save of the same tensors in the same order is deterministic: the files match too
    assert (run_a.run_dir / "model.pt").read_bytes() == (again / "model.pt").read_bytes()
    assert metrics_bytes(run_a.run_dir) == metrics_bytes(again)
    for name in ("lr.csv", "plan.json", "recipe.toml"):
        assert (run_a.run_dir / name).read_bytes() == (again / name).read_bytes(), name
    env = json.loads((again / "env.json").read_text())
    assert env["rerun_of"] == str(run_a.run_dir) and env["plan_hash"] == run_a.plan.hash


def test_rerun_warns_when_versions_differ(run_a: Recorded, tmp_path: Path) -> None:
    assert version_warnings(run_a.plan) == []
    other = dataclasses.replace(run_a.plan, versions={**run_a.plan.versions, "torch": "1.0.0", "ftcompile": "0.0.1"})
    assert version_warnings(other) == [
        f"warning: the plan was made with torch 1.0.0, this is {torch.__version__}",
        f"warning: the plan was made with ftcompile 0.0.1, this is {run_a.plan.versions['ftcompile']}",
    ]
    # a plan.json made elsewhere (valid hash, other versions) opens and warns
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("plan.json", "env.json"):
        shutil.copyfile(run_a.run_dir / name, run_dir / name)
    rewrite_plan(run_dir, lambda d: d["versions"].update(torchvision="0.1.0"), rehash=True)
    plan, _ = open_run(run_dir)
    assert [w.split(",")[0] for w in version_warnings(plan)] == ["warning: the plan was made with torchvision 0.1.0"]


def test_rerun_into_a_folder_that_is_not_empty_is_refused(
    run_a: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert_user_error(cli(capsys, "rerun", run_a.run_dir, "--out", tmp_path / "busy"), "not empty")


# ---------------------------------------------------------------- bad run directories


@pytest.mark.parametrize("command", ["resume", "rerun"])
def test_plan_of_another_format_version(
    run_a: Recorded, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_run(run_a.run_dir, tmp_path / "run")
    rewrite_plan(run_dir, lambda d: d.update(format=99), rehash=True)
    before = fingerprint(run_dir)
    assert_user_error(
        cli(capsys, command, run_dir, *(["--out", tmp_path / "new"] if command == "rerun" else [])),
        "plan.json",
        "format 99 is not 1",
        "compile the recipe again",
    )
    assert fingerprint(run_dir) == before and not (tmp_path / "new").exists()


def test_run_of_a_plan_json_of_another_format(
    run_a: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    data = json.loads((run_a.run_dir / "plan.json").read_text())
    data["format"] = 0
    plan.write_text(json.dumps(data))
    assert_user_error(cli(capsys, "run", plan, "--out", tmp_path / "new"), "format 0 is not 1")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["resume", "rerun"])
def test_hand_edited_plan(run_a: Recorded, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = copy_run(run_a.run_dir, tmp_path / "run")
    rewrite_plan(run_dir, lambda d: d.update(total_steps=d["total_steps"] + 1), rehash=False)
    before = fingerprint(run_dir)
    assert_user_error(
        cli(capsys, command, run_dir, *(["--out", tmp_path / "new"] if command == "rerun" else [])),
        "plan.json",
        "hash does not match",
        "do not edit plan.json",
    )
    assert fingerprint(run_dir) == before


def test_checkpoint_of_another_plan(run_a: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = copy_run(run_a.run_dir, tmp_path / "run")
    rewrite_plan(run_dir, lambda d: d["versions"].update(torch="9.9"), rehash=True)  # valid, but another hash
    (run_dir / "model.pt").unlink()  # unfinished: a finished run is not resumed at all
    before = fingerprint(run_dir)
    assert_user_error(cli(capsys, "resume", run_dir), "checkpoint belongs to another plan")
    assert fingerprint(run_dir) == before


@pytest.mark.parametrize("what", ["empty", "missing", "damaged env.json"])
def test_not_a_run_directory(tmp_path: Path, what: str, run_a: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    if what == "empty":
        run_dir.mkdir()
        words = ["is not a run directory", "pass a folder made by ftcompile run"]
    elif what == "missing":
        words = ["is not a run directory"]
    else:
        run_dir.mkdir()
        shutil.copyfile(run_a.run_dir / "plan.json", run_dir / "plan.json")
        (run_dir / "env.json").write_text("{not json")
        words = ["env.json is damaged"]
    for command in ("resume", "rerun"):
        assert_user_error(cli(capsys, command, run_dir), *words)


def test_damaged_plan_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "plan.json").write_text("{ truncated")
    (run_dir / "env.json").write_text("{}")
    assert_user_error(cli(capsys, "resume", run_dir), "cannot read plan")


# ---------------------------------------------------------------- bad data


def image_folder(root: Path, counts: dict[str, int]) -> None:
    g = torch.Generator().manual_seed(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")


FOLDER_DATA = 'train = "data/train"\nval = "data/val"\nimage_size = 16\nbatch_size = 4\nworkers = 0'
ONE_PHASE = """
[phases.all]
train = ["early", "late", "head"]
steps = 6
lr = { head = 0.01, late = 0.01, early = 0.01 }
"""


def folder_recipe(tmp_path: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    image_folder(tmp_path / "data/train", train)
    image_folder(tmp_path / "data/val", val)
    return write_recipe(
        tmp_path,
        recipe_text(
            "folders", ONE_PHASE, data=FOLDER_DATA, run='checkpoint_every = "2 steps"\neval_every = "100 steps"'
        ),
    )


def test_class_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = folder_recipe(tmp_path, {"ant": 3, "bee": 3}, {"ant": 1, "bee": 1, "cow": 1})
    (tmp_path / "data/train/cow").mkdir()
    (tmp_path / "data/train/cow/notes.txt").write_text("no images here")
    assert_user_error(cli(capsys, "run", recipe, "--out", tmp_path / "run"), "'cow'", "holds no images")
    assert not (tmp_path / "run").exists()


def test_train_val_class_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = folder_recipe(tmp_path, {"ant": 3, "bee": 3}, {"ant": 1, "eel": 1})
    assert_user_error(cli(capsys, "run", recipe, "--out", tmp_path / "run"), "different class folders")


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "val"])
def test_unreadable_image_names_the_file_and_the_run_resumes_once_fixed(
    tmp_path: Path, split: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image damaged after the run verified every image (run verification off here):
    the step that reads it stops the run with a message, and nothing is lost."""
    recipe = folder_recipe(tmp_path, {"ant": 6, "bee": 5}, {"ant": 2, "bee": 2})  # with the bad one: 12 = 3 x 4
    bad = tmp_path / f"data/{split}/bee/garbage.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("ftcompile.runtime.rundir.verify_images", lambda plan, root: None)
        assert_user_error(cli(capsys, "run", recipe, "--out", run_dir), str(bad), f"data.{split}")
    # the run directory is intact: plan, env, logs, only complete checkpoints, no model
    for name in ("plan.json", "env.json", "recipe.toml", "metrics.jsonl", "lr.csv"):
        assert (run_dir / name).is_file()
    for path in checkpoint.list_checkpoints(run_dir / "checkpoints"):
        torch.load(path, weights_only=True)
    assert not (run_dir / "model.pt").exists()
    Image.fromarray(torch.zeros(16, 16, 3, dtype=torch.uint8).numpy()).save(bad, format="JPEG")
    assert cli(capsys, "resume", run_dir).rc == 0
    assert (run_dir / "model.pt").is_file()
    assert Plan.load(run_dir / "plan.json").total_steps == 6


def test_a_last_batch_of_one_image_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """5 images, batch_size 4: step 1 trains on 1 image, which BatchNorm cannot normalise;
    the compiler finds it, so no run directory is made."""
    recipe = folder_recipe(tmp_path, {"ant": 3, "bee": 2}, {"ant": 1, "bee": 1})
    assert_user_error(
        cli(capsys, "run", recipe, "--out", tmp_path / "run"),
        "step 1 (phase all) has 1 image",
        "data.batch_size",
        "drop_last = true",
    )
    assert not (tmp_path / "run").exists()


def test_an_error_in_a_run_names_the_stored_recipes_file_and_line(tmp_path: Path) -> None:
    """blamed: the line of the error's key, or of its nearest enclosing key, in the stored
    recipe.toml (a line scan of the text: the runtime needs no recipe loader for it)."""
    src = tmp_path / "recipe.toml"
    src.write_text('name = "x"\n\n[data]\ntrain = "d"\n')
    with pytest.raises(RecipeErrors) as caught, blamed(src):
        raise RecipeErrors([RecipeError("bad", key="data.train"), RecipeError("worse", key="data.val")])
    assert [(e.file, e.line) for e in caught.value.errors] == [(str(src), 4), (str(src), 3)]
    with pytest.raises(RecipeError) as one, blamed(tmp_path / "plan.json"):  # a plan.json: the file, no line
        raise RecipeError("bad", key="data.train")
    assert (one.value.file, one.value.line) == (str(tmp_path / "plan.json"), None)
