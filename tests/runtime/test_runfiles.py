"""A run directory's files read back (runtime/runfiles.py): a damaged or hand-edited file is
one message naming the file, its line and the field (exit 2) for report, eval, predict and
export, and an "unreadable" row of `ftcompile runs`, which lists the other runs as usual.
Whatever a file holds, a reader raises RecipeError or returns what the model allows, never
another exception (property tests over arbitrary JSON and text)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ftcompile.runtime import runfiles
from ftcompile.runtime.runs import describe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_helpers import child_env, cli, recipe_text, write_recipe

from ftcompile.compiler import CompileOptions, compile_checked
from ftcompile.errors import RecipeError
from ftcompile.plan import Plan

# A plan with a trial phase (2 alternatives between warm and last): trials.csv is checked against it.
PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }

[phases.tune]
after = ["warm"]
train = ["head"]
steps = 2
lr = { head = 0.05 }
[phases.tune.trials]
"lr.head" = [0.1, 0.01]

[phases.last]
after = ["tune"]
train = ["head"]
steps = 2
lr = { head = 0.01 }
"""
HEADER = ["phase", "k", "label", "val_loss", "val_top1", "val_top5", "chosen"]


def assert_user_error(result: Any, *words: str) -> None:
    assert result.rc == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, (word, result.err)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    recipe = write_recipe(tmp_path_factory.mktemp("plan"), recipe_text("files", PHASES))
    return compile_checked(recipe, CompileOptions()).plan


def fake_run(folder: Path, plan: Plan) -> Path:
    """A run directory as far as the readers go: plan.json and env.json, nothing trained."""
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(plan.to_json() + "\n")
    (folder / "env.json").write_text(json.dumps({"data_root": str(folder)}))
    return folder


