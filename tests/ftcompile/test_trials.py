"""Trials at compile time: every alternative is checked and resolved like the phase itself;
the plan holds them all (and hashes them); the trace has one window per alternative."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.plan import Op, Plan
from ftcompile.trace import lr_trace

Writer = Callable[..., Path]

# The tiny recipe's "full" phase with a trials table appended (steps, not epochs: 3 each).
TRIALS = '\n[phases.full.trials]\n"lr.body" = ["head / 10", "head / 100"]\n{extra}\n'


def tiny_with(tiny: str, trials: str = "", extra: str = "") -> str:
    text = tiny.replace("epochs = 1\nlr = { head = 0.01", "steps = 3\nlr = { head = 0.01").replace(
        "epochs = 1\nlr = { head = 0.1 }", "steps = 2\nlr = { head = 0.1 }"
    )
    return text + (trials or TRIALS).format(extra=extra)


def test_alternatives_in_the_plan(tiny: str, write: Writer) -> None:
    plan = compile_recipe(write(tiny_with(tiny, extra='"weight_decay.body" = [0.0, 1e-3]')))
    full = plan.phases[1]
    assert full.trials is not None and full.trials.select == "val_top1"
    labels = [a.label for a in full.trials.alternatives]  # grid: the first key varies slowest
    assert labels == [
        "body=head / 10, weight_decay.body=0",
        "body=head / 10, weight_decay.body=0.001",
        "body=head / 100, weight_decay.body=0",
        "body=head / 100, weight_decay.body=0.001",
    ]
    assert [a.lr["body"].first for a in full.trials.alternatives] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    # The main change list holds one `trial` change; each alternative has its own window's changes.
    assert [c.op for c in plan.changes if c.step == 2][-1] == Op.TRIAL
    wd = [
        [c.value for c in a.changes if c.op == Op.SET and c.target == "body" and c.field == "weight_decay"]
        for a in full.trials.alternatives
    ]
    assert wd == [[0.0], [1e-3], [0.0], [1e-3]]
    assert plan.steps_with_trials == 2 + 4 * 3 and plan.total_steps == 5
    # The plan round-trips through JSON with the same hash, and the hash covers the alternatives.
    again = Plan.from_dict(plan.to_dict() | {"hash": plan.hash})
    assert again == plan and again.phases[1].trials == full.trials
    other = compile_recipe(write(tiny_with(tiny, extra='"weight_decay.body" = [0.0, 2e-3]'), "other.toml"))
    assert other.hash != plan.hash


def test_zip_pairs_and_trace_has_a_window_per_alternative(tiny: str, write: Writer) -> None:
    trials = '\n[phases.full.trials]\n"lr.head" = [0.01, 0.02]\n"lr.body" = ["head / 10", "head / 20"]\nmode = "zip"\n'
    plan = compile_recipe(write(tiny_with(tiny, trials)))
    rows = lr_trace(plan)
    assert [(r[0], r[3]) for r in rows] == [(0, None), (1, None), (2, 0), (3, 0), (4, 0), (2, 1), (3, 1), (4, 1)]
    body = plan.param_group_names.index("body")
    head = plan.param_group_names.index("head")
    assert [r[2][head] for r in rows[2:]] == [0.01] * 3 + [0.02] * 3  # constant LR (no scheduler)
    assert [r[2][body] for r in rows[2:]] == pytest.approx([1e-3] * 3 + [1e-3] * 3)  # 0.01/10 and 0.02/20


def test_train_alternatives_use_their_own_groups(tiny: str, write: Writer) -> None:
    """With alternatives over `train`, lr entries of groups an alternative does not train are dropped."""
    trials = '\n[phases.full.trials]\ntrain = [["head"], ["body", "head"]]\nselect = "val_loss"\n'
    plan = compile_recipe(write(tiny_with(tiny, trials)))
    alts = plan.phases[1].trials.alternatives
    assert [a.train for a in alts] == [("head",), ("body", "head")]
    assert list(alts[0].lr) == ["head"] and list(alts[1].lr) == ["body", "head"]
    # What follows a trial phase does not depend on the winner: the trace after it is one window.
    assert {a.label for a in alts} == {"train=head", "train=body+head"}


def test_plan_shows_every_alternative_and_the_cost(
    tiny: str, write: Writer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tiny_with(tiny))
    assert main(["plan", str(path), "--trace", str(tmp_path / "lr.csv")]) == 0
    out = capsys.readouterr().out
    assert "trials of full (2 alternatives" in out and "body=head / 100" in out
    assert "cost: 8 optimizer steps (5 without trials)" in out
    lines = (tmp_path / "lr.csv").read_text().splitlines()
    assert lines[0].startswith("step,phase,trial,")
    assert [line.split(",")[2] for line in lines[1:]] == ["", "", "0", "0", "0", "1", "1", "1"]


@pytest.mark.parametrize(
    "trials, key, says, hint",
    [
        (
            '"lr.body" = ["head / 10", "head / 100"]\n"epochs" = [1, 2]',
            "phases.full.trials.epochs",
            "may not change the phase's length",
            "make a phase of each length",
        ),
        ('"lr.body" = ["head / 10"]', "phases.full.trials.lr.body", "at least 2 values", "one alternative per value"),
        ('"lr.body" = ["head / 10", -1.0]', "phases.full.trials.lr.body[1]", "greater than 0", "> 0"),
        ('"lrr.body" = [1e-3, 1e-4]', "phases.full.trials.lrr.body", "not a trial key", "did you mean 'lr'"),
        ('"lr.body" = [1e-3, 1e-4]\nselect = "accuracy"', "phases.full.trials.select", "valid: val_loss, val_top1", ""),
        ('"bn" = ["train", "thawed"]', "phases.full.trials.bn[1]", "thawed", "use one of"),
        ('"lr.body" = ["head / 10", "stem / 10"]', "phases.full.lr.body", "alternative 1", "refer to"),
        ('"lr.body" = [1e-3, 1e-4]\nselect = "val_top5"\nmode = "zip"', None, "", ""),
    ],
)
def test_bad_trials_exit_2_with_key_line_and_hint(
    tiny: str, write: Writer, capsys: pytest.CaptureFixture[str], trials: str, key: str | None, says: str, hint: str
) -> None:
    path = write(tiny_with(tiny, f"\n[phases.full.trials]\n{trials}\n"))
    rc = main(["plan", str(path)])
    err = capsys.readouterr().err
    if key is None:  # 10 classes: val_top5 is a metric here
        assert rc == 0
        return
    assert rc == 2 and "Traceback" not in err
    assert f"{path}:" in err and f"{key}:" in err and says in err and hint in err
    line = int(err.split(f"{path}:")[1].split(":")[0])
    text = tiny_with(tiny, f"\n[phases.full.trials]\n{trials}\n").splitlines()
    if ".trials" in key:  # the trials table's header or the key's own line
        assert line >= text.index("[phases.full.trials]") + 1
    else:  # an error in the phase's own table, under this alternative
        assert text[line - 1].startswith(key.split(".")[2])


def test_a_group_no_alternative_trains_is_an_error(tiny: str, write: Writer) -> None:
    text = tiny_with(tiny, '\n[phases.full.trials]\ntrain = [["head"], ["head"]]\n')
    with pytest.raises(RecipeError) as exc:
        compile_recipe(write(text))
    assert exc.value.key == "phases.full.lr.body" and "no alternative trains it" in exc.value.message


def test_zip_lists_of_different_lengths(tiny: str, write: Writer) -> None:
    text = tiny_with(
        tiny, '\n[phases.full.trials]\n"lr.head" = [0.1, 0.2, 0.3]\n"lr.body" = [1e-3, 1e-4]\nmode = "zip"\n'
    )
    with pytest.raises(RecipeError) as exc:
        compile_recipe(write(text))
    assert exc.value.key == "phases.full.trials.mode"


# ---------------------------------------------------------------- an alternative twice is refused


@pytest.mark.parametrize(
    ("trials", "key", "words"),
    [
        ('"lr.head" = [0.001, 1e-3]', "phases.full.trials.lr.head[1]", "0.001 is the same value as [0]"),
        ('"lr.head" = [0.02, 0.01, "0.01"]', "phases.full.trials.lr.head[2]", "'0.01' is the same value as [1] (0.01)"),
        (
            '"lr.body" = ["head / 10", "head/10.0"]',
            "phases.full.trials.lr.body[1]",
            "'head/10.0' is the same value as [0]",
        ),
        ('"lr.head" = [1, 1.0]\n"lr.body" = [1e-3, 1e-4]', "phases.full.trials.lr.head[1]", "is the same value as [0]"),
        ('bn = ["train", "frozen", "train"]', "phases.full.trials.bn[2]", "'train' is the same value as [0]"),
        (
            'train = [["head"], ["body", "head"], ["body", "head"]]',
            "phases.full.trials.train[2]",
            "is the same value as [1]",
        ),
        (
            '"scheduler" = [{ type = "StepLR", step_size = 1 }, { step_size = 1.0, type = "StepLR" }]',
            "phases.full.trials.scheduler[1]",
            "is the same value as [0]",
        ),
        (
            'mode = "zip"\n"lr.head" = [0.01, 0.02, 0.01]\n"lr.body" = [1e-3, 1e-3, 0.001]',
            "phases.full.trials",
            "alternatives 0 and 2 are the same combination (lr.head = 0.01, lr.body = 0.001)",
        ),
        (
            '"lr.body" = ["head / 10", 0.001]',
            "phases.full.trials",  # head is 0.01: both are 0.001
            "alternatives 0 (body=head / 10) and 1 (body=0.001) resolve to the same phase",
        ),
    ],
    ids=[
        "number-spellings",
        "number-and-string",
        "expression-spellings",
        "int-and-float",
        "string",
        "list",
        "table",
        "zip-combination",
        "resolved-lr",
    ],
)
def test_an_alternative_given_twice_is_refused(
    tiny: str, write: Writer, capsys: pytest.CaptureFixture[str], trials: str, key: str, words: str
) -> None:
    """Twice the cost for the same result: exit 2 naming the key and the value."""
    assert_refused(write(tiny_with(tiny, "\n") + "\n[phases.full.trials]\n" + trials + "\n"), key, words, capsys)


def assert_refused(path: Path, key: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["check", str(path)]) == 2
    out = capsys.readouterr()
    message = out.out + out.err
    assert f"{key}: " in message and words in message, message
    assert "Traceback" not in message


def test_a_duration_and_its_steps_are_the_same_alternative(
    tiny: str, write: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1442 digits / batch 64 = 23 steps per epoch, so "1 epoch" is step_size 23
    text = tiny_with(tiny, "\n").replace(
        "steps = 3\nlr = { head = 0.01", 'steps = 3\nscheduler = { type = "StepLR", step_size = 2 }\nlr = { head = 0.01'
    )
    path = write(text + '\n[phases.full.trials]\n"scheduler.step_size" = [23, "1 epoch"]\n')
    assert_refused(
        path,
        "phases.full.trials",
        "alternatives 0 (scheduler.step_size=23) and 1 (scheduler.step_size=1 epoch) resolve to the same phase",
        capsys,
    )


def test_distinct_alternatives_are_kept(tiny: str, write: Writer) -> None:
    """The check compares values, not positions: a value repeated across keys, or in a zip whose
    other list differs there, is no duplicate."""
    zipped = (
        tiny_with(tiny, "\n")
        + '\n[phases.full.trials]\nmode = "zip"\n"lr.head" = [0.01, 0.02, 0.01]\n"lr.body" = [1e-3, 1e-3, 2e-3]\n'
    )
    assert len(compile_recipe(write(zipped, "zip.toml")).phases[1].trials.alternatives) == 3
    grid = tiny_with(tiny, "\n") + '\n[phases.full.trials]\n"lr.head" = [0.01, 0.001]\n"lr.body" = [0.01, 0.001]\n'
    assert len(compile_recipe(write(grid, "grid.toml")).phases[1].trials.alternatives) == 4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lrs=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=4, unique=True), data=st.data())
def test_any_value_spelled_again_is_found(tiny: str, write: Writer, lrs: list[float], data: st.DataObject) -> None:
    """A value again in another spelling (1e-3 / 0.001 / "0.001" / "0.001 * 1"), anywhere in the list."""
    i = data.draw(st.integers(0, len(lrs) - 1))
    spelled = data.draw(st.sampled_from([repr(lrs[i]), f"{lrs[i]:.17e}", f'"{lrs[i]!r}"', f'"{lrs[i]!r} * 1"']))
    at = data.draw(st.integers(i + 1, len(lrs)))
    values = [repr(v) for v in lrs]
    values.insert(at, spelled)
    path = write(tiny_with(tiny, "\n") + f'\n[phases.full.trials]\n"lr.head" = [{", ".join(values)}]\n')
    with pytest.raises(RecipeError) as err:
        compile_recipe(path)
    first = min(i, at)  # sorted positions: the duplicate is whichever comes second
    assert err.value.key in (f"phases.full.trials.lr.head[{at}]", "phases.full.trials")
    assert f"same value as [{first}]" in err.value.message or "resolve to the same phase" in err.value.message


def test_a_trial_phase_that_can_stop_early_counts_its_evaluations(
    tiny: str, write: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The evaluations of a trial phase are in its alternatives' change lists; the plan said 0."""
    stop = 'steps = 3\nstop_early = { metric = "val_loss", patience = 1 }\nlr = { head = 0.01'
    text = tiny_with(tiny).replace("steps = 3\nlr = { head = 0.01", stop) + '\n[run]\neval_every = "1 step"\n'
    plan = compile_recipe(write(text))
    assert plan.evaluations("full") == 3  # full is [2, 5): after steps 3, 4 and 5
    assert plan.evaluations("warmup") == 2  # [0, 2): after steps 1 and 2
    capsys.readouterr()
    assert main(["plan", str(write(text))]) == 0
    out = capsys.readouterr().out
    assert "stop_early val_loss patience 1 min_delta 0 (3 evaluations planned per alternative)" in out
    no_trials = text[: text.index("[phases.full.trials]")] + '[run]\neval_every = "1 step"\n'
    assert main(["plan", str(write(no_trials, "plain.toml"))]) == 0
    assert "stop_early val_loss patience 1 min_delta 0 (3 evaluations planned)" in capsys.readouterr().out
