"""Stage 4, resolve: selectors -> parameters, LR expressions and layer-wise decay -> numbers,
durations -> steps, scheduler and optimizer arguments checked against torch."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from ftcompile import arch
from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.groups import param_infos, resolve_groups
from ftcompile.lr_expr import resolve_lrs
from ftcompile.plan import Plan
from ftcompile.schema import Phase

Writer = Callable[..., Path]

# ---------------------------------------------------------------- digits counted by hand

PER_CLASS = np.bincount(load_digits().target)  # images of each digit, 1797 in all
VAL_SIZE = int(sum(n // 5 for n in PER_CLASS))  # every 5th image of each class is validation
TRAIN_SIZE = int(PER_CLASS.sum()) - VAL_SIZE


def test_digits_counts() -> None:
    assert PER_CLASS.sum() == 1797
    assert (TRAIN_SIZE, VAL_SIZE) == (1442, 355)


# ---------------------------------------------------------------- groups

RESNET18 = arch.build_model("resnet18", 10, None, device="meta")
NAMES = [n for n, _ in RESNET18.named_parameters()]
MODULES = [n for n, _ in RESNET18.named_modules() if n]
ALIASES = arch.aliases("resnet18", RESNET18)


def groups_of(spec: dict[str, list[str]], no_decay: str | list[str] = "auto") -> dict[str, tuple[str, ...]]:
    infos = param_infos(RESNET18, no_decay)
    return {g.name: g.params for g in resolve_groups(spec, infos, ALIASES, MODULES)}


def under(*prefixes: str) -> tuple[str, ...]:
    """Parameters below any of these module prefixes, in model order."""
    return tuple(n for n in NAMES if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("stem", ("conv1.weight", "bn1.weight", "bn1.bias")),
        ("stage1", under("layer1")),
        ("stage4", under("layer4")),
        ("head", ("fc.weight", "fc.bias")),
        ("backbone", tuple(n for n in NAMES if not n.startswith("fc."))),
        ("layer3", under("layer3")),
        ("layer4.1", under("layer4.1")),
        (
            "layer4.0.downsample",
            ("layer4.0.downsample.0.weight", "layer4.0.downsample.1.weight", "layer4.0.downsample.1.bias"),
        ),
        ("layer4.*", under("layer4")),
        # modules named like `layer2.1.bn2` (the stem's `bn1` has no dot before it)
        ("*.bn*", tuple(n for n in NAMES if re.fullmatch(r"layer\d\.\d\.bn\d\.(weight|bias)", n))),
        ("*.bias", tuple(n for n in NAMES if n.endswith(".bias"))),
        ("fc.weight", ("fc.weight",)),
    ],
)
def test_selectors(selector: str, expected: tuple[str, ...]) -> None:
    assert expected  # the expectation itself is not empty
    assert groups_of({"g": [selector]})["g"] == expected


def test_stages_and_stem_and_head_cover_the_model_once() -> None:
    spec = {name: [name] for name in ("stem", "stage1", "stage2", "stage3", "stage4", "head")}
    groups = groups_of(spec)
    assert "rest" not in groups
    assert sorted(p for ps in groups.values() for p in ps) == sorted(NAMES)


def test_unmatched_parameters_form_rest() -> None:
    groups = groups_of({"late": ["layer4"], "head": ["head"]})
    assert list(groups) == ["late", "head", "rest"]
    assert groups["rest"] == tuple(n for n in NAMES if not n.startswith(("layer4.", "fc.")))


def test_several_selectors_in_one_group_keep_model_order() -> None:
    assert groups_of({"g": ["head", "stem"]})["g"] == ("conv1.weight", "bn1.weight", "bn1.bias", "fc.weight", "fc.bias")


def test_parameter_in_two_groups_is_an_error() -> None:
    with pytest.raises(RecipeError) as info:
        groups_of({"late": ["layer4"], "block": ["layer4.1"]})
    err = info.value
    assert "'layer4.1.conv1.weight'" in err.message
    assert "'late'" in err.message and "'block'" in err.message
    assert err.key == "groups.block"
    assert err.suggestion


def test_empty_selector_suggests_nearest_names() -> None:
    with pytest.raises(RecipeError) as info:
        groups_of({"ok": ["head"], "late": ["stem", "layr4"]})
    err = info.value
    assert err.key == "groups.late[1]"
    assert "'layr4'" in err.message and "matches no parameter" in err.message
    assert "'layer4'" in (err.suggestion or "")


def test_empty_selector_without_near_names_lists_aliases_and_modules() -> None:
    with pytest.raises(RecipeError) as info:
        groups_of({"g": ["zzzzzz"]})
    assert "layer4" in (info.value.suggestion or "") and "stage1" in (info.value.suggestion or "")


# ---------------------------------------------------------------- no_decay


def param_groups_of(write: Writer, tiny: str, no_decay: str) -> dict[str, tuple[str, ...]]:
    text = tiny.replace("weight_decay = 1e-4", f"weight_decay = 1e-4\nno_decay = {no_decay}")
    plan = compile_recipe(write(text))
    return {pg.name: pg.params for pg in plan.param_groups}


def test_no_decay_auto_takes_biases_and_every_norm_parameter(write: Writer, tiny: str) -> None:
    pgs = param_groups_of(write, tiny, '"auto"')
    assert list(pgs) == ["body", "body.no_decay", "head", "head.no_decay"]
    # BatchNorm weights and biases (bn*, downsample.1) and the fc bias; convs and fc.weight decay
    is_norm = re.compile(r"(^|\.)(bn\d|downsample\.1)\.(weight|bias)$")
    assert pgs["body.no_decay"] == tuple(n for n in NAMES if is_norm.search(n))
    assert pgs["body"] == tuple(n for n in NAMES if not is_norm.search(n) and not n.startswith("fc."))
    assert all(
        n.endswith("conv1.weight") or n.endswith("conv2.weight") or n.endswith("downsample.0.weight")
        for n in pgs["body"]
    )
    assert (pgs["head"], pgs["head.no_decay"]) == (("fc.weight",), ("fc.bias",))


def test_no_decay_auto_on_layernorm() -> None:
    vit = arch.build_model("vit_b_16", 10, None, device="meta")
    skip = {p.name for p in param_infos(vit, "auto") if p.no_decay}
    assert {
        "encoder.ln.weight",
        "encoder.ln.bias",
        "encoder.layers.encoder_layer_3.ln_2.weight",
        "heads.head.bias",
    } <= skip
    # a bias that is not called `.bias` is still a bias (1-d)
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_bias" in skip
    assert "encoder.layers.encoder_layer_0.mlp.0.weight" not in skip


def test_no_decay_patterns(write: Writer, tiny: str) -> None:
    pgs = param_groups_of(write, tiny, '["*.bias"]')
    assert pgs["body.no_decay"] == tuple(n for n in NAMES if n.endswith(".bias") and not n.startswith("fc."))
    assert "bn1.weight" in pgs["body"]  # only what the patterns say
    assert pgs["head.no_decay"] == ("fc.bias",)


def test_no_decay_none(write: Writer, tiny: str) -> None:
    pgs = param_groups_of(write, tiny, '"none"')
    assert list(pgs) == ["body", "head"]


def test_no_decay_param_groups_get_weight_decay_zero(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    wd = {c.target: c.value for c in plan.changes if c.op == "set" and c.field == "weight_decay"}
    assert wd == {"body": 1e-4, "head": 1e-4}  # no_decay groups start at 0 and are never set


# ---------------------------------------------------------------- learning rates


def lrs(train: list[str], lr: object, lr_decay: float | None = None) -> dict[str, float]:
    phase = Phase.model_validate({"train": train, "steps": 1, "lr": lr, "lr_decay": lr_decay})
    return resolve_lrs("p", phase)


def test_lr_numbers() -> None:
    assert lrs(["a", "b"], {"a": 0.1, "b": 3e-4}) == {"a": 0.1, "b": 3e-4}
    assert lrs(["a", "b"], 0.01) == {"a": 0.01, "b": 0.01}  # one number for every trained group


def test_lr_expressions() -> None:
    assert lrs(["layer4", "head"], {"head": 1e-3, "layer4": "head / 10"}) == {"layer4": 1e-3 / 10, "head": 1e-3}
    assert lrs(["layer3", "layer4"], {"layer4": 0.02, "layer3": "layer4 * 0.1"}) == {
        "layer3": 0.02 * 0.1,
        "layer4": 0.02,
    }
    assert lrs(["a", "b"], {"b": 0.5, "a": "2 ** -3 * b + 0.25 - b / 4"}) == {
        "a": 2**-3 * 0.5 + 0.25 - 0.5 / 4,
        "b": 0.5,
    }


def test_chained_lr_expressions() -> None:
    got = lrs(
        ["layer3", "layer4", "head"],
        {"layer3": "layer4 / 10", "layer4": "head / 10", "head": 1e-3},  # declared before what they use
    )
    assert got == {"layer3": 1e-3 / 10 / 10, "layer4": 1e-3 / 10, "head": 1e-3}


@pytest.mark.parametrize(
    ("lr", "key", "message"),
    [
        ({"head": 0.1, "layer4": "haed / 10"}, "p.lr.layer4", "refers to 'haed', which is not trained"),
        ({"head": 0.1, "layer3": 0.1, "layer4": 0.1}, "p.lr.layer3", "has an LR but is not trained"),
        ({"head": "layer4 * 2", "layer4": "head / 10"}, "p.lr.", "circular LR reference"),
        ({"head": 0.1, "layer4": "head //"}, "p.lr.layer4", "cannot parse"),
        ({"head": 0.1, "layer4": "max(head, 1)"}, "p.lr.layer4", "only numbers, group names"),
        ({"head": 0.1, "layer4": "'x'"}, "p.lr.layer4", "only numbers, group names"),
        ({"head": 0.1, "layer4": "head - 1"}, "p.lr.layer4", "must be > 0"),
        ({"head": 0.1, "layer4": "head / 0"}, "p.lr.layer4", "division by zero"),
        ({"head": 0.1}, "p.lr.layer4", "has no LR"),
    ],
    ids=[
        "unknown-group",
        "untrained-group",
        "cycle",
        "syntax",
        "call",
        "string",
        "negative",
        "zero-division",
        "missing",
    ],
)
def test_lr_errors(lr: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        lrs(["layer4", "head"], lr)
    assert info.value.key.startswith("phases." + key)
    assert message in info.value.message


def test_lr_cycle_message_shows_the_cycle() -> None:
    with pytest.raises(RecipeError) as info:
        lrs(["a", "b", "c"], {"a": "b / 2", "b": "c / 2", "c": "a * 4"})
    assert info.value.message == "circular LR reference: a -> b -> c -> a"


BLOCKS = [f"block{i}" for i in range(12)]


def test_layer_wise_decay_from_the_last_group() -> None:
    got = lrs([*BLOCKS, "head"], {"head": 1e-3}, lr_decay=0.65)
    # walking train from its last group toward its first: block11 = head * 0.65,
    # block_i = block_(i+1) * 0.65, so block_i = head * 0.65 ** (12 - i)
    expected = {"head": 1e-3}
    value = 1e-3
    for i in reversed(range(12)):
        value = value * 0.65
        expected[f"block{i}"] = value
    assert got == expected
    for i in range(12):
        assert got[f"block{i}"] == pytest.approx(1e-3 * 0.65 ** (12 - i), rel=1e-12)


def test_an_explicit_lr_breaks_the_decay_chain() -> None:
    got = lrs([*BLOCKS, "head"], {"head": 1e-3, "block6": 2e-4}, lr_decay=0.65)
    for i in range(7, 12):
        assert got[f"block{i}"] == pytest.approx(1e-3 * 0.65 ** (12 - i), rel=1e-12)  # from head
    assert got["block6"] == 2e-4  # given: not decayed
    for i in range(6):
        assert got[f"block{i}"] == pytest.approx(2e-4 * 0.65 ** (6 - i), rel=1e-12)  # from block6


def test_an_expression_in_the_chain_is_also_explicit() -> None:
    got = lrs(["a", "b", "c", "head"], {"head": 0.1, "b": "head / 100"}, lr_decay=0.5)
    assert got == {"head": 0.1, "c": 0.1 * 0.5, "b": 0.1 / 100, "a": 0.1 / 100 * 0.5}


VIT = """\
name = "vit-decay"

