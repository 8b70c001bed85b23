"""Every kind of user error ends with exit code 2 and one readable message: the file, the key
path, the line where the key is in the file, a hint, and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftcompile.cli import main

Writer = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    old: str  # text of the tiny recipe to replace ...
    new: str  # ... by this (its first line is where the error is, when `line` is true)
    key: str | None  # key path in the message
    says: tuple[str, ...]  # in the message
    hint: str = ""  # in the hint
    at: str = ""  # the line the key is on, when not the first line of `new`


WARMUP = "epochs = 1\nlr = { head = 0.1 }"
FULL_LR = 'lr = { head = 0.01, body = "head / 10" }'
OPT = 'type = "SGD"'

CASES = {
    "toml-syntax": Case("batch_size = 64", "batch_size = = 64", None, ("TOML syntax error", "column 14"), "TOML"),
    "unknown-key": Case(
        WARMUP, "epoch = 1\nlr = { head = 0.1 }", "phases.warmup.epoch", ("unknown key",), "did you mean 'epochs'?"
    ),
    "wrong-type": Case(
        "batch_size = 64", 'batch_size = "big"', "data.batch_size", ("valid integer", "'big'"), "whole number"
    ),
    "negative-lr": Case(
        "lr = { head = 0.1 }", "lr = { head = -0.1 }", "phases.warmup.lr.head", ("greater than 0", "-0.1"), "> 0"
    ),
    "zero-epochs": Case(WARMUP, "epochs = 0\nlr = { head = 0.1 }", "phases.warmup.epochs", ("greater than 0",), "> 0"),
    "one-class": Case(
        "num_classes = 10", "num_classes = 1", "model.num_classes", ("greater than or equal to 2",), ">= 2"
    ),
    "unknown-arch": Case(
        'arch = "resnet18"', 'arch = "resnet51"', "model.arch", ("unknown architecture 'resnet51'",), "'resnet50'"
    ),
    "bad-weights": Case(
        "num_classes = 10",
        'num_classes = 10\nweights = "IMAGENET1K_V9"',
        "model.weights",
        ("'IMAGENET1K_V9' is not a weights name for resnet18",),
        "IMAGENET1K_V1",
        at="weights =",
    ),
    "unknown-group": Case(
        'train = ["head"]', 'train = ["haed"]', "phases.warmup.train[0]", ("unknown group 'haed'",), "'head'"
    ),
    "unknown-phase": Case(
        'after = ["warmup"]', 'after = ["warmpu"]', "phases.full.after[0]", ("unknown phase 'warmpu'",), "'warmup'"
    ),
    "cycle": Case(
        "[phases.warmup]",
        '[phases.warmup]\nafter = ["full"]',
        "phases.warmup.after",
        ("cycle: warmup -> full -> warmup",),
        "remove one",
        at='after = ["full"]',
    ),
    "empty-selector": Case(
        'body = ["backbone"]', 'body = ["layer5"]', "groups.body[0]", ("'layer5' matches no parameter",), "'layer4'"
    ),
    "overlapping-groups": Case(
        'head = ["head"]',
        'head = ["head", "fc.bias"]\nlast = ["layer4.1", "layer4"]',
        "groups.last",
        ("'layer4.1.conv1.weight' is in two groups", "'body' and 'last'"),
        "narrow one",
        at="last =",
    ),
    "bad-lr-expression": Case(
        FULL_LR, 'lr = { head = 0.01, body = "head //" }', "phases.full.lr.body", ("cannot parse",), "head"
    ),
    "unknown-optimizer": Case(OPT, 'type = "SDG"', "optimizer.type", ("unknown optimizer 'SDG'",), "'SGD'"),
    "unknown-optimizer-argument": Case(
        "momentum = 0.9", "momentun = 0.9", "optimizer.momentun", ("SGD has no argument 'momentun'",), "'momentum'"
    ),
    "unknown-scheduler": Case(
        "lr = { head = 0.1 }",
        'lr = { head = 0.1 }\nscheduler = { type = "StepLr", step_size = 2 }',
        "phases.warmup.scheduler.type",
        ("unknown scheduler 'StepLr'",),
        "'StepLR'",
        at="scheduler =",
    ),
    "unknown-scheduler-argument": Case(
        "lr = { head = 0.1 }",
        'lr = { head = 0.1 }\nscheduler = { type = "StepLR", stepsize = 2 }',
        "phases.warmup.scheduler.stepsize",
        ("StepLR has no argument 'stepsize'",),
        "'step_size'",
        at="scheduler =",
    ),
    "nothing-to-train": Case(
        'train = ["head"]', "train = []", "phases.warmup.train", ("at least 1 item",), "at least 1"
    ),
    "missing-data-folder": Case(
        'builtin = "digits"',
        'train = "data/train"\nval = "data/val"',
        "data.train",
        ("data folder 'data/train' not found",),
        "relative to the recipe's folder",
    ),
}


def line_no(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_user_error(case: Case, capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    assert tiny.count(case.old) == 1
    text = tiny.replace(case.old, case.new)
    path = write(text)
    capsys.readouterr()
    rc = main(["plan", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    first, *rest = err.splitlines()
    assert first.startswith(f"error: {path}")  # the file
    if case.key:
        assert f": {case.key}: " in first
    line = line_no(text, case.at or case.new.splitlines()[0])
    assert first.startswith(f"error: {path}:{line}: ")  # and the line
    for words in case.says:
        assert words in first
    hints = [line for line in rest if line.startswith("  hint: ")]
    assert len(hints) == 1 and case.hint in hints[0]


def test_toml_syntax_error_gives_line_and_column(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    text = tiny.replace("batch_size = 64", "batch_size = = 64")
    path = write(text)
    assert main(["check", str(path)]) == 2
    out = capsys.readouterr().out
    line = line_no(text, "batch_size = = 64")
    assert f"FAIL {path}:{line}: TOML syntax error (line {line}, column 14)" in out  # after `batch_size = `


def test_several_errors_are_printed_together(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    text = tiny.replace("num_classes = 10", "num_classes = 1").replace("batch_size = 64", "batch_size = 0")
    path = write(text)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line_no(text, 'num_classes')}: model.num_classes: " in err
    assert f"{path}:{line_no(text, 'batch_size')}: data.batch_size: " in err
    assert err.count("hint:") == 2


def test_missing_recipe_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert "nope.toml: file not found" in err and "hint:" in err


def test_damaged_plan_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"format": 1, "hash": "0"}')
    assert main(["run", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "plan.json" in err and "hash" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["toml-syntax", "missing-data-folder"])
def test_user_error_in_a_subprocess(case: str, write: Writer, tiny: str, tmp_path: Path) -> None:
    c = CASES[case]
    path = write(tiny.replace(c.old, c.new))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "ftcompile", "plan", path.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path.name}:") and "hint:" in proc.stderr
