"""The training loop keeps the runtime contract: the plan's LRs exactly, one optimizer,
frozen means bitwise unchanged, BatchNorm follows `bn`, no-decay groups never decay, and
metrics.jsonl holds one record per step and per evaluation.

Two tiny recipes (conftest.py) cover every scheduler the shipped recipes use: A (SGD with
momentum) OneCycleLR, CyclicLR, no scheduler, StepLR; B (AdamW) LinearLR,
CosineAnnealingWarmRestarts, CosineAnnealingLR. Each is run once per session, instrumented.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from runtime_helpers import Recorded, cli, metrics

from ftcompile.apply import Executor
from ftcompile.plan import OPTIMIZER_OPS, Change, Op, Plan, SchedulerStart
from ftcompile.torch_args import dummy_optimizer

RUNS = ["run_a", "run_b"]


@pytest.fixture(params=RUNS)
def run(request: pytest.FixtureRequest) -> Recorded:
    return request.getfixturevalue(request.param)


def params_of(plan: Plan, group: str) -> list[str]:
    return [p for pg in plan.param_groups if pg.group == group for p in pg.params]


def bn_buffers(plan: Plan, group: str) -> list[str]:
    mods = [m for m, g in plan.run.bn_modules.items() if g == group]
    return [f"{m}.{b}" for m in mods for b in ("running_mean", "running_var", "num_batches_tracked")]


def planned(plan: Plan, field: str) -> list[list[float]]:
    """`field` of every param group before every step, replaying the plan on a dummy optimizer
    (the way `ftcompile plan --trace` computes the LR)."""
    opt = dummy_optimizer(plan.optimizer.type, plan.optimizer.kwargs, len(plan.param_groups))
    ex = Executor(opt, plan.param_group_names)
    changes = [c for c in plan.changes if c.op in OPTIMIZER_OPS]
    rows, i = [], 0
    for step in range(plan.total_steps):
        while i < len(changes) and changes[i].step == step:
            ex.apply(changes[i])
            i += 1
        rows.append([float(g[field]) if field in g else float(g["betas"][0]) for g in opt.param_groups])
        ex.after_step(step + 1)
    return rows


# ---------------------------------------------------------------- the LR trace


def test_recipes_cover_every_shipped_scheduler(run_a: Recorded, run_b: Recorded) -> None:
    """The two recipes exercise what the lr tests below claim to cover."""
    phases = [*run_a.plan.phases, *run_b.plan.phases]
    used = {ph.scheduler.type for ph in phases if ph.scheduler}
    shipped = set()
    for recipe in sorted(Path(__file__).resolve().parents[2].glob("recipes/*.toml")):
        shipped |= {
            line.split('type = "')[1].split('"')[0]
            for line in recipe.read_text().splitlines()
            if line.startswith("scheduler = {")
        }
    assert (
        used
        == shipped
        == {"OneCycleLR", "CyclicLR", "CosineAnnealingWarmRestarts", "CosineAnnealingLR", "LinearLR", "StepLR"}
    )
    assert any(ph.scheduler is None for ph in phases)
    assert any(ph.optimizer_state == "reset" for ph in phases)


SCHEDULERS = [
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 8, "pct_start": 0.3}),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}),
    ("CosineAnnealingWarmRestarts", {"T_0": 3, "eta_min": 1e-4}),
    ("CosineAnnealingLR", {"T_max": 8, "eta_min": 1e-4}),
    ("LinearLR", {"start_factor": 0.1, "total_iters": 8}),
    ("StepLR", {"step_size": 2, "gamma": 0.5}),
]


@pytest.mark.parametrize("name, args", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_a_later_phase_scheduler_runs_as_on_a_fresh_optimizer(name: str, args: dict) -> None:
    """A scheduler started by the plan after another one (which left initial_lr, max_lr,
    momentum, ... in the groups) gives the LR and momentum a hand-written loop gets from the
    same torch class on a fresh optimizer."""
    fresh = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    hand = getattr(torch.optim.lr_scheduler, name)(fresh, **args)
    expected = []
    for _ in range(8):
        expected.append((fresh.param_groups[0]["lr"], fresh.param_groups[0]["momentum"]))
        fresh.step()
        hand.step()

    opt = dummy_optimizer("SGD", {"momentum": 0.9}, 2)
    ex = Executor(opt, ["a", "b"])
    ex.start_scheduler(SchedulerStart("OneCycleLR", ("a", "b"), {"max_lr": 0.5, "total_steps": 4}, end=4))
    for step in range(4):
        ex.after_step(step + 1)
    for field, value in (("lr", 0.1), ("momentum", 0.9)):  # what the plan sets at a phase start
        ex.apply(Change(4, Op.SET, "a", field, value))
    ex.start_scheduler(SchedulerStart(name, ("a",), args, end=12))
    got = []
    for step in range(4, 12):
        got.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        ex.after_step(step + 1)
    assert got == expected


def test_lr_csv_equals_plan_trace_byte_for_byte(run: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    trace = run.run_dir.parent / "trace.csv"
    assert cli(capsys, "plan", run.run_dir / "recipe.toml", "--trace", trace).rc == 0
    assert (run.run_dir / "lr.csv").read_bytes() == trace.read_bytes()
    assert len(trace.read_text().splitlines()) == run.plan.total_steps + 1  # header + one row per step


def test_optimizer_used_the_logged_lr(run: Recorded) -> None:
    """lr.csv is what the optimizer held at each optimizer.step(), not a copy of the plan."""
    rows = [line.split(",") for line in (run.run_dir / "lr.csv").read_text().splitlines()[1:]]
    assert [[float(x) for x in row[3:]] for row in rows] == [s["lr"] for s in run.per_step]  # after step, phase, trial
    steps = [r for r in metrics(run.run_dir) if r["type"] == "step"]
    assert [list(r["lr"].values()) for r in steps] == [s["lr"] for s in run.per_step]


def test_momentum_follows_the_plan(run: Recorded) -> None:
    """OneCycleLR and CyclicLR cycle SGD momentum (AdamW: betas[0]); the run matches the replay."""
    assert [s["momentum"] for s in run.per_step] == planned(run.plan, "momentum")


def test_cyclic_lr_really_cycles_lr_and_momentum(run_a: Recorded) -> None:
    ph = next(p for p in run_a.plan.phases if p.name == "cyclic")
    head = run_a.plan.param_group_names.index("head")
    window = run_a.per_step[ph.begin : ph.end]
    lrs = [s["lr"][head] for s in window]
    moms = [s["momentum"][head] for s in window]
    # base_lr = 0.002, max_lr = 0.02, step_size_up = 2: 0.002, 0.011, 0.02, 0.011, 0.002, 0.011
    assert lrs == pytest.approx([0.002, 0.011, 0.02, 0.011, 0.002, 0.011])
    # momentum runs opposite: max_momentum 0.9 at base_lr, base_momentum 0.8 at max_lr
    assert moms == pytest.approx([0.9, 0.85, 0.8, 0.85, 0.9, 0.85])


def test_frozen_groups_have_lr_zero(run: Recorded) -> None:
    for ph in run.plan.phases:
        for s in run.per_step[ph.begin : ph.end]:
            for pg, lr in zip(run.plan.param_groups, s["lr"], strict=False):
                assert (lr > 0) == (pg.group in ph.train), (ph.name, pg.name)


# ---------------------------------------------------------------- one optimizer


def test_one_optimizer_for_the_whole_run(run: Recorded) -> None:
    plan = run.plan
    assert run.optimizers_built == 1
    assert len(run.per_step) == plan.total_steps
    assert len({s["optimizer"] for s in run.per_step}) == 1
    sizes = [len(pg.params) for pg in plan.param_groups]
    for s in run.per_step:
        assert s["names"] == plan.param_group_names and s["sizes"] == sizes
    for groups in run.optimizer_groups.values():  # the checkpoints: same structure every time
        assert [g["name"] for g in groups] == plan.param_group_names
        assert [len(g["params"]) for g in groups] == sizes


# ---------------------------------------------------------------- freezing


def test_frozen_unchanged_trained_changed_in_every_phase(run: Recorded) -> None:
    plan = run.plan
    for ph in plan.phases:
        before, after = run.states[ph.begin], run.states[ph.end]
        for group in {pg.group for pg in plan.param_groups}:
            for name in params_of(plan, group):
                same = torch.equal(before[name], after[name])
                if group in ph.train:
                    assert not same, f"{ph.name}: trained {name} did not change"
                else:
                    assert same, f"{ph.name}: frozen {name} changed"


def test_bn_frozen_keeps_running_stats_bn_train_moves_them(run_a: Recorded) -> None:
    plan, states = run_a.plan, run_a.states
    bn = {ph.name: ph for ph in plan.phases}
    assert bn["warm"].bn == "train" and bn["cyclic"].bn == "frozen"

    def moved(phase: str, group: str) -> list[bool]:
        ph = bn[phase]
        names = bn_buffers(plan, group)
        assert names
        return [not torch.equal(states[ph.begin][n], states[ph.end][n]) for n in names]

    # bn = "train": BatchNorm of the frozen early/late groups updates its statistics
    assert all(moved("warm", "early")) and all(moved("warm", "late"))
    # bn = "frozen": frozen early keeps them bitwise; late is trained, so its stats move
    assert not any(moved("cyclic", "early"))
    assert all(moved("cyclic", "late"))


# ---------------------------------------------------------------- weight decay


def test_no_decay_groups_have_weight_decay_zero(run: Recorded) -> None:
    """no_decay = "auto": biases and norm weights (the 1-D tensors) form `<group>.no_decay`
    param groups with weight_decay 0 at every checkpoint; the others keep the recipe's decay."""
    plan = run.plan
    shapes = {k: v.dim() for k, v in run.states[0].items()}
    assert any(not pg.decay for pg in plan.param_groups)
    for pg in plan.param_groups:
        assert pg.name == (pg.group if pg.decay else f"{pg.group}.no_decay")
        assert all((shapes[p] > 1) == pg.decay for p in pg.params), pg.name
    base = plan.optimizer.kwargs["weight_decay"]
    for step, groups in run.optimizer_groups.items():
        phase = plan.phase_at(step - 1).name
        for pg, group in zip(plan.param_groups, groups, strict=False):
            # recipe B's phase `cosine` overrides: weight_decay = { early = 0.0 }
            override = phase == "cosine" and pg.group == "early"
            expected = base if pg.decay and not override else 0.0
            assert group["weight_decay"] == expected, (step, pg.name)