[model]
arch = "vit_b_16"
num_classes = 10

[data]
builtin = "digits"
batch_size = 64

[optimizer]
type = "AdamW"
weight_decay = 0.05

[groups]
embed = ["stem"]
{blocks}
head = ["head"]

[phases.warmup]
train = ["head"]
steps = 2
lr = 1e-3

[phases.finetune]
after = ["warmup"]
train = [{train}, "head"]
steps = 3
lr = {{ head = 1e-3 }}
lr_decay = 0.65
"""


def test_layer_wise_decay_on_vit_b_16(write: Writer) -> None:
    blocks = "\n".join(f'block{i} = ["encoder.layers.encoder_layer_{i}"]' for i in range(12))
    text = VIT.format(blocks=blocks, train=", ".join(f'"block{i}"' for i in range(12)))
    plan = compile_recipe(write(text))
    groups = {g.name: g for g in plan.groups}
    assert list(groups) == ["embed", *BLOCKS, "head", "rest"]  # rest = encoder.ln
    pg_params = {pg.name: pg.params for pg in plan.param_groups}
    for i in range(12):
        assert all(p.startswith(f"encoder.layers.encoder_layer_{i}.") for p in pg_params[f"block{i}"])
    assert pg_params["rest.no_decay"] == ("encoder.ln.weight", "encoder.ln.bias")
    finetune = plan.phases[1]
    set_lr = {c.target: c.value for c in plan.changes if c.op == "set" and c.field == "lr" and c.step == finetune.begin}
    for i in range(12):
        # block_i = head * 0.65 ** (12 - i), for its decayed and its no-decay param group
        assert set_lr[f"block{i}"] == set_lr[f"block{i}.no_decay"] == pytest.approx(1e-3 * 0.65 ** (12 - i), rel=1e-12)
    assert set_lr["head"] == 1e-3
    # embed and rest stay frozen: their lr was set to 0 at step 0 and is not set again
    assert "embed" not in set_lr and "rest.no_decay" not in set_lr
    first = {c.target: c.value for c in plan.changes if c.op == "set" and c.field == "lr" and c.step == 0}
    assert first["embed"] == first["rest.no_decay"] == first["block0"] == 0.0
    assert finetune.lr["block0"].first == pytest.approx(1e-3 * 0.65**12, rel=1e-12)


# ---------------------------------------------------------------- durations and schedulers

SCHED = """\
name = "sched"

