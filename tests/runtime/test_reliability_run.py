"""Issue 12, the runtime's side: one process per run directory, OS failures as one message
with earlier checkpoints intact, checkpoints verified and set aside, weights files that are
not checkpoints, data re-checked on resume, bad images found before step 0, the plan hash
covering the run settings, freezing checked through requires_grad / grad, and resume
tested with dropout so a missing RNG restore shows.

Runs are the tiny resnet18 on 16x16 digits (or a 16x16 image folder) of runtime_helpers,
a few steps each.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ftcompile.runtime.checkpoint as checkpoint
import pytest
import torch
from ftcompile.runtime import retention
from ftcompile.runtime.lock import LOCK_FILE, RunLock
from ftcompile.runtime.loop import Hooks, Session, Trainables, observe
from ftcompile.runtime.rundir import RUNS, new_run_dir
from PIL import Image
from runtime_helpers import FullDisk, assert_same_tensors, child_env, cli, load_tensors, recipe_text, write_recipe

from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.images import BadImage, verify_images
from ftcompile.plan import Plan, plan_hash

TWO_STEPS = """
[phases.only]
train = ["head"]
steps = 2
lr = { head = 0.05 }
"""
FOUR_STEPS = """
[phases.only]
train = ["early", "late", "head"]
steps = 4
lr = { head = 0.05, late = 0.01, early = 0.01 }
"""
EVERY_2 = 'checkpoint_every = "2 steps"\neval_every = "100 steps"'
# The runs that train: 2 digit classes at 8x8 (a 1x1 map at layer4, 16 values per channel
# in a batch), so their evaluations (72 val images) are quick.
SMALL = 'builtin = "digits"\nclasses = ["0", "1"]\nimage_size = 8\nbatch_size = 16\nworkers = 0'


def assert_user_error(result: Any, *words: str) -> None:
    assert result.rc == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, (word, result.err)


def image_folder(root: Path, counts: dict[str, int]) -> None:
    g = torch.Generator().manual_seed(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")


FOLDER_DATA = 'train = "data/train"\nval = "data/val"\nimage_size = 16\nbatch_size = 4\nworkers = 0'


def folder_recipe(folder: Path, run: str = EVERY_2, phases: str = FOUR_STEPS) -> Path:
    """ant / bee, 4 + 4 train images (one batch of 4 per step... 2 steps an epoch), 2 + 2 val."""
    image_folder(folder / "data/train", {"ant": 4, "bee": 4})
    image_folder(folder / "data/val", {"ant": 2, "bee": 2})
    return write_recipe(folder, recipe_text("folders", phases, data=FOLDER_DATA, run=run))


# ---------------------------------------------------------------- 2. the run lock


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that locks `folder` as a run does, and waits to be killed."""
    code = (
        "import sys, time; from pathlib import Path; from ftcompile.runtime.lock import RunLock; "
        "RunLock().acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked", proc.stderr
    return proc


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    folder = tmp_path / "run"
    folder.mkdir()
    proc = hold_lock(folder)
    yield folder, proc
    proc.kill()
    proc.wait(timeout=60)


def test_a_second_process_gets_exit_2_naming_the_holders_pid(
    holder: tuple[Path, subprocess.Popen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, proc = holder
    recipe = write_recipe(tmp_path, recipe_text("locked", TWO_STEPS))
    assert_user_error(
        cli(capsys, "run", recipe, "--out", run_dir),
        str(run_dir),
        "in use by another ftcompile process",
        f"PID {proc.pid}",
    )
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # nothing written into it
    # resume takes the same lock before it reads or writes anything
    assert cli(capsys, "plan", recipe, "-o", run_dir / "plan.json").rc == 0
    (run_dir / "env.json").write_text(json.dumps({"data_root": str(tmp_path)}))
    assert_user_error(cli(capsys, "resume", run_dir), f"PID {proc.pid}")
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = hold_lock(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (run_dir / LOCK_FILE).read_text().strip() == str(proc.pid)  # the stale lock file stays
    recipe = write_recipe(tmp_path, recipe_text("stale", TWO_STEPS, data=SMALL))
    result = cli(capsys, "run", recipe, "--out", run_dir)
    assert result.rc == 0, result.err
    assert (run_dir / "model.pt").is_file()
    lock = RunLock()  # and the finished run released it
    lock.acquire(run_dir)
    lock.release()


# ---------------------------------------------------------------- 10. environment failures


@pytest.mark.parametrize("inside", [False, True], ids=["the-file", "below-the-file"])
def test_out_pointing_at_a_file_is_one_message_naming_it(
    tmp_path: Path, inside: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = afile / "sub" if inside else afile
    recipe = write_recipe(tmp_path, recipe_text("outfile", TWO_STEPS))
    result = cli(capsys, "run", recipe, "--out", out)
    assert_user_error(result, str(out), "cannot create the run directory")
    assert ("Not a directory" if inside else "a file is at this path where a folder should be") in result.err
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_a_run_directory_the_os_refuses_is_one_message_naming_it(
    tmp_path: Path, err: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permission denied, a read-only file system, a full disk where the run directory is
    made (as root, permission bits are not enforced: the refusal is made here)."""
    denied = tmp_path / "denied"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == denied or denied in self.parents:
            raise OSError(err, os.strerror(err), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    recipe = write_recipe(tmp_path, recipe_text("denied", TWO_STEPS))
    assert_user_error(cli(capsys, "run", recipe, "--out", denied / "run"), str(denied / "run"), os.strerror(err))


@pytest.mark.slow
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_checkpoint_the_os_refuses_is_one_message_and_the_earlier_one_stays(
    tmp_path: Path, err: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints at steps 1 and 2; the second cannot be written (the disk fills part-way
    through it, or opening it is refused). The run stops with one message naming the file;
    step 1's checkpoint verifies, and the run resumes from it."""
    run = 'checkpoint_every = "1 step"\neval_every = "100 steps"'
    recipe = write_recipe(tmp_path, recipe_text("disk", TWO_STEPS, data=SMALL, run=run))
    run_dir = tmp_path / "run"
    opened: list[Path] = []
    real_open = checkpoint._open_new

    def open_new(path: Path) -> Any:
        opened.append(path)
        if len(opened) < 2:
            return real_open(path)
        if err == errno.ENOSPC:
            return FullDisk(path, budget=20_000)
        raise OSError(err, os.strerror(err), str(path))

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "_open_new", open_new)
        result = cli(capsys, "run", recipe, "--out", run_dir)
    folder = run_dir / "checkpoints"
    assert_user_error(result, f"{folder / 'step-00000002.pt'}: cannot write: {os.strerror(err)}")
    assert "checkpoints written before are intact" in result.err or err != errno.ENOSPC
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001.pt"]  # no torn or temporary file
    state, why = checkpoint.verify(folder / "step-00000001.pt")
    assert state is not None and state["step"] == 1, why
    assert not (run_dir / "model.pt").exists()
    if err == errno.ENOSPC:  # the disk has room again
        result = cli(capsys, "resume", run_dir)
        assert result.rc == 0 and "resuming at step 1 of 2" in result.err, result.err
        assert (run_dir / "model.pt").is_file()


# ---------------------------------------------------------------- 4. the run directory stays under runs/


def test_a_rehashed_plan_json_naming_a_path_outside_runs_is_refused_before_anything_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # runs/ is tmp_path/work/runs; ../../escaped is tmp_path/escaped
    recipe = write_recipe(tmp_path, recipe_text("escape", TWO_STEPS))
    data = json.loads(compile_recipe(recipe).to_json())
    for name in ("../../escaped", str(tmp_path / "escaped")):
        data["recipe"]["name"] = name
        data["hash"] = plan_hash({k: v for k, v in data.items() if k != "hash"})
        (tmp_path / "evil.json").write_text(json.dumps(data))
        assert_user_error(
            cli(capsys, "run", tmp_path / "evil.json", "--data-root", tmp_path), "recipe.name", "not a slug"
        )
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "work" / RUNS).exists()
    # and a Plan made in code (not loaded) is stopped where the folder is made
    plan = compile_recipe(recipe)
    plan = dataclasses.replace(plan, recipe=dataclasses.replace(plan.recipe, name="../../escaped"))
    with pytest.raises(RecipeError, match="outside runs/"):
        new_run_dir(plan, None, RunLock())
    assert not (tmp_path / "escaped").exists()


# ---------------------------------------------------------------- 3. checkpoints verified, bad ones set aside


def payload(value: float) -> dict[str, Any]:
    return {"model": {"w": torch.full((8, 8), value)}, "next_change": 1, "plan_hash": "h", "logs": {}}


def test_a_bad_older_checkpoint_never_counts_toward_those_kept_and_is_moved_not_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 3, payload(3))
    checkpoint.save(folder, 6, payload(6))
    six = folder / "step-00000006.pt"
    damaged = six.read_bytes()[:300]
    six.write_bytes(damaged)
    checkpoint.save(folder, 9, payload(9))  # keep 2: 9 and the newest good one before it, 3
    assert [p.name for p in checkpoint.list_checkpoints(folder)] == ["step-00000003.pt", "step-00000009.pt"]
    assert (folder / "damaged" / "step-00000006.pt").read_bytes() == damaged
    assert checkpoint.load_newest(folder)["step"] == 9


def test_the_retention_policy_never_counts_a_bad_checkpoint(tmp_path: Path) -> None:
    """keep_checkpoints = "last" keeps the newest *good* checkpoint; the bad newer one is moved aside."""
    recipe = write_recipe(tmp_path, recipe_text("keep", TWO_STEPS, run='keep_checkpoints = "last"'))
    plan = compile_recipe(recipe)
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save(folder, step, payload(step), keep=None)
    newest = folder / "step-00000002.pt"
    newest.write_bytes(b"PK\x03\x04" + newest.read_bytes()[4:100])
    gone = retention.prune(folder, plan, finished=False)
    assert gone == [] and [p.name for p in checkpoint.list_checkpoints(folder)] == ["step-00000001.pt"]
    assert (folder / "damaged" / "step-00000002.pt").is_file()


def test_a_checkpoint_whose_content_no_longer_matches_its_digest_is_set_aside(tmp_path: Path) -> None:
    """It loads (a valid zip, right keys), but one value changed after it was saved."""
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 3, payload(3))
    checkpoint.save(folder, 6, payload(6))
    six = folder / "step-00000006.pt"
    state = torch.load(six, weights_only=True)
    state["model"]["w"][0, 0] = 7.0  # the stored digest is the one of the saved content
    torch.save(state, six)
    warnings: list[str] = []
    got = checkpoint.load_newest(folder, warn=warnings.append)
    assert got is not None and got["step"] == 3
    assert len(warnings) == 1 and str(six) in warnings[0] and "digest does not match" in warnings[0]
    assert (folder / "damaged" / "step-00000006.pt").is_file() and not six.exists()


# ---------------------------------------------------------------- weights files that are not checkpoints


@pytest.mark.parametrize(
    "what, says",
    [
        ("/dev/zero", "it is a device or other special file, not a regular file"),
        ("text", "it starts with 68656c6c, not torch.save's zip or pickle header"),
        ("empty", "it starts with an empty file"),
        ("zip", "PytorchStreamReader failed"),
    ],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_a_weights_file_that_is_not_a_checkpoint_says_so(
    tmp_path: Path, what: str, says: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(what) if what.startswith("/") else tmp_path / "w.pt"
    if what == "text":
        path.write_text("hello, these are not weights\n")
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "zip":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    recipe = write_recipe(tmp_path, recipe_text("weights", TWO_STEPS, weights=str(path)))
    result = cli(capsys, command, recipe, *(["--out", tmp_path / "run"] if command == "run" else []))
    said = result.out + result.err
    assert result.rc == 2 and "Traceback" not in said
    assert f"model.weights: {path} is not a torch checkpoint" in said and says in said
    assert "IndexError" not in said and "file not found" not in said
    assert not (tmp_path / "run").exists()


class Payload:
    """Unpickling this would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_refused_pickle_says_how_to_convert_the_file_not_to_switch_the_check_off(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"fc.weight": torch.zeros(3, 512), "extra": Payload(marker)}
    torch.save(obj, path) if how == "torch.save" else path.write_bytes(pickle.dumps(obj))
    recipe = write_recipe(tmp_path, recipe_text("evil", TWO_STEPS, weights="evil.pt"))
    result = cli(capsys, "check", recipe)
    assert result.rc == 2 and not marker.exists()
    first, hint = result.out.split("hint: ", 1)
    assert "holds pickled Python objects besides tensors; files that carry code are refused" in first
    assert "convert it once to plain tensors" in hint and "state_dict" in hint and "safetensors" in hint
    # torch's own advice (re-run torch.load with weights_only=False) is not repeated
    assert "Re-running" not in result.out and "will likely succeed" not in result.out
    assert "weights_only` set to `False`" not in result.out and "WeightsUnpickler" not in result.out


# ---------------------------------------------------------------- resume re-checks the data


def unfinished_run(tmp_path: Path, recipe: Path, data_root: Path) -> Path:
    """A run directory as a run interrupted before its first checkpoint leaves it (its
    plan, recipe and env.json), with env.json's data_root pointing at `data_root`."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert cli(None, "plan", recipe, "-o", run_dir / "plan.json").rc == 0
    shutil.copyfile(recipe, run_dir / "recipe.toml")
    (run_dir / "env.json").write_text(json.dumps({"data_root": str(data_root)}))
    return run_dir


@pytest.mark.parametrize(
    "edit, says",
    [
        ("rename", "classes ['ant', 'cow'], the plan has ['ant', 'bee']"),
        ("fewer", "train 7 / val 4 images, the plan counted 8 / 4"),
        ("moved", "data folder 'data/train' not found"),
    ],
)
def test_resume_checks_the_data_against_the_plan_whatever_env_json_says(
    tmp_path: Path, edit: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = folder_recipe(tmp_path / "recipe")
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "recipe" / "data", other / "data")
    if edit == "rename":  # the same counts, another class
        for split in ("train", "val"):
            (other / "data" / split / "bee").rename(other / "data" / split / "cow")
    elif edit == "fewer":
        (other / "data/train/bee/0.png").unlink()
    else:
        shutil.rmtree(other / "data")
    run_dir = unfinished_run(tmp_path, recipe, other)
    result = cli(capsys, "resume", run_dir)
    # a run-time error names the run's recipe file, not "<recipe>"
    assert_user_error(
        result, f"error: {run_dir / 'recipe.toml'}", "data.train", says, f"data_root in {run_dir / 'env.json'}"
    )
    assert "<recipe>" not in result.err
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([LOCK_FILE, "plan.json", "recipe.toml", "env.json"])


# ---------------------------------------------------------------- permission-denied class folder


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_class_folder_that_cannot_be_read_is_reported_as_such(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "holds no images". Root reads any folder, so the refusal is made here, where
    the walk opens the folder."""
    recipe = folder_recipe(tmp_path)
    denied = tmp_path / "data/train/bee"
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = cli(capsys, command, recipe, *(["--out", tmp_path / "run"] if command == "run" else []))
    said = result.out + result.err
    assert result.rc == 2 and f"cannot read {denied}: Permission denied" in said and "data.train" in said
    assert "holds no images" not in said and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 6. bad images before step 0


class Started(Hooks):
    def __init__(self) -> None:
        self.sessions = 0

    def on_start(self, session: Session) -> None:
        self.sessions += 1


def test_run_reports_every_bad_image_before_step_0_and_makes_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = folder_recipe(tmp_path)
    bad_val = tmp_path / "data/val/bee/cut.png"
    bad_val.write_bytes((tmp_path / "data/val/bee/0.png").read_bytes()[:60])  # a truncated download
    bad_train = [tmp_path / "data/train/ant/notes.jpg", tmp_path / "data/train/bee/empty.png"]
    bad_train[0].write_bytes(b"\xff\xd8 not a jpeg" * 4)
    bad_train[1].write_bytes(b"")
    started = Started()
    with observe(started):
        result = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    # 10 train + 5 val files; the message lists all three bad ones, train first
    assert_user_error(
        result, f"error: {recipe}", "3 of 15 images cannot be read", *(f"\n  {p}: " for p in [*bad_train, bad_val])
    )
    assert result.err.index(str(bad_train[1])) < result.err.index(str(bad_val))
    assert started.sessions == 0 and not (tmp_path / "run").exists()  # no model built, no folder made
    result = cli(capsys, "check", "--verify-images", recipe)
    assert result.rc == 2 and "3 of 15 images cannot be read" in result.out


def test_verify_images_uses_worker_threads_and_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import ftcompile.images as images

    image_folder(tmp_path, {"a": 40})
    files = [(p, "data.train") for p in sorted((tmp_path / "a").iterdir())]
    (tmp_path / "a" / "3.png").write_bytes(b"")
    threads: set[str] = set()
    barrier = threading.Barrier(2, timeout=30)  # two files decoded at once, or this times out
    real = images.check_image

    def check(path: Path) -> str | None:
        threads.add(threading.current_thread().name)
        if path.name in ("0.png", "1.png"):
            barrier.wait()
        return real(path)

    monkeypatch.setattr(images, "check_image", check)
    bad = verify_images(files, threads=2, progress=True)
    assert bad == [BadImage(tmp_path / "a" / "3.png", "data.train", bad[0].reason)] and bad[0].reason
    assert len(threads) == 2
    assert "verifying images" in capsys.readouterr().err


@pytest.mark.slow
def test_where_checkpoint_and_evaluation_fall_together_the_checkpoint_comes_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A val image damaged after the run verified the data: the evaluation at step 2 fails,
    and the checkpoint of step 2 is already on disk. The message names the recipe file."""
    recipe = folder_recipe(tmp_path, run='checkpoint_every = "2 steps"\neval_every = "2 steps"')
    bad = tmp_path / "data/val/bee/1.png"
    bad.write_bytes(b"damaged later")
    monkeypatch.setattr("ftcompile.runtime.rundir.verify_images", lambda plan, root: None)
    result = cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert_user_error(result, f"error: {recipe}:", "data.val", f"cannot read image {bad}")
    state, why = checkpoint.verify(tmp_path / "run/checkpoints/step-00000002.pt")
    assert state is not None and state["step"] == 2, why


# ---------------------------------------------------------------- the plan hash covers the run settings


RUN_SETTINGS = {
    "precision": '"bf16"',
    "deterministic": "false",
    "compile": "true",
    "channels_last": "true",
    "device": '"auto"',
}


def test_run_settings_that_leave_the_change_list_alone_change_the_plan_hash(tmp_path: Path) -> None:
    """Each setting is in the plan's run section and nowhere else (the recipe's own record
    aside), and the hash covers that section: with the recipe record made equal, the plans
    still hash differently."""
    base = compile_recipe(write_recipe(tmp_path / "base", recipe_text("hashed", TWO_STEPS)))
    base_body = {k: v for k, v in base.to_dict().items() if k != "hash"}
    hashes = {base.hash}
    for field, value in RUN_SETTINGS.items():
        text = recipe_text("hashed", TWO_STEPS).replace(
            'device = "cpu"', f"device = {value}" if field == "device" else f'device = "cpu"\n{field} = {value}'
        )
        plan = compile_recipe(write_recipe(tmp_path / field, text))
        body = {k: v for k, v in plan.to_dict().items() if k != "hash"}
        assert plan.changes == base.changes and getattr(plan.run, field) != getattr(base.run, field)
        assert [k for k in body if body[k] != base_body[k]] == ["recipe", "run"], field
        assert {k for k in body["run"] if body["run"][k] != base_body["run"][k]} == {field}
        only_run = plan_hash({**base_body, "run": body["run"]})
        assert only_run not in hashes, field
        hashes.add(only_run)


@pytest.mark.parametrize(
    "field, value",
    [("precision", "bf16"), ("deterministic", False), ("compile", True), ("channels_last", True), ("device", "cuda")],
)
def test_a_plan_json_whose_run_section_was_edited_is_refused(
    tmp_path: Path, field: str, value: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, recipe_text("edited", TWO_STEPS))
    path = tmp_path / "plan.json"
    assert cli(capsys, "plan", recipe, "-o", path).rc == 0
    data = json.loads(path.read_text())
    assert data["run"][field] != value
    data["run"][field] = value  # hash left as it was
    path.write_text(json.dumps(data))
    with pytest.raises(RecipeError) as info:
        Plan.load(path)
    assert info.value.key == "hash"
    assert_user_error(
        cli(capsys, "run", path, "--out", tmp_path / "run", "--data-root", tmp_path),
        "plan hash does not match its content",
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- freezing, checked through requires_grad / grad


FREEZE_PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }
bn = "frozen"
cache_features = false

[phases.late]
after = ["warm"]
train = ["late", "head"]
steps = 1
lr = { head = 0.02, late = 0.01 }
bn = "frozen"
"""


class GradWatch(Hooks):
    """Before each optimizer step (after backward): per param group, its lr and, for every
    parameter, requires_grad and whether it has a gradient."""

    def __init__(self) -> None:
        self.seen: list[dict[str, tuple[float, list[bool], list[bool]]]] = []
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_start(self, session: Session) -> None:
        self.before = {k: v.detach().clone() for k, v in session.model.state_dict().items()}

        def pre(opt: torch.optim.Optimizer, *_: Any) -> None:
            self.seen.append(
                {
                    g["name"]: (
                        float(g["lr"]),
                        [p.requires_grad for p in g["params"]],
                        [p.grad is not None for p in g["params"]],
                    )
                    for g in opt.param_groups
                }
            )

        session.optimizer.register_step_pre_hook(pre)
        self.session = session

    def on_step(self, session: Session, info: Any) -> None:
        if info.step == 1:  # the end of `warm`
            self.after = {k: v.detach().clone() for k, v in session.model.state_dict().items()}


def check_freezing(plan: Plan, watch: GradWatch) -> None:
    """At every step: a group the phase trains requires grad and got a gradient; every other
    group requires none, has none, and its lr is 0."""
    assert len(watch.seen) == plan.total_steps
    for step, groups in enumerate(watch.seen):
        phase = plan.phase_at(step)
        for pg in plan.param_groups:
            lr, requires, has = groups[pg.name]
            if pg.group in phase.train:
                assert all(requires) and all(has), (step, pg.name)
            else:
                assert lr == 0.0, (step, pg.name, lr)
                assert not any(requires), f"step {step}: {pg.name} is frozen but requires grad"
                assert not any(has), f"step {step}: {pg.name} is frozen but has a gradient"


def run_watched(tmp_path: Path, name: str) -> tuple[Plan, GradWatch]:
    recipe = write_recipe(tmp_path, recipe_text(name, FREEZE_PHASES, data=SMALL))
    watch = GradWatch()
    with observe(watch):
        assert cli(None, "run", recipe, "--out", tmp_path / "run").rc == 0
    return Plan.load(tmp_path / "run" / "plan.json"), watch


@pytest.mark.slow
def test_frozen_groups_require_no_grad_and_get_none_at_every_step(tmp_path: Path) -> None:
    plan, watch = run_watched(tmp_path, "frozen")
    check_freezing(plan, watch)


@pytest.mark.slow
def test_a_freeze_that_does_nothing_is_caught_though_the_frozen_values_do_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the frozen groups' lr at 0, SGD leaves their values alone whether or not they
    are frozen: only requires_grad / grad tell a freeze that does nothing."""
    monkeypatch.setattr(Trainables, "set_trainable", lambda self, group, on: None)
    plan, watch = run_watched(tmp_path, "unfrozen")
    frozen = [p for pg in plan.param_groups if pg.group not in plan.phases[0].train for p in pg.params]
    assert frozen and all(torch.equal(watch.before[p], watch.after[p]) for p in frozen)  # values unchanged...
    with pytest.raises(AssertionError, match="is frozen but requires grad"):  # ...yet caught
        check_freezing(plan, watch)


# ---------------------------------------------------------------- resume with dropout


DROPOUT_PHASES = """
[phases.head]
train = ["head"]
steps = 4
lr = { head = 0.05 }
"""
DROPOUT_HEAD = "[model.head]\nhidden = [32]\ndropout = 0.5\n"
EVERY_2_ALL = 'checkpoint_every = "2 steps"\neval_every = "100 steps"\nkeep_checkpoints = "all"'


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dropout")
    recipe = write_recipe(
        folder, recipe_text("dropout", DROPOUT_PHASES, head=DROPOUT_HEAD, data=SMALL, run=EVERY_2_ALL)
    )
    assert cli(None, "run", recipe, "--out", folder / "run").rc == 0
    return folder / "run"


def stopped_at_2(run: Path, dest: Path) -> Path:
    """The run directory as a process stopped right after the checkpoint of step 2 leaves it."""
    dest.mkdir()
    for name in ("recipe.toml", "plan.json", "env.json", "metrics.jsonl", "lr.csv"):
        shutil.copyfile(run / name, dest / name)
    (dest / "checkpoints").mkdir()
    shutil.copyfile(run / "checkpoints/step-00000002.pt", dest / "checkpoints/step-00000002.pt")
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("restore", [True, False], ids=["rng-restored", "rng-not-restored"])
def test_resume_with_dropout_is_bitwise_only_when_the_rng_is_restored(
    dropout_run: Path, tmp_path: Path, restore: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head's dropout draws from torch's RNG at every step: a resume that skipped the
    RNG restore would train steps 2-3 with other masks, and this test shows it."""
    if not restore:
        monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    run_dir = stopped_at_2(dropout_run, tmp_path / "run")
    assert cli(None, "resume", run_dir).rc == 0
    resumed, whole = load_tensors(run_dir / "model.pt"), load_tensors(dropout_run / "model.pt")
    if restore:
        assert_same_tensors(resumed, whole)
    else:
        assert any(not torch.equal(resumed[k], whole[k]) for k in whole)