def test_adamw_weight_decay_never_touches_a_frozen_group(run_b: Recorded) -> None:
    """late is trained in `linear` (so AdamW holds moments for it), then frozen in `sgdr`."""
    plan = run_b.plan
    ph = next(p for p in plan.phases if p.name == "sgdr")
    assert "late" not in ph.train and plan.optimizer.kwargs["weight_decay"] > 0
    flat = [p for pg in plan.param_groups for p in pg.params]
    late = set(params_of(plan, "late"))
    assert {flat[i] for i in run_b.state_keys[ph.begin]} >= late  # Adam moments exist
    for name in late:
        assert torch.equal(run_b.states[ph.begin][name], run_b.states[ph.end][name]), name


# ---------------------------------------------------------------- metrics.jsonl


def test_metrics_one_record_per_step_and_per_evaluation(run: Recorded) -> None:
    plan = run.plan
    recs = metrics(run.run_dir)
    steps = [r for r in recs if r["type"] == "step"]
    evals = [r for r in recs if r["type"] == "eval"]
    memory = [r for r in recs if r["type"] == "memory"]  # what the run measured (runtime/cost.py)
    assert len(steps) + len(evals) + len(memory) == len(recs)
    assert [r["phase"] for r in memory] == [ph.name for ph in plan.phases]  # one per phase
    assert [r["step"] for r in steps] == list(range(plan.total_steps))
    for r in steps:
        assert set(r) == {"type", "step", "phase", "loss", "lr", "seconds", "images_per_s"}
        assert r["seconds"] > 0 and r["images_per_s"] > 0
        assert r["phase"] == plan.phase_at(r["step"]).name
        assert isinstance(r["loss"], float) and math.isfinite(r["loss"])
        assert list(r["lr"]) == plan.param_group_names
    # eval_every is longer than every phase: one evaluation at the end of each phase
    assert [(r["step"], r["phase"]) for r in evals] == [(ph.end, ph.name) for ph in plan.phases]
    five = plan.model.num_classes > 5  # top-5 of 5 classes is always 100%: not reported
    for r in evals:
        assert set(r) == {"type", "step", "epoch", "phase", "val_loss", "top1", *(["top5"] if five else [])}
        assert r["epoch"] == r["step"] / plan.data.steps_per_epoch
        assert 0.0 <= r["top1"] <= r.get("top5", 1.0) <= 1.0 and r["val_loss"] > 0
    # records are in the order things happened: an evaluation after the last step of its phase
    order = [(r["step"], r["type"] == "step") for r in recs if r["type"] != "memory"]
    assert order == sorted(order, key=lambda t: (t[0], t[1]))