[model]
arch = "resnet18"
num_classes = 10

[data]
builtin = "digits"
batch_size = 32

[optimizer]
type = "SGD"
momentum = 0.9

[groups]
body = ["backbone"]
head = ["head"]

[run]
eval_every = "0.5 epoch"
checkpoint_every = "100 steps"

[phases.onecycle]
train = ["body", "head"]
epochs = 0.5
lr = { head = 0.01, body = "head / 10" }
scheduler = { type = "OneCycleLR", pct_start = 0.3 }

[phases.cosine]
after = ["onecycle"]
train = ["head"]
epochs = 1
lr = 0.02
scheduler = { type = "CosineAnnealingLR" }

[phases.restarts]
after = ["cosine"]
train = ["head"]
epochs = 2
lr = 0.02
scheduler = { type = "CosineAnnealingWarmRestarts", T_0 = "1 epoch" }

[phases.cyclic]
after = ["restarts"]
train = ["body", "head"]
steps = 30
lr = { head = 0.01, body = "head / 10" }
scheduler = { type = "CyclicLR", base_lr = "lr / 10", step_size_up = "0.5 epoch" }

[phases.step]
after = ["cyclic"]
train = ["head"]
steps = 40
lr = 0.1
scheduler = { type = "StepLR", step_size = "30 steps", gamma = 0.5 }

