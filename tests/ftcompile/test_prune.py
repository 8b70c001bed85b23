"""`trials.prune` at compile time: successive halving inside a trial phase.

The recipe's rung points (fractions of the window) become steps, each alternative's own
change list gets an evaluation at every rung, the plan carries the rungs (`TrialsPlan.prune`)
and `plan` shows what runs and what it costs. Pruning never touches an alternative's LR
window: the trace is the one of the same recipe without `prune`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ftcompile import estimate
from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.plan import Op, Plan, Prune, TrialsPlan
from ftcompile.schema import Phase
from ftcompile.trace import lr_trace
from ftcompile.trials import prune_plan

Writer = Callable[..., Path]

# The tiny recipe with warmup [0, 2) and full [2, 22): 20 steps, 4 alternatives of the body's LR.
FOUR = '\n[phases.full.trials]\n"lr.body" = ["head / 3", "head / 10", "head / 30", "head / 100"]\n{prune}\n'


def recipe(
    tiny: str,
    prune: str = "prune = { at = [0.25, 0.5], keep = 0.5 }",
    full: int = 20,
    extra: str = "",
    trials: str = FOUR,
) -> str:
    text = tiny.replace("epochs = 1\nlr = { head = 0.01", f"steps = {full}\nlr = {{ head = 0.01").replace(
        "epochs = 1\nlr = { head = 0.1 }", "steps = 2\nlr = { head = 0.1 }"
    )
    return text + trials.format(prune=prune) + extra


def phase(window: int, at: list[float], keep: float, values: int = 2) -> Phase:
    return Phase.model_validate(
        {
            "train": ["head"],
            "steps": window,
            "lr": 0.1,
            "trials": {"lr.head": [0.1 * (i + 1) for i in range(values)], "prune": {"at": at, "keep": keep}},
        }
    )


# ---------------------------------------------------------------- rung steps and survivors


@pytest.mark.parametrize(
    "begin, window, at, keep, n, steps, kept",
    [
        # 0.25 x 20 = 5, 0.5 x 20 = 10: steps 2 + 5 and 2 + 10; 4 -> floor(4 x 0.5) = 2 -> 1
        (2, 20, [0.25, 0.5], 0.5, 4, (7, 12), (2, 1)),
        # 0.25 x 23 = 5.75 -> 6, 0.5 x 23 = 11.5 -> 12 (halves round up): the quickstart's layer4 [23, 46)
        (23, 23, [0.25, 0.5], 0.5, 4, (29, 35), (2, 1)),
        # 0.25 x 10 = 2.5 -> 3 (half up, not to even: 2)
        (0, 10, [0.25], 0.5, 2, (3,), (1,)),
        # 0.29 x 100 is 29 as written (the float product is 28.999999999999996); 100 x 0.29 = 29 kept
        (0, 100, [0.29], 0.29, 100, (29,), (29,)),
        # 3 alternatives, keep 0.5: floor(1.5) = 1 (successive halving's floor, not 2)
        (5, 8, [0.5], 0.5, 3, (9,), (1,)),
        # 10 alternatives, keep 0.7: floor(7.0) = 7, then floor(7 x 0.7 = 4.9) = 4, then floor(2.8) = 2
        (0, 40, [0.1, 0.2, 0.3], 0.7, 10, (4, 8, 12), (7, 4, 2)),
        # keep 0.1 of 4: floor(0.4) = 0 -> at least 1 goes on
        (0, 4, [0.5], 0.1, 4, (2,), (1,)),
    ],
)
def test_rung_steps_and_survivors(
    begin: int, window: int, at: list[float], keep: float, n: int, steps: tuple[int, ...], kept: tuple[int, ...]
) -> None:
    assert prune_plan("p", phase(window, at, keep), begin, begin + window, n) == Prune(at=steps, keep=kept)


def test_no_prune_no_rungs() -> None:
    plain = Phase.model_validate({"train": ["head"], "steps": 4, "lr": 0.1, "trials": {"lr.head": [0.1, 0.2]}})
    assert prune_plan("p", plain, 0, 4, 2) is None


def test_stretches_and_cost() -> None:
    prune = Prune(at=(7, 12), keep=(2, 1))
    # [2, 7): 4 x 5, [7, 12): 2 x 5, [12, 22): 1 x 10 = 20 + 10 + 10 = 40 steps (80 without prune)
    assert prune.stretches(4, 2, 22) == ((2, 7, 4), (7, 12, 2), (12, 22, 1))
    assert prune.steps(4, 2, 22) == 40
    trials = TrialsPlan(select="val_top1", mode="grid", keep="winner", alternatives=(), prune=None)
    assert trials.steps(2, 22) == 0  # no alternatives: nothing runs


@pytest.mark.parametrize(
    "window, at, keep, n, index, says, hint",
    [
        # 0.04 x 10 = 0.4 rounds to step 0: nothing has run
        (10, [0.04], 0.5, 2, 0, "0.04 x 10 steps = 0.4, step 0 of the window): no step has run there", "between 0.1"),
        # 0.96 x 10 = 9.6 rounds to 10: the window's end
        (10, [0.96], 0.5, 2, 0, "step 10 of the window): the window's end", "and 0.9 for this 10-step window"),
        # 0.25 x 10 = 2.5 -> 3 and 0.3 x 10 = 3: the same step
        (10, [0.25, 0.3], 0.5, 4, 1, "rung points 0.25 and 0.3 land on the same step 3", "at least 0.1 apart"),
        # 2 alternatives, keep 0.5: 1 goes on after the first rung; a second rung prunes nothing
        (10, [0.25, 0.5], 0.5, 2, 1, "one alternative is left after the rung at step 3", "remove this rung point"),
    ],
)
def test_rungs_that_cannot_be(
    window: int, at: list[float], keep: float, n: int, index: int, says: str, hint: str
) -> None:
    with pytest.raises(RecipeError) as err:
        prune_plan("p", phase(window, at, keep), 0, window, n)
    assert err.value.key == f"phases.p.trials.prune.at[{index}]"
    assert says in err.value.message and hint in (err.value.suggestion or "")


# ---------------------------------------------------------------- recipe errors: exit 2, key, line, hint


@pytest.mark.parametrize(
    "prune, key, says, hint",
    [
        ("prune = { at = [0.5, 0.25], keep = 0.5 }", "prune.at", "at[1] = 0.25 is not after at[0] = 0.5", "increasing"),
        ("prune = { at = [0.25, 0.25], keep = 0.5 }", "prune.at", "rung points must increase", "once each"),
        ("prune = { at = [0.5, 1.0], keep = 0.5 }", "prune.at[1]", "between 0 and 1, exclusive (got 1.0)", "e.g. at"),
        ("prune = { at = [0.0], keep = 0.5 }", "prune.at[0]", "fraction of the phase's window", "a quarter"),
        ("prune = { at = [0.5], keep = 1.0 }", "prune.keep", "share of the alternatives", "the best half"),
        ("prune = { at = [0.5], keep = 0 }", "prune.keep", "between 0 and 1 (got 0", "keep = 0.5"),
        ("prune = { at = [], keep = 0.5 }", "prune.at", "at least 1 item", "at least 1"),
        ("prune = { at = 0.5, keep = 0.5 }", "prune.at", "list", "write a list"),
        ("prune = { at = [0.5] }", "prune.keep", "missing required key", "add keep"),
        ("prune = { at = [0.5], keep = 0.5, every = 2 }", "prune.every", "unknown key", "valid keys: at, keep"),
        ("prune = { at = [0.5], kep = 0.5 }", "prune.kep", "unknown key", "did you mean 'keep'"),
        ("prune = 0.5", "prune", "", "write a table"),
        # 0.01 x 20 = 0.2 rounds to 0
        ("prune = { at = [0.01], keep = 0.5 }", "prune.at[0]", "does not land inside", "between 0.05 and 0.95"),
    ],
)
def test_bad_prune_exits_2_with_key_line_and_hint(
    tiny: str, write: Writer, capsys: pytest.CaptureFixture[str], prune: str, key: str, says: str, hint: str
) -> None:
    text = recipe(tiny, prune)
    path = write(text)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error") <= 1, err
    assert f"phases.full.trials.{key}:" in err and says in err and hint in err, err
    line = int(err.split(f"{path}:")[1].split(":")[0])
    assert text.splitlines()[line - 1].startswith("prune"), (line, err)


@pytest.mark.parametrize(
    "field, says",
    [
        ('stop_early = { metric = "val_loss", patience = 1 }', "prune and stop_early do not go together"),
        ("restore_best = true", "prune and restore_best do not go together"),
    ],
)
def test_prune_refuses_a_phase_that_ends_or_rewinds_by_its_own_evaluations(
    tiny: str, write: Writer, field: str, says: str
) -> None:
    text = recipe(tiny).replace("steps = 20\n", f"steps = 20\n{field}\n")
    with pytest.raises(RecipeError) as err:
        compile_recipe(write(text))
    assert err.value.key == "phases.full.trials.prune" and says in err.value.message
    assert err.value.suggestion.startswith(f"remove {field.split(' ')[0]} from phases.full")


def test_keep_best_sees_the_rung_evaluations(tiny: str, write: Writer) -> None:
    """[run] keep_best goes with prune: the rung evaluations are evaluations like any other."""
    plan = compile_recipe(write(recipe(tiny, extra='\n[run]\nkeep_best = "val_top1"\n')))
    assert plan.run.keep_best == "val_top1" and plan.phases[1].trials.prune is not None


def test_a_single_value_is_no_trial_even_with_prune(tiny: str, write: Writer) -> None:
    """At least 2 alternatives: the trial keys already ask for 2 values each."""
    text = recipe(tiny).replace('["head / 3", "head / 10", "head / 30", "head / 100"]', '["head / 3"]')
    with pytest.raises(RecipeError) as err:
        compile_recipe(write(text))
    assert "at least 2 values" in err.value.message


# ---------------------------------------------------------------- the plan


def test_rung_evaluations_in_each_alternatives_changes(tiny: str, write: Writer) -> None:
    pruned = compile_recipe(write(recipe(tiny)))
    plain = compile_recipe(write(recipe(tiny, prune=""), "plain.toml"))
    t = pruned.phases[1].trials
    # full is [2, 22): 0.25 x 20 = 5 -> step 7, 0.5 x 20 = 10 -> step 12; 4 -> 2 -> 1 go on
    assert t.prune == Prune(at=(7, 12), keep=(2, 1))
    assert plain.phases[1].trials.prune is None
    for alt, same in zip(t.alternatives, plain.phases[1].trials.alternatives, strict=True):
        evals = [c.step for c in alt.changes if c.op == Op.EVALUATE]
        assert evals == [7, 12, 22]  # the tiny recipe evaluates at each phase end; the rungs are added
        assert [c.step for c in same.changes if c.op == Op.EVALUATE] == [22]
        # Nothing else differs: the rung evaluations are the only new changes.
        assert [c for c in alt.changes if not (c.op == Op.EVALUATE and c.step in (7, 12))] == list(same.changes)
    # The main change list is the same (one `trial` change), and so is every alternative's LR.
    assert pruned.changes == plain.changes
    assert [a.lr for a in t.alternatives] == [a.lr for a in plain.phases[1].trials.alternatives]
    assert pruned.steps_with_trials == 2 + 40 and plain.steps_with_trials == 2 + 80


def test_a_rung_on_the_cadence_is_one_evaluation(tiny: str, write: Writer) -> None:
    """eval_every 5 steps: the rungs at 7 and 12 are already evaluations; none is doubled."""
    plan = compile_recipe(write(recipe(tiny, extra='\n[run]\neval_every = "5 steps"\n')))
    for alt in plan.phases[1].trials.alternatives:
        assert [c.step for c in alt.changes if c.op == Op.EVALUATE] == [7, 12, 17, 22]
    assert plan.evaluations("full") == 4


def test_trace_is_unchanged_by_prune_but_for_its_order(tiny: str, write: Writer, tmp_path: Path) -> None:
    """Pruning never compresses an alternative's LR window: each alternative's rows of `plan
    --trace` are those of the recipe without prune. They come rung by rung, as a run takes
    the steps, so the run's lr.csv is the trace less the stretches an alternative did not run."""
    cosine = 'lr = { head = 0.01, body = "head / 10" }\nscheduler = { type = "CosineAnnealingLR" }'
    pruned = recipe(tiny).replace('lr = { head = 0.01, body = "head / 10" }', cosine)
    plain = recipe(tiny, prune="").replace('lr = { head = 0.01, body = "head / 10" }', cosine)
    assert main(["plan", str(write(pruned)), "--trace", str(tmp_path / "pruned.csv")]) == 0
    assert main(["plan", str(write(plain, "plain.toml")), "--trace", str(tmp_path / "plain.csv")]) == 0
    ours = (tmp_path / "pruned.csv").read_text().splitlines()
    theirs = (tmp_path / "plain.csv").read_text().splitlines()
    assert ours[0] == theirs[0] and sorted(ours) == sorted(theirs)
    for k in ("", "0", "1", "2", "3"):
        assert [r for r in ours if r.split(",")[2] == k] == [r for r in theirs if r.split(",")[2] == k]
    rows = [r.split(",") for r in ours[1:]]
    # warmup [0, 2), then full [2, 22) in stretches [2, 7), [7, 12), [12, 22), each k = 0..3
    order = [("", s) for s in (0, 1)] + [
        (str(k), s) for a, b in ((2, 7), (7, 12), (12, 22)) for k in range(4) for s in range(a, b)
    ]
    assert [(r[2], int(r[0])) for r in rows] == order
    assert [r.split(",")[2] for r in theirs[1:]] == [""] * 2 + [str(k) for k in range(4) for _ in range(20)]
    plan = compile_recipe(write(pruned))
    lrs = [r[2] for r in lr_trace(plan) if r[3] == 0]
    assert len({round(x[plan.param_group_names.index("body")], 12) for x in lrs}) > 2  # the cosine moves


