"""Training knobs at run time: what each one does to the numbers, not just that it runs.

Tiny models on digits, a few steps each: gradient accumulation gives the one-batch
parameters, clipping bounds the update and logs the pre-clip norm, the EMA equals the
average written out here and resumes bitwise, MixUp/CutMix give soft targets drawn per
step, per-phase data changes the batch and resumes bitwise inside such a phase.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from ftcompile.runtime import loop
from ftcompile.runtime.data import build_transforms
from ftcompile.runtime.loop import Hooks, Session, StepInfo
from ftcompile.runtime.mix import BatchMix, micro_batches
from ftcompile.runtime.model import build

from ftcompile.compiler import compile_recipe
from ftcompile.plan import MixSpec, Plan

RECIPE = """
name = "{name}"
seed = 0
[model]
arch = "{arch}"
weights = "{weights}"
{model}
[data]
builtin = "digits"
classes = ["0", "1", "2"]
image_size = {size}
batch_size = 16
workers = 0
{data}
[optimizer]
type = "SGD"
{optimizer}
[groups]
body = ["backbone"]
head = ["head"]
[phases.head]
train = ["head"]
steps = 3
lr = 0.05
bn = "frozen"
cache_features = false
{head}
[phases.all]
after = ["head"]
train = ["body", "head"]
steps = 3
lr = 0.02
{all}
[run]
device = "cpu"
eval_every = "100 steps"
checkpoint_every = "100 steps"
{run}
"""


def make_plan(
    tmp_path: Path, name: str = "k", arch: str = "resnet18", size: int = 16, weights: str = "none", **parts: str
) -> Plan:
    fields = {k: parts.get(k, "") for k in ("model", "data", "optimizer", "head", "all", "run")}
    path = tmp_path / f"{name}.toml"
    path.write_text(RECIPE.format(name=name, arch=arch, size=size, weights=weights, **fields))
    return compile_recipe(path)


def params(session: Session) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in session.model.state_dict().items()}


# ---------------------------------------------------------------- accumulation


def test_accumulate_equals_one_big_batch(tmp_path: Path) -> None:
    """squeezenet has no BatchNorm and (with our head) no dropout: the micro-batch gradients
    must sum to the one-batch gradient, so the parameters agree after 6 SGD steps."""
    results = []
    for n in (1, 4):
        plan = make_plan(
            tmp_path, f"acc{n}", arch="squeezenet1_1", size=32, optimizer="momentum = 0.9", run=f"accumulate = {n}"
        )
        session = Session(plan, tmp_path)
        session.run(0, plan.total_steps)
        results.append(params(session))
    one, four = results
    moved = 0
    for key in one:
        torch.testing.assert_close(four[key], one[key], atol=1e-5, rtol=0)
    start = Session(
        make_plan(tmp_path, "acc1", arch="squeezenet1_1", size=32, optimizer="momentum = 0.9", run="accumulate = 1"),
        tmp_path,
    )
    moved = sum(not torch.equal(start.model.state_dict()[k], one[k]) for k in one)
    assert moved > 10  # the comparison is about trained weights, not untouched ones


def test_micro_batch_shares_rebuild_the_weighted_mean() -> None:
    """balance = "loss": CrossEntropyLoss divides by the targets' weight sum; the shares
    make the sum of micro-batch losses that same number."""
    torch.manual_seed(0)
    logits, y = torch.randn(12, 3), torch.tensor([0, 1, 2, 2, 2, 1, 0, 0, 1, 2, 2, 2])
    weight = torch.tensor([1.0, 2.0, 0.5])
    loss = torch.nn.CrossEntropyLoss(weight=weight)
    parts = list(micro_batches(logits, y, 4, weight))
    assert sum(share * loss(x, t) for x, t, share in parts).item() == pytest.approx(loss(logits, y).item(), rel=1e-6)
    assert [len(t) for _, t, _ in parts] == [3, 3, 3, 3]


# ---------------------------------------------------------------- clipping


def test_clip_grad_norm_bounds_the_step_and_logs_the_norm(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, optimizer="clip_grad_norm = 0.001")
    before: list[dict[str, torch.Tensor]] = []

    class Watch(Hooks):
        def on_start(self, session: Session) -> None:
            before.append(params(session))

        def on_step(self, session: Session, info: StepInfo) -> None:
            before.append(params(session))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    session = Session(plan, tmp_path, run_dir=run_dir, hooks=[Watch()])
    session.run(0, plan.total_steps)
    session.close()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in steps if r["type"] == "step"]
    assert len(norms) == plan.total_steps and min(norms) > 0.001  # logged before clipping
    trainable = {n for n, p in session.model.named_parameters()}
    for step in range(3):  # head phase: plain SGD, lr 0.05 -> |update| = 0.05 * |clipped grad| <= 5e-5
        delta = [before[step + 1][k] - before[step][k] for k in trainable]
        assert torch.linalg.vector_norm(torch.cat([d.flatten() for d in delta])) <= 0.05 * 0.001 * (1 + 1e-4)


# ---------------------------------------------------------------- EMA


def test_ema_is_the_average_and_resumes_bitwise(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, run="ema = { decay = 0.9, every = 1 }")
    history: list[dict[str, torch.Tensor]] = []

    class Watch(Hooks):
        def on_start(self, session: Session) -> None:
            history.append(params(session))

        def on_step(self, session: Session, info: StepInfo) -> None:
            history.append(params(session))

    session = Session(plan, tmp_path, hooks=[Watch()])
    session.run(0, plan.total_steps)
    ema = session.ema.module.state_dict()
    # e_0 = theta_0, e_t = e_{t-1} + (1 - 0.9) (theta_t - e_{t-1})
    for key, first in history[0].items():
        if not first.is_floating_point():
            continue
        expected = first.clone()
        for state in history[1:]:
            expected = expected + 0.1 * (state[key] - expected)
        torch.testing.assert_close(ema[key], expected, atol=1e-6, rtol=1e-5)
    # resume from inside the second phase: the EMA is in the state, bitwise
    first = Session(plan, tmp_path)
    first.run(0, 4)
    state = first.state()
    second = Session(plan, tmp_path)
    second.load_state(state)
    second.run(4, plan.total_steps)
    for key, value in second.ema.state_dict().items():
        assert torch.equal(value, session.ema.state_dict()[key]), key


def test_ema_every_3_steps_is_the_average_of_every_third_step(tmp_path: Path) -> None:
    """every = "3 steps": the EMA takes in the model after optimizer steps 3 and 6 only (the
    plan's 6 steps), not one step before or after."""
    plan = make_plan(tmp_path, run='ema = { decay = 0.5, every = "3 steps" }')
    assert plan.total_steps == 6
    history: list[dict[str, torch.Tensor]] = []  # history[t]: the model after t optimizer steps

    class Watch(Hooks):
        def on_start(self, session: Session) -> None:
            history.append(params(session))

        def on_step(self, session: Session, info: StepInfo) -> None:
            history.append(params(session))

    session = Session(plan, tmp_path, hooks=[Watch()])
    session.run(0, plan.total_steps)
    ema = session.ema.module.state_dict()
    # e_0 = theta_0; e = e + (1 - 0.5) (theta_t - e) at t = 3 and t = 6:
    # e = 0.25 theta_0 + 0.25 theta_3 + 0.5 theta_6
    checked = 0
    for key, first in history[0].items():
        if not first.is_floating_point():
            continue
        expected = 0.25 * first + 0.25 * history[3][key] + 0.5 * history[6][key]
        torch.testing.assert_close(ema[key], expected, atol=1e-6, rtol=1e-5)
        checked += not torch.equal(history[3][key], history[6][key])
    assert checked > 0  # weights that moved between the two updates


def test_ema_of_a_frozen_parameter_stays_equal_and_is_evaluated(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, run='ema = { decay = 0.5, every = "2 steps", warmup = true }')
    evals: list[dict[str, Any]] = []

    class Watch(Hooks):
        def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
            evals.append(record)

    session = Session(plan, tmp_path, hooks=[Watch()])
    session.run(0, 3)  # the head phase: the body is frozen
    model, ema = session.model.state_dict(), session.ema.module.state_dict()
    assert torch.equal(ema["conv1.weight"], model["conv1.weight"])
    assert not torch.equal(ema["fc.weight"], model["fc.weight"])
    assert {"val_loss_ema", "top1_ema"} <= set(evals[0])


def test_model_ema_pt_is_saved(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, run="ema = { decay = 0.9 }")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    loop.train(plan, run_dir, tmp_path)
    saved = torch.load(run_dir / "model_ema.pt", weights_only=True)
    assert "fc.weight" in saved and not torch.equal(saved["fc.weight"], torch.load(run_dir / "model.pt")["fc.weight"])


@pytest.mark.slow
def test_eval_reads_the_ema_weights_the_run_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ftcompile eval --weights ema` evaluates the model_ema.pt that `run` writes."""
    from runtime_helpers import cli, recipe_text, write_recipe

    phases = '[phases.only]\ntrain = ["head"]\nsteps = 3\nlr = { head = 0.05 }\nbn = "frozen"\n'
    recipe = write_recipe(
        tmp_path, recipe_text("emaeval", phases, run='ema = { decay = 0.5 }\neval_every = "100 steps"')
    )
    assert cli(capsys, "run", recipe, "--out", tmp_path / "run").rc == 0
    final = cli(capsys, "eval", tmp_path / "run", "--json")
    ema = cli(capsys, "eval", tmp_path / "run", "--weights", "ema", "--json")
    assert final.rc == 0 and ema.rc == 0, ema.err
    assert json.loads(final.out)["loss"] != json.loads(ema.out)["loss"]  # other weights, evaluated


# ---------------------------------------------------------------- MixUp / CutMix


def test_batch_mix_gives_soft_targets_drawn_per_step() -> None:
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mix = BatchMix(MixSpec(mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5), 3, seed=0)
    xm, ym = mix(x, y, step=5)
    assert ym.shape == (8, 3) and torch.allclose(ym.sum(1), torch.ones(8))
    lam = ym[0, 0].item()  # sample 0 (class 0) mixed with the rolled sample 7 (class 1)
    torch.testing.assert_close(xm[0], lam * x[0] + (1 - lam) * x[7])
    xs, ys = mix(x, y, step=5)
    assert torch.equal(xs, xm) and torch.equal(ys, ym)  # a pure function of the step
    assert not torch.equal(mix(x, y, step=6)[1], ym)
    off = BatchMix(MixSpec(mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.0, switch_prob=0.5), 3, seed=0)
    xo, yo = off(x, y, step=5)
    assert torch.equal(xo, x) and torch.equal(yo, torch.nn.functional.one_hot(y, 3).float())


def test_mix_trains_and_a_phase_can_turn_it_off(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        data="mix = { mixup_alpha = 0.2, cutmix_alpha = 1.0 }\nlabel_smoothing = 0.1",
        all="data = { mix = false }",
    )
    session = Session(plan, tmp_path)
    assert session._position(0)[3] is not None and session._position(3)[3] is None
    session.run(0, 3)
    plain = Session(make_plan(tmp_path, "plain", data="label_smoothing = 0.1"), tmp_path)
    plain.run(0, 3)
    assert not torch.equal(session.model.fc.weight, plain.model.fc.weight)  # the head saw mixed batches
    assert torch.equal(session.model.conv1.weight, plain.model.conv1.weight)  # frozen either way


# ---------------------------------------------------------------- per-phase data


def test_per_phase_batch_and_size_resume_bitwise(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, head="data = { image_size = 24, batch_size = 32 }", all="data = { batch_size = 8 }")
    seen: list[tuple[int, int]] = []

    class Watch(Hooks):
        def on_step(self, session: Session, info: StepInfo) -> None:
            seen.append((info.step, info.images))

    whole = Session(plan, tmp_path, hooks=[Watch()])
    whole.run(0, plan.total_steps)
    assert seen == [(0, 32), (1, 32), (2, 32), (3, 8), (4, 8), (5, 8)]
    first = Session(plan, tmp_path)
    first.run(0, 5)  # stop inside the batch-8 phase
    second = Session(plan, tmp_path)
    second.load_state(first.state())
    second.run(5, plan.total_steps)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


def test_per_phase_image_size_reaches_the_model(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, head="data = { image_size = 24 }")
    shapes: list[tuple[int, ...]] = []
    session = Session(plan, tmp_path)
    handle = session.model.conv1.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape[-2:])))
    session.run(0, plan.total_steps)
    handle.remove()
    assert shapes[0] == (24, 24) and shapes[-1] == (16, 16)


# ---------------------------------------------------------------- val transforms, builder args, head weights


def test_val_resize_and_crop(tmp_path: Path) -> None:
    from dataclasses import replace

    plan = make_plan(tmp_path, data="val_resize = 20\nval_crop = 12")
    tf = build_transforms(plan.data, plan.data.mean, plan.data.std, train=False)
    out = tf(torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert out.shape == (3, 12, 12)
    resize = [t for t in tf.transforms if type(t).__name__ == "Resize"][0]
    assert resize.size == [20]
    default = build_transforms(
        replace(plan.data, val_resize=None, val_crop=None), plan.data.mean, plan.data.std, train=False
    )
    assert default(torch.zeros(3, 8, 8, dtype=torch.uint8)).shape == (3, 16, 16)


def test_builder_args_reach_the_model(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, model="builder_args = { zero_init_residual = true }")
    model = build(plan.model, tmp_path)
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0  # what zero_init_residual does


def test_head_weights_load_takes_the_head_too(tmp_path: Path) -> None:
    from ftcompile.arch import build_model

    torch.manual_seed(1)
    source = build_model("resnet18", 3, None, device="cpu")
    torch.save(source.state_dict(), tmp_path / "three.pt")
    for mode, same in (("load", True), ("new", False)):
        plan = make_plan(tmp_path, f"h{mode}", weights="three.pt", model=f'head_weights = "{mode}"')
        model = build(plan.model, tmp_path)
        assert torch.equal(model.fc.weight, source.fc.weight) is same
        assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_sync_bn_is_a_no_op_with_one_process(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, run="sync_bn = true")
    session = Session(plan, tmp_path)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in session.model.modules())


def test_sync_bn_converts_for_several_gpu_processes_and_refuses_cpu() -> None:
    from ftcompile.runtime.distributed import Dist, sync_batchnorm

    from ftcompile.arch import build_model
    from ftcompile.errors import RecipeError

    model = build_model("resnet18", 3, None, device="cpu")
    weight = model.bn1.weight
    converted = sync_batchnorm(model, Dist(rank=0, world=2), torch.device("cuda", 0))  # conversion needs no GPU
    assert isinstance(converted.bn1, torch.nn.SyncBatchNorm) and converted.bn1.weight is weight
    assert sync_batchnorm(model, Dist(), torch.device("cpu")) is model
    with pytest.raises(RecipeError) as info:
        sync_batchnorm(build_model("resnet18", 3, None, device="cpu"), Dist(rank=0, world=2), torch.device("cpu"))
    assert info.value.key == "run.sync_bn"
