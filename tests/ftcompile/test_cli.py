"""Stage 7, the command line: `plan`, `check`, `schema`, in this process through `main` and,
where a fresh interpreter matters (imports, exit codes), in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ftcompile.cli import main

Writer = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_plan_prints_model_data_phases_and_changes(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str
) -> None:
    rc, out, err = run(capsys, "plan", write(tiny))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("plan ") and "recipe tiny (recipe.toml)" in lines[0]
    model = next(line for line in lines if line.startswith("model "))
    assert "resnet18" in model and "classes 10" in model and "weights none" in model
    data = next(line for line in lines if line.startswith("data "))
    # 1442 train / 355 val images; ceil(1442 / 64) = 23 steps per epoch
    assert "builtin digits  train 1442  val 355  batch 64  steps/epoch 23  drop_last false" in data
    header = next(i for i, line in enumerate(lines) if line.startswith("phase "))
    rows = lines[header + 2 : header + 4]
    assert rows[0].split()[:4] == ["warmup", "-", "[0,", "23)"]
    assert rows[1].split()[:4] == ["full", "warmup", "[23,", "46)"]
    assert lines[header + 4] == ""  # the table has one row per phase
    start = next(i for i, line in enumerate(lines) if line.startswith("changes ("))
    assert lines[start] == f"changes ({out.count(chr(10)) - start - 1}; at step S = after S optimizer steps):"
    changes = lines[start + 1 :]
    assert changes[0].split() == ["0", "begin", "phase", "warmup"]
    assert "set head.lr = 0.1" in out and "set body.lr = 0.001" in out
    assert changes[-1].split() == ["46", "evaluate", "(end", "of", "full)"]  # checkpoint first, then evaluate


def test_json_equals_the_output_file(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path
) -> None:
    out_file = tmp_path / "plan.json"
    rc, out, _ = run(capsys, "plan", write(tiny), "--json", "-o", out_file)
    assert rc == 0
    printed = json.loads(out)
    assert printed == json.loads(out_file.read_text())
    assert printed["format"] == 1 and len(printed["hash"]) == 64


def test_trace_csv(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path) -> None:
    text = tiny.replace(
        "lr = { head = 0.1 }", 'lr = { head = 0.1 }\nscheduler = { type = "StepLR", step_size = 10, gamma = 0.3 }'
    )
    csv = tmp_path / "lr.csv"
    rc, out, _ = run(capsys, "plan", write(text), "--trace", csv)
    assert rc == 0 and f"wrote trace: {csv}" in out
    lines = csv.read_text().splitlines()
    assert lines[0] == "step,phase,trial,body,body.no_decay,head,head.no_decay"  # trial: empty outside trials
    assert len(lines) == 1 + 46  # one row per optimizer step
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(46))
    assert [r[1] for r in rows] == ["warmup"] * 23 + ["full"] * 23
    assert {r[2] for r in rows} == {""}  # no trial phases
    rows = [[r[0], r[1], *r[3:]] for r in rows]
    for r in rows:
        assert all(repr(float(x)) == x for x in r[2:])  # repr floats: exact round trip
    # warmup head: 0.1 * 0.3 ** (t // 10); 0.1 * 0.3 is 0.03 in floating point
    assert [float(r[4]) for r in rows[:23]] == [0.1] * 10 + [0.1 * 0.3] * 10 + [0.1 * 0.3 * 0.3] * 3
    assert {float(r[2]) for r in rows[:23]} == {0.0}
    assert {float(r[2]) for r in rows[23:]} == {0.01 / 10}


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "lr.png"
    rc, _, _ = run(capsys, "plan", write(tiny), "--plot", png)
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


MISSING = """\
name = "elsewhere"

[model]
arch = "resnet18"
num_classes = 5

[data]
train = "not/here/train"
val = "not/here/val"
batch_size = 16

[phases.only]
train = ["head"]
epochs = 2
lr = 0.1
"""


def test_dataset_size_replaces_counting(capsys: pytest.CaptureFixture[str], write: Writer) -> None:
    path = write(MISSING)
    rc, out, err = run(capsys, "plan", path, "--dataset-size", "1000", "--val-size", "200")
    assert rc == 0, err
    # ceil(1000 / 16) = 63 steps per epoch, 2 epochs
    assert "train 1000  val 200  batch 16  steps/epoch 63" in out
    assert "[0, 126)" in out


def test_missing_data_folder_without_sizes(capsys: pytest.CaptureFixture[str], write: Writer) -> None:
    rc, out, err = run(capsys, "plan", write(MISSING))
    assert rc == 2 and out == ""
    assert "recipe.toml:8: data.train: data folder 'not/here/train' not found" in err
    assert "hint:" in err


def test_check_many_recipes(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    a = write(tiny, "a.toml")
    b = write(tiny.replace("seed = 0", "seed = 1"), "b.toml")
    bad = write(tiny.replace("epochs = 1\nlr = { head = 0.1 }", "epoch = 1\nlr = { head = 0.1 }"), "bad.toml")
    rc, out, _ = run(capsys, "check", a, b, bad)
    assert rc == 2
    verdicts = [line for line in out.splitlines() if not line.startswith(" ")]
    assert len(verdicts) == 3
    assert verdicts[0].startswith(f"ok   {a}: 2 phases, 46 steps, plan ")
    assert verdicts[1].startswith(f"ok   {b}: 2 phases, 46 steps, plan ")
    assert verdicts[2].startswith(f"FAIL {bad}:") and "phases.warmup.epoch: unknown key" in verdicts[2]
    assert "did you mean 'epochs'?" in out


def test_check_all_good_exits_0(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    rc, out, _ = run(capsys, "check", write(tiny))
    assert rc == 0 and out.startswith("ok   ")


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "schema")
    assert rc == 0
    schema = json.loads(out)
    assert "phases" in schema["properties"]
    assert schema["title"].startswith("ftcompile recipe")


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys)
    assert rc == 2 and "usage: ftcompile" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("ftcompile ")


NO_TORCH = """
import sys
from ftcompile.cli import main
try:
    main({argv!r})
except SystemExit as exit:
    assert exit.code == 0, exit.code
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["plan", "--help"]], ids=" ".join)
def test_help_does_not_import_torch(argv: list[str], tmp_path: Path) -> None:
    proc = python("-c", NO_TORCH.format(argv=argv), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("ok")
    assert "usage: ftcompile" in proc.stdout
    assert "example" in proc.stdout  # every parser has an epilog of examples


def test_plan_in_a_subprocess(write: Writer, tiny: str, tmp_path: Path) -> None:
    """Also beside a `runtime/` package of the user's own, which `python -m` puts first on
    sys.path: ftcompile's runtime is ftcompile.runtime, so it is never shadowed."""
    path = write(tiny)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "__init__.py").write_text("raise ImportError('the user\\'s own runtime')\n")
    proc = python("-m", "ftcompile", "plan", path.name, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recipe"]["name"] == "tiny"