def test_the_plan_carries_prune_and_round_trips(tiny: str, write: Writer) -> None:
    plan = compile_recipe(write(recipe(tiny)))
    data = json.loads(plan.to_json())
    assert data["phases"][1]["trials"]["prune"] == {"at": [7, 12], "keep": [2, 1]}
    again = Plan.from_dict(data)
    assert again == plan and again.phases[1].trials.prune == Prune(at=(7, 12), keep=(2, 1))
    plain = compile_recipe(write(recipe(tiny, prune=""), "plain.toml"))
    assert "prune" not in json.loads(plain.to_json())["phases"][1]["trials"]  # older plans keep their hash
    other = compile_recipe(write(recipe(tiny, "prune = { at = [0.25, 0.5], keep = 0.6 }"), "other.toml"))
    assert other.phases[1].trials.prune == Prune(at=(7, 12), keep=(2, 1))  # floor(2.4) = 2, floor(1.2) = 1
    assert plan.hash not in (plain.hash,)
    later = compile_recipe(write(recipe(tiny, "prune = { at = [0.3, 0.5], keep = 0.5 }"), "later.toml"))
    assert later.phases[1].trials.prune.at == (8, 12) and later.hash != plan.hash  # 0.3 x 20 = 6


def test_plan_shows_the_rungs_and_their_cost(tiny: str, write: Writer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(write(recipe(tiny)))]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # the trials line wraps at 100 columns
    assert "each runs [2, 22) from the phase-start state, or to the rung where it is pruned" in flat
    assert "  prune (successive halving on val_top1, non-finite last, ties keep the earlier):" in out
    # [2, 7): 4 x 5 = 20, [7, 12): 2 x 5 = 10, [12, 22): 1 x 10 = 10: 40 of 4 x 20 = 80
    assert "    rung 1 at step 7:       4 alternatives x 5 steps [2, 7); evaluated, the best 2 go on" in out
    assert "    rung 2 at step 12:      2 alternatives x 5 steps [7, 12); evaluated, the best 1 goes on" in out
    assert "    to the end at step 22:  1 alternative x 10 steps [12, 22)" in out
    assert "    cost: 40 steps against 80 without prune (4 x 20), 0.50x; in the best and the worst case alike" in out
    assert "cost: 42 optimizer steps (22 without trials, 82 without prune)" in out
    assert main(["plan", str(write(recipe(tiny, prune=""), "plain.toml"))]) == 0
    plain = capsys.readouterr().out
    assert "prune" not in plain and "cost: 82 optimizer steps (22 without trials)" in plain