def write_trials(run_dir: Path, plan: Plan, edit: dict[str, str] | None = None, at: int = 1) -> None:
    """Both alternatives of `tune`, the second chosen; row `at` with `edit` applied."""
    labels = [alt.label for alt in plan.phases[1].trials.alternatives]
    rows = [
        dict(zip(HEADER, ["tune", str(k), labels[k], "0.5", "0.75", "", str(k == 1).lower()], strict=False))
        for k in range(2)
    ]
    rows[at].update(edit or {})
    with open(run_dir / "trials.csv", "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(HEADER)
        out.writerows([list(r.values()) for r in rows])


def copy_run(used_run: tuple[Path, str], to: Path) -> Path:
    """The session's trained run, copied before a test edits its files."""
    shutil.copytree(used_run[0], to)
    return to


# ---------------------------------------------------------------- runs


@pytest.mark.slow
@pytest.mark.parametrize("summary", ["[]", "{}", '{"status": "done"}', "{ cut"])
def test_runs_lists_an_unreadable_run_and_the_others(
    used_run: tuple[Path, str], tmp_path: Path, summary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = copy_run(used_run, tmp_path / "runs" / "good")
    bad = copy_run(used_run, tmp_path / "runs" / "bad")
    (bad / "summary.json").write_text(summary)
    r = cli(capsys, "runs", tmp_path / "runs", "--json")
    assert r.rc == 0, r.err
    rows = {Path(row["path"]).name: row for row in json.loads(r.out)}
    assert rows["good"]["status"] == "finished" and rows["good"]["phases_done"] == 2
    assert rows["bad"]["status"] == "unreadable" and str(bad / "summary.json") in rows["bad"]["error"]
    r = cli(capsys, "runs", tmp_path / "runs")
    assert r.rc == 0 and "Traceback" not in r.err
    assert "finished" in r.out and "unreadable" in r.out
    assert f"\nerrors:\n  {bad / 'summary.json'}" in r.out  # the file (with its line or field) named
    assert good.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
)
def test_any_summary_json_is_a_row(value: Any, plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = fake_run(tmp_path_factory.mktemp("any") / "run", plan)
    (run_dir / "summary.json").write_text(json.dumps(value))
    row = describe(run_dir)
    assert row["status"] in (*runfiles.STATUSES, "unreadable")
    assert (row["status"] == "unreadable") == (row["error"] is not None and "summary.json" in row["error"])


def test_runs_imports_no_torch(plan: Plan, tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "runs" / "r", plan)
    (run_dir / "summary.json").write_text("[]")
    script = (
        "import sys\nfrom ftcompile.cli import main\nassert main(['runs', 'runs']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "unreadable" in proc.stdout


# ---------------------------------------------------------------- report: eval.json, metrics.jsonl


@pytest.mark.slow
def test_report_names_the_field_of_a_damaged_eval_json(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_run(used_run, tmp_path / "run")
    if not (run_dir / "eval.json").is_file():
        assert cli(capsys, "eval", run_dir).rc == 0
    good = json.loads((run_dir / "eval.json").read_text())
    for edit, field in [
        (lambda e: e["per_class"][3].pop("f1"), "per_class[3].f1"),  # an eval record lacking a field
        (lambda e: e.pop("macro_f1"), "macro_f1"),
        (lambda e: e.update(top1="high"), "top1"),
        (lambda e: e["confusion"].pop(), "confusion"),  # 9 rows for 10 classes
        (lambda e: e.update(classes=e["classes"][::-1]), "classes"),
    ]:
        edited = json.loads(json.dumps(good))
        edit(edited)
        (run_dir / "eval.json").write_text(json.dumps(edited))
        assert_user_error(
            cli(capsys, "report", run_dir, "-o", tmp_path / "r.html"),
            f"{run_dir / 'eval.json'}: {field}: ",
            "eval.json is damaged or was edited",
            "ftcompile eval",
        )
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_report_names_the_line_and_field_of_a_damaged_metrics_record(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_run(used_run, tmp_path / "run")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if '"eval"' in line)
    for edit, field in [
        (lambda r: r.pop("val_loss"), "val_loss"),
        (lambda r: r.update(step="4"), "step"),
        (lambda r: r.update(type="evaluation"), "type"),
    ]:
        rec = json.loads(lines[n])
        edit(rec)
        edited = [*lines[:n], json.dumps(rec), *lines[n + 1 :]]
        (run_dir / "metrics.jsonl").write_text("\n".join(edited) + "\n")
        assert_user_error(
            cli(capsys, "report", run_dir, "-o", tmp_path / "r.html"), f"{run_dir / 'metrics.jsonl'}:{n + 1}: {field}: "
        )


def test_a_line_being_written_is_left_out_and_a_bad_one_named(tmp_path: Path) -> None:
    rec = {"type": "eval", "step": 2, "epoch": 1.0, "phase": "warm", "val_loss": 0.5, "top1": 0.75}
    tmp_path.joinpath("metrics.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(rec)[:20])
    assert runfiles.read_evals(tmp_path) == [rec]  # the unterminated last line: being written
    tmp_path.joinpath("metrics.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(rec)[:20] + "\n")
    with pytest.raises(RecipeError) as err:
        runfiles.read_evals(tmp_path)
    assert err.value.line == 2 and "not a JSON record" in err.value.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list('{}[]",:0123456789.-abcenrtu_ \n')), max_size=80))
def test_any_log_text_is_records_or_one_error(text: str, plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = tmp_path_factory.mktemp("log")
    for name in ("metrics.jsonl", "trials.csv", "lr.csv"):
        (run_dir / name).write_text(text)
    for read in (
        lambda: runfiles.read_records(run_dir),
        lambda: runfiles.read_trials(run_dir, plan),
        lambda: runfiles.read_lr(run_dir, plan),
    ):
        try:
            read()
        except RecipeError as err:
            assert err.file is not None and Path(err.file).parent == run_dir


# ---------------------------------------------------------------- report: trials.csv against plan.json


def test_trials_csv_as_the_run_writes_it_reads_back(plan: Plan, tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "run", plan)
    write_trials(run_dir, plan)
    assert [r["k"] for r in runfiles.read_trials(run_dir, plan)] == ["0", "1"]
    assert runfiles.chosen_alternatives(run_dir, plan) == {"tune": 1}


@pytest.mark.parametrize(
    "edit, at, line, field, says",
    [
        ({"val_loss": "abc"}, 1, 3, "val_loss", "'abc' is not a number"),
        ({"val_top1": "1.5"}, 0, 2, "val_top1", "outside [0, 1"),
        ({"k": "5"}, 1, 3, "k", "alternative '5' is not in plan.json: phase tune has k = 0..1"),
        ({"phase": "warm"}, 0, 2, "phase", "'warm' is not a trial phase of plan.json"),
        ({"phase": "nope"}, 1, 3, "phase", "'nope' is not a trial phase of plan.json"),
        ({"label": "lr.head=9"}, 0, 2, "label", "is not alternative 0's label in plan.json"),
        ({"chosen": "yes"}, 1, 3, "chosen", "neither true nor false"),
        ({"chosen": "true"}, 0, 3, "chosen", "a second chosen alternative of phase tune"),
        ({"k": "0"}, 1, 3, "k", "a second row for alternative 0"),
    ],
    ids=[
        "val_loss-abc",
        "top1-above-1",
        "k-5",
        "phase-without-trials",
        "phase-not-in-plan",
        "label",
        "chosen-yes",
        "two-chosen",
        "k-twice",
    ],
)
def test_report_refuses_a_hand_edited_trials_csv(
    plan: Plan,
    tmp_path: Path,
    edit: dict[str, str],
    at: int,
    line: int,
    field: str,
    says: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = fake_run(tmp_path / "run", plan)
    write_trials(run_dir, plan, edit, at)
    assert_user_error(
        cli(capsys, "report", run_dir, "-o", tmp_path / "r.html"),
        f"{run_dir / 'trials.csv'}:{line}: {field}: ",
        says,
        "trials.csv is damaged or was edited by hand",
    )
    assert not (tmp_path / "r.html").exists()


def test_lr_csv_is_checked_against_the_plan(plan: Plan, tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "run", plan)
    names = plan.param_group_names
    header = ",".join(["step", "phase", "trial", *names])
    good = f"0,warm,,{','.join(['0.05'] * len(names))}\n2,tune,1,{','.join(['0.01'] * len(names))}\n"
    (run_dir / "lr.csv").write_text(header + "\n" + good)
    rows = runfiles.read_lr(run_dir, plan)
    assert [(r["step"], r["trial"], r[names[0]]) for r in rows] == [(0, None, 0.05), (2, 1, 0.01)]
    for bad, field in [("0,warm,,abc", names[0]), ("99,warm,,0.1", "step"), ("0,nope,,0.1", "phase")]:
        (run_dir / "lr.csv").write_text(header + "\n" + bad + "," * (len(names) - 1) + "\n")
        with pytest.raises(RecipeError) as err:
            runfiles.read_lr(run_dir, plan)
        assert (err.value.line, err.value.key) == (2, field)


# ---------------------------------------------------------------- env.json, summary.json on resume


@pytest.mark.parametrize(
    "env, field",
    [
        ({"data_root": 5}, "data_root"),
        ({}, "data_root"),
        ({"data_root": ".", "processes": "two"}, "processes"),
        ({"data_root": ".", "colour": "red"}, "colour"),
    ],
)
def test_eval_predict_export_name_the_field_of_a_damaged_env_json(
    plan: Plan, tmp_path: Path, env: dict[str, Any], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = fake_run(tmp_path / "run", plan)
    (run_dir / "env.json").write_text(json.dumps(env))
    for command in (["eval"], ["predict", "x.png"], ["export", "--format", "safetensors"]):
        assert_user_error(cli(capsys, command[0], run_dir, *command[1:]), f"{run_dir / 'env.json'}: {field}: ")


def test_resume_writes_a_damaged_summary_again(plan: Plan, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ftcompile.runtime.status import RunStatus

    run_dir = fake_run(tmp_path / "run", plan)
    (run_dir / "summary.json").write_text("[]")
    status = RunStatus(run_dir, plan)
    assert status.attempts == 1 and "summary.json" in capsys.readouterr().err
    status.write("running")
    assert runfiles.read_summary(run_dir)["status"] == "running"


# ---------------------------------------------------------------- predict --topk


@pytest.mark.slow
def test_predict_refuses_a_topk_below_1_and_lists_every_class_above_the_count(
    used_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    run_dir, _ = used_run
    image = Path("digit.png")  # the tests run in tmp_path (conftest)
    Image.new("RGB", (8, 8), (255, 255, 255)).save(image)
    for topk in ("0", "-1"):
        assert_user_error(
            cli(capsys, "predict", run_dir, image, "--topk", topk), "--topk: must be at least 1", f"got {topk}"
        )
    r = cli(capsys, "predict", run_dir, image, "--topk", "50", "--json")
    assert r.rc == 0, r.err
    [prediction] = json.loads(r.out)["predictions"]
    assert len(prediction["top"]) == 10  # the class count