[phases.linear]
after = ["step"]
train = ["head"]
steps = 7
lr = 0.1
scheduler = { type = "LinearLR", start_factor = 0.5 }
"""

STEPS_PER_EPOCH = math.ceil(TRAIN_SIZE / 32)  # drop_last = false: the last, smaller batch counts


@pytest.fixture(scope="module")
def sched_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    path = tmp_path_factory.mktemp("sched") / "sched.toml"
    path.write_text(SCHED)
    return compile_recipe(path)


def test_durations_become_steps(sched_plan: Plan) -> None:
    spe = STEPS_PER_EPOCH
    assert spe == 46  # ceil(1442 / 32)
    assert sched_plan.data.steps_per_epoch == spe
    assert (sched_plan.data.train_size, sched_plan.data.val_size) == (TRAIN_SIZE, VAL_SIZE)
    half = round(0.5 * spe)
    lengths = {p.name: p.end - p.begin for p in sched_plan.phases}
    assert lengths == {"onecycle": half, "cosine": spe, "restarts": 2 * spe, "cyclic": 30, "step": 40, "linear": 7}
    assert sched_plan.phases[0].begin == 0
    assert all(a.end == b.begin for a, b in zip(sched_plan.phases, sched_plan.phases[1:], strict=False))
    args = {p.name: p.scheduler.args for p in sched_plan.phases}
    assert args["restarts"]["T_0"] == spe  # "1 epoch"
    assert args["cyclic"]["step_size_up"] == half  # "0.5 epoch"
    assert args["step"]["step_size"] == 30  # "30 steps"
    assert sched_plan.run.eval_every == half and sched_plan.run.checkpoint_every == 100


def test_length_arguments_default_to_the_phase_length(sched_plan: Plan) -> None:
    args = {p.name: p.scheduler.args for p in sched_plan.phases}
    assert args["onecycle"]["total_steps"] == round(0.5 * STEPS_PER_EPOCH)
    assert args["cosine"]["T_max"] == STEPS_PER_EPOCH
    assert args["linear"]["total_iters"] == 7


def test_max_lr_defaults_to_each_groups_lr(sched_plan: Plan) -> None:
    args = {p.name: p.scheduler.args for p in sched_plan.phases}
    assert args["onecycle"]["max_lr"] == {"body": 0.01 / 10, "head": 0.01}
    assert args["cyclic"]["max_lr"] == {"body": 0.01 / 10, "head": 0.01}
    # the change the runtime applies holds one value per param group of the phase
    [start] = [c for c in sched_plan.changes if c.op == "scheduler" and c.target == "onecycle"]
    assert start.value.param_groups == ("body", "body.no_decay", "head", "head.no_decay")
    assert start.value.args["max_lr"] == [0.001, 0.001, 0.01, 0.01]


def test_lr_expression_in_a_scheduler_argument_is_per_group(sched_plan: Plan) -> None:
    cyclic = next(p for p in sched_plan.phases if p.name == "cyclic")
    assert cyclic.scheduler.args["base_lr"] == {"body": 0.01 / 10 / 10, "head": 0.01 / 10}
    [start] = [c for c in sched_plan.changes if c.op == "scheduler" and c.target == "cyclic"]
    assert start.value.args["base_lr"] == [0.0001, 0.0001, 0.001, 0.001]
    # a group's CyclicLR starts at its base_lr: lr / 10
    assert cyclic.lr["head"].first == pytest.approx(0.001, rel=1e-12)
    assert cyclic.lr["head"].peak <= 0.01 * (1 + 1e-12)  # up to max_lr = lr


def test_a_plain_string_scheduler_argument_stays_a_string(write: Writer, tiny: str) -> None:
    text = tiny.replace(
        "lr = { head = 0.1 }",
        'lr = { head = 0.1 }\nscheduler = { type = "CyclicLR", base_lr = "lr / 4", mode = "triangular2", step_size_up = 2 }',
    )
    plan = compile_recipe(write(text))
    assert plan.phases[0].scheduler.args["mode"] == "triangular2"


@pytest.mark.parametrize(
    ("scheduler", "key", "message", "hint"),
    [
        ('{ type = "StepLr", step_size = 2 }', "scheduler.type", "unknown scheduler 'StepLr'", "did you mean 'StepLR'"),
        (
            '{ type = "StepLR", stepsize = 2 }',
            "scheduler.stepsize",
            "StepLR has no argument 'stepsize'",
            "valid: step_size, gamma",
        ),
        ('{ type = "StepLR" }', "scheduler.step_size", "StepLR needs step_size", "add step_size"),
        ('{ type = "LambdaLR" }', "scheduler.type", "needs a function or a metric", None),
        ('{ type = "OneCycleLR", epochs = 3 }', "scheduler.epochs", "total_steps", "remove it"),
        ('{ type = "StepLR", step_size = "2 weeks" }', "scheduler.step_size", "'2 weeks' is not a duration", None),
        ('{ type = "CyclicLR", base_lr = "lr / 0" }', "scheduler.base_lr", "division by zero", None),
        ('{ type = "StepLR", step_size = 0 }', "scheduler", "fails at step 1", "torch.optim.lr_scheduler"),
        ('{ type = "StepLR", step_size = 1, gamma = 1e300 }', "scheduler", "drives an LR to", "finite"),
        ('{ type = "StepLR", step_size = 1, gamma = nan }', "scheduler.gamma", "must be finite", None),
    ],
    ids=[
        "unknown-type",
        "unknown-argument",
        "missing-argument",
        "unsupported",
        "onecycle-epochs",
        "bad-duration",
        "zero-division",
        "fails-when-stepped",
        "overflows",
        "nan",
    ],
)
def test_scheduler_errors(write: Writer, tiny: str, scheduler: str, key: str, message: str, hint: str | None) -> None:
    text = tiny.replace("lr = { head = 0.1 }", f"lr = {{ head = 0.1 }}\nscheduler = {scheduler}")
    with pytest.raises(RecipeError) as info:
        compile_recipe(write(text))
    err = info.value
    assert err.key == f"phases.warmup.{key}"
    assert message in err.message
    if hint:
        assert hint in (err.suggestion or "")
    assert err.line == text.splitlines().index(f"scheduler = {scheduler}") + 1


@pytest.mark.parametrize(
    ("optimizer", "key", "message", "hint"),
    [
        ('type = "SDG"', "optimizer.type", "unknown optimizer 'SDG'", "did you mean 'SGD'"),
        (
            'type = "SGD"\nmomentun = 0.9',
            "optimizer.momentun",
            "SGD has no argument 'momentun'",
            "valid: lr, momentum,",
        ),
        ('type = "AdamW"\nmomentum = 0.9', "optimizer.momentum", "AdamW has no argument 'momentum'", "betas"),
        ('type = "SGD"\nweight_decay = -1', "optimizer.weight_decay", "must be >= 0", None),
        ('type = "SGD"\nmomentum = "fast"', "optimizer", "SGD rejects its arguments", "torch.optim.SGD"),
        ('type = "SGD"\nnesterov = true', "optimizer", "Nesterov", None),
        ('type = "AdamW"\nbetas = [0.9, inf]', "optimizer.betas", "must be finite", None),
    ],
    ids=["unknown-type", "unknown-argument", "adamw-momentum", "negative", "wrong-type", "torch-check", "inf"],
)
def test_optimizer_errors(write: Writer, tiny: str, optimizer: str, key: str, message: str, hint: str | None) -> None:
    text = tiny.replace('type = "SGD"\nmomentum = 0.9\nweight_decay = 1e-4', optimizer)
    with pytest.raises(RecipeError) as info:
        compile_recipe(write(text))
    err = info.value
    assert err.key == key
    assert message in err.message
    if hint:
        assert hint in (err.suggestion or "")


def test_any_torch_optimizer_and_its_arguments(write: Writer, tiny: str) -> None:
    text = tiny.replace('type = "SGD"\nmomentum = 0.9', 'type = "RAdam"\nbetas = [0.8, 0.99]\neps = 1e-6')
    plan = compile_recipe(write(text))
    assert plan.to_dict()["optimizer"] == {
        "type": "RAdam",
        "kwargs": {"betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 1e-4},
        "no_decay": "auto",
    }
    # momentum lives in betas[0] for Adam-style optimizers; every phase start sets it again
    momentum = {c.target: c.value for c in plan.changes if c.op == "set" and c.field == "momentum" and c.step == 0}
    assert momentum == {"head": 0.8, "head.no_decay": 0.8}


def test_unknown_group_in_train_suggests_the_nearest(write: Writer, tiny: str) -> None:
    with pytest.raises(RecipeError) as info:
        compile_recipe(write(tiny.replace('train = ["head"]', 'train = ["haed"]')))
    assert info.value.key == "phases.warmup.train[0]"
    assert info.value.suggestion == "did you mean 'head'?"


def test_phase_length_is_capped(write: Writer, tiny: str) -> None:
    with pytest.raises(RecipeError) as info:
        compile_recipe(write(tiny.replace("epochs = 1\nlr = { head = 0.1 }", "epochs = 1e12\nlr = { head = 0.1 }")))
    assert info.value.key == "phases.warmup.epochs"
    assert "optimizer steps long" in info.value.message


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("10 ** 10 ** 10", "'10 ** 10 ** 10' is too large for a number"),  # OverflowError: (34, 'Numerical result ...')
        ("2 ** 10000", "'2 ** 10000' is too large for a number"),
        ("head * 1e308 * 100", "is too large for a number"),  # float * float gives inf, no exception
        ("1e309", "'1e309' is too large for a number"),  # the literal itself is inf
        ("(0 - 1) ** 0.5", "is not a real number"),  # Python gives a complex number
        ("0 ** -1", "division by zero"),
    ],
)
def test_lr_overflow_and_complex_are_messages_with_the_key(expr: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        lrs(["layer4", "head"], {"head": 0.1, "layer4": expr})
    assert info.value.key == "phases.p.lr.layer4"
    assert message in info.value.message and "Numerical result" not in info.value.message


LEAVES = st.sampled_from(["0", "1", "2", "10", "0.5", "-1", "1e308", "1e-308", "1e309", "head", "-head"])
EXPRS = st.recursive(
    LEAVES,
    lambda inner: st.builds("({} {} {})".format, inner, st.sampled_from("+-*/") | st.just("**"), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789e.+-*/() head", max_size=40) | EXPRS)
def test_any_lr_expression_is_a_positive_finite_lr_or_a_recipe_error(text: str) -> None:
    """Never a raw errno tuple, a TypeError from a complex number, or an infinite LR."""
    try:
        got = lrs(["layer4", "head"], {"head": 0.1, "layer4": text})
    except RecipeError as err:
        assert err.key is not None and err.key.startswith("phases.p.lr.")
        assert not err.message.startswith("(") and "Errno" not in err.message
        return
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in got.values())