def test_estimate_counts_the_pruned_steps(tiny: str, write: Writer) -> None:
    """Alternatives over depth cost differently per step; the estimate lets the costliest go on."""
    depth = '\n[phases.full.trials]\ntrain = [["body", "head"], ["head"]]\n{prune}\n'
    text = recipe(tiny, "prune = { at = [0.5], keep = 0.5 }", full=8, trials=depth)
    plan = compile_recipe(write(text))
    t = plan.phases[1].trials
    # full is [2, 10): 0.5 x 8 = 4 -> step 6; 2 alternatives -> floor(1) = 1 goes on
    assert t.prune == Prune(at=(6,), keep=(1,))
    est = estimate.estimate(plan)
    full = [p for p in est.phases if p.phase == "full"]
    assert [p.trial for p in full] == [0, 1]
    # body+head's steps cost more than head's: it is counted to the end, head to the rung
    assert full[0].fwd_flops + full[0].bwd_flops > full[1].fwd_flops + full[1].bwd_flops
    assert [p.steps for p in full] == [8, 4] and sum(p.steps for p in full) == t.steps(2, 10) == 12
    assert [p.evaluations for p in full] == [2, 1]  # the rung at 6 and the end at 10; the pruned one: the rung
    assert any("trials.prune (full)" in note for note in est.notes)
    assert est.flops == sum(p.flops for p in est.phases)
