"""`check` where the data is not (a CI runner, a pre-commit hook), and `--dataset-size` standing
in only for a data folder that is absent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ftcompile.cli import main
from ftcompile.compiler import CompileOptions, compile_checked

Writer = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]

ABSENT = """\
#:schema recipe.schema.json
name = "absent"

[model]
arch = "resnet18"
num_classes = 5

[data]
train = "not/here/train"
val = "not/here/val"
batch_size = 16

[groups]
body = ["backbone"]
head = ["head"]

[phases.warmup]
train = ["head"]
epochs = 1
lr = { head = 0.1 }
scheduler = { type = "OneCycleLR", pct_start = 0.3 }

[phases.full]
after = ["warmup"]
train = ["body", "head"]
epochs = 2
lr = { head = 0.01, body = "head / 10" }
scheduler = { type = "CyclicLR", base_lr = "lr / 10", max_lr = "lr", step_size_up = "0.5 epoch" }
"""


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_check_without_data_checks_the_rest(capsys: pytest.CaptureFixture[str], write: Writer) -> None:
    path = write(ABSENT)
    rc, out, err = run(capsys, "check", path)
    assert rc == 0, out + err
    assert out == f"ok   {path}: 2 phases (data not found here: step counts not checked)\n"


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (('"head / 10"', '"head / ten"'), "phases.full.lr.body"),  # an expression
        (
            ('step_size_up = "0.5 epoch"', 'step_sise_up = "0.5 epoch"'),
            "phases.full.scheduler.step_sise_up",
        ),  # a scheduler argument
        (('body = ["backbone"]', 'body = ["backbone", "layer9"]'), "groups.body[1]"),  # a selector
        (('after = ["warmup"]', 'after = ["warmpu"]'), "phases.full.after"),  # the graph
        (("num_classes = 5", "num_classes = 1"), "model.num_classes"),  # the schema
    ],
)
def test_check_without_data_still_finds_errors(
    capsys: pytest.CaptureFixture[str], write: Writer, edit: tuple[str, str], key: str
) -> None:
    assert edit[0] in ABSENT
    rc, out, _ = run(capsys, "check", write(ABSENT.replace(*edit)))
    assert rc == 2 and out.startswith("FAIL ") and key in out, out


def test_require_data_makes_an_absent_folder_an_error(capsys: pytest.CaptureFixture[str], write: Writer) -> None:
    rc, out, _ = run(capsys, "check", "--require-data", write(ABSENT))
    assert rc == 2
    assert "data.train: data folder 'not/here/train' not found" in out
    assert "--dataset-size N --val-size M" in out  # the way to plan without the data


def test_check_with_sizes_counts_steps(capsys: pytest.CaptureFixture[str], write: Writer) -> None:
    rc, out, _ = run(capsys, "check", write(ABSENT), "--dataset-size", "160", "--val-size", "20")
    # 160 / 16 = 10 steps per epoch, 1 + 2 epochs
    assert rc == 0 and ": 2 phases, 30 steps, plan " in out


def test_plan_still_needs_the_data_or_sizes(capsys: pytest.CaptureFixture[str], write: Writer) -> None:
    rc, out, err = run(capsys, "plan", write(ABSENT))
    assert rc == 2 and out == "" and "data.train: data folder 'not/here/train' not found" in err


def test_dataset_size_does_not_replace_builtin_counts(capsys: pytest.CaptureFixture[str]) -> None:
    quickstart = REPO / "recipes" / "quickstart.toml"
    rc, out, _ = run(capsys, "plan", quickstart, "--dataset-size", "1000", "--val-size", "200")
    assert rc == 0
    # the real digits 5-9: 719 train images, ceil(719 / 32) = 23 steps per epoch, 10 epochs
    assert "train 719  val 177  batch 32  steps/epoch 23" in out and "[92, 230)" in out


def test_dataset_size_stands_in_only_for_the_absent_folder(write: Writer, tmp_path: Path, image_folders) -> None:
    image_folders(tmp_path / "data" / "train", {"cat": 20, "dog": 12})
    text = (
        ABSENT.replace("not/here/train", "data/train")
        .replace("not/here/val", "data/val")
        .replace("num_classes = 5", 'num_classes = "auto"')
    )
    plan = compile_checked(write(text), CompileOptions(dataset_size=1000, val_size=50)).plan
    # train is here: its 32 images and 2 classes count, not 1000; val is absent: 50
    assert (plan.data.train_size, plan.data.val_size) == (32, 50)
    assert plan.data.class_names == ["cat", "dog"] and plan.data.class_counts == [20, 12]


def test_nominal_data_is_reported(write: Writer) -> None:
    compiled = compile_checked(write(ABSENT), CompileOptions(nominal_data=True))
    assert compiled.nominal_data == ("data.train", "data.val")
    # a nominal train set of 100 full batches: 100 steps per epoch
    assert compiled.plan.data.steps_per_epoch == 100 and compiled.plan.total_steps == 300


def test_marked_only_skips_other_toml_files(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    recipe = write("#:schema ../recipes/recipe.schema.json\n" + tiny, "a.toml")
    other = write("[tool.black]\nline-length = 100\n", "pyproject.toml")
    rc, out, _ = run(capsys, "check", "--marked-only", recipe, other)
    assert rc == 0 and out.count("ok   ") == 1 and "pyproject" not in out
    rc, out, _ = run(capsys, "check", recipe, other)  # without the flag every file is a recipe
    assert rc == 2 and "pyproject.toml" in out


@pytest.mark.parametrize("command", [["run"], ["lr-find", "--phase", "warmup"]])
def test_a_command_that_needs_the_data_does_not_suggest_sizes_it_does_not_take(
    capsys: pytest.CaptureFixture[str], write: Writer, command: list[str]
) -> None:
    """run's hint said --dataset-size, which run does not take: it says --data-root now."""
    path = write(ABSENT)
    rc, out, err = run(
        capsys, command[0], path, *command[1:], *(["-o", path.parent / "lrf"] if command[0] == "lr-find" else [])
    )
    assert rc == 2 and "data.train: data folder 'not/here/train' not found" in err
    assert "--dataset-size" not in err and "--data-root DIR" in err
    rc, _, err = run(capsys, "plan", path)  # plan takes the sizes and still says so
    assert rc == 2 and "--dataset-size N --val-size M" in err


def test_counts_of_one_are_singular(capsys: pytest.CaptureFixture[str], write: Writer) -> None:
    """'1 phases' in check's line; render.counted is the one rule."""
    from ftcompile.render import counted

    one = ABSENT.split("[phases.full]")[0]
    rc, out, _ = run(capsys, "check", write(one))
    assert rc == 0 and ": 1 phase (data not found here" in out
    rc, out, _ = run(capsys, "check", write(one), "--dataset-size", "16", "--val-size", "16")
    assert rc == 0 and ": 1 phase, 1 step, plan " in out  # 16 / 16 = 1 step per epoch, 1 epoch
    assert [counted(n, "phase") for n in (0, 1, 2)] == ["0 phases", "1 phase", "2 phases"]
    assert counted(3, "class") == "3 classes"
