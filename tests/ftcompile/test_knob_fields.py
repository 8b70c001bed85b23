"""Training knobs at compile time: each field is validated, resolved into the plan (and so
hashed), shown by `ftcompile plan`, and a misuse is a RecipeError with its key path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.plan import EmaSpec, MixSpec, PhaseData, Plan
from ftcompile.render import render

REPO = Path(__file__).resolve().parents[2]

BASE = """
name = "knobs"
[model]
arch = "resnet18"
{model}
[data]
builtin = "digits"
classes = ["0", "1", "2"]
image_size = 16
batch_size = 16
workers = 0
{data}
[optimizer]
type = "SGD"
{optimizer}
[groups]
body = ["backbone"]
head = ["head"]
[phases.warmup]
train = ["head"]
steps = 4
lr = 0.1
{warmup}
[phases.all]
after = ["warmup"]
train = ["body", "head"]
epochs = 1
lr = 0.01
{all}
[run]
device = "cpu"
{run}
"""


def plan_of(tmp_path: Path, **parts: str) -> Plan:
    fields = {k: parts.get(k, "") for k in ("model", "data", "optimizer", "warmup", "all", "run")}
    path = tmp_path / "r.toml"
    path.write_text(BASE.format(**fields))
    return compile_recipe(path)


def error_of(tmp_path: Path, **parts: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        plan_of(tmp_path, **parts)
    return info.value


def test_defaults_leave_the_plan_json_as_before(tmp_path: Path) -> None:
    body = json.loads(plan_of(tmp_path).to_json())
    for section, keys in (
        ("model", ["builder_args", "head_weights"]),
        ("data", ["mix", "val_resize", "val_crop"]),
        ("optimizer", ["clip_grad_norm", "clip_grad_value"]),
        ("run", ["accumulate", "ema", "sync_bn"]),
    ):
        assert not set(keys) & set(body[section]), section
    assert all("data" not in ph for ph in body["phases"])


def test_every_knob_is_in_the_plan_and_its_hash(tmp_path: Path) -> None:
    plain = plan_of(tmp_path)
    knobs = plan_of(
        tmp_path,
        model="builder_args = { zero_init_residual = true }",
        data="mix = { mixup_alpha = 0.2, cutmix_alpha = 0.0 }\nval_resize = 20\nval_crop = 16",
        optimizer="clip_grad_norm = 1.0",
        run='accumulate = 2\nema = { decay = 0.99, every = "2 steps" }\nsync_bn = true',
    )
    assert knobs.hash != plain.hash
    assert knobs.model.builder_args == {"zero_init_residual": True}
    assert knobs.data.mix == MixSpec(mixup_alpha=0.2, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5)
    assert (knobs.data.val_resize, knobs.data.val_crop) == (20, 16)
    assert knobs.optimizer.clip_grad_norm == 1.0 and "clip_grad_norm" not in knobs.optimizer.kwargs
    assert knobs.run.accumulate == 2 and knobs.run.sync_bn
    assert knobs.run.ema == EmaSpec(decay=0.99, every=2, warmup=False)
    # the JSON round trip keeps every field (plan.json -> ftcompile run plan.json)
    assert Plan.from_dict(json.loads(knobs.to_json())) == knobs
    text = render(knobs)
    for shown in (
        "val    Resize(20) -> CenterCrop(16)",
        "MixUp(alpha=0.2)",
        "resnet18(zero_init_residual=True)",
        "norm <= 1",
        "accum  2 micro-batches of 8",
        "ema    decay 0.99 every 2 step(s)",
        "SyncBatchNorm",
    ):
        assert shown in text, shown


def test_val_pipeline_default_is_shown(tmp_path: Path) -> None:
    assert "val    Resize(16) -> CenterCrop(16)" in render(plan_of(tmp_path))  # digits: no crop margin


@pytest.mark.parametrize("op", ["MixUp", "CutMix"])
def test_batch_level_ops_in_augment_point_to_data_mix(tmp_path: Path, op: str) -> None:
    err = error_of(tmp_path, data=f'augment = [{{ op = "{op}" }}]')
    assert err.key == "data.augment" and "data.mix" in err.message


def test_phase_augment_with_mixup_is_an_error_too(tmp_path: Path) -> None:
    err = error_of(tmp_path, all='data = { augment = [{ op = "MixUp", alpha = 0.2 }] }')
    assert err.key.startswith("phases.all.data.augment") and "data.mix" in err.message


def test_mix_turns_the_feature_cache_off(tmp_path: Path) -> None:
    assert plan_of(tmp_path, warmup='bn = "frozen"').phases[0].cache.on
    mixed = plan_of(tmp_path, warmup='bn = "frozen"', data="mix = { mixup_alpha = 0.2 }")
    assert not mixed.phases[0].cache.on and "data.mix" in mixed.phases[0].cache.why
    # even when asked for
    asked = plan_of(tmp_path, warmup='bn = "frozen"\ncache_features = true', data="mix = { mixup_alpha = 0.2 }")
    assert not asked.phases[0].cache.on
    # a phase that turns mixing off may cache again
    off = plan_of(tmp_path, warmup='bn = "frozen"\ndata = { mix = false }', data="mix = { mixup_alpha = 0.2 }")
    assert off.phases[0].cache.on and off.phases[0].data.mix is None
    assert off.phases[1].data and off.phases[1].data.mix and off.phases[1].data.mix.mixup_alpha == 0.2


def test_accumulate_must_divide_the_batch(tmp_path: Path) -> None:
    err = error_of(tmp_path, run="accumulate = 3")
    assert err.key == "data.batch_size" and "accumulate = 3" in err.message
    err = error_of(tmp_path, run="accumulate = 4", all="data = { batch_size = 6 }")
    assert err.key == "phases.all.data.batch_size"


def test_builder_args_checked_against_the_signature(tmp_path: Path) -> None:
    err = error_of(tmp_path, model="builder_args = { stochastic_depth = 0.1 }")
    assert err.key == "model.builder_args.stochastic_depth"
    assert "zero_init_residual" in err.suggestion  # the valid ones are listed


@pytest.mark.parametrize(
    "args, key",
    [
        ("stochastic_depth_prob = 1.5", "model.builder_args.stochastic_depth_prob"),
        ('dropout = "0.1"', "model.builder_args.dropout"),
        ("zero_init_residual = 1", "model.builder_args.zero_init_residual"),
    ],
)
def test_builder_args_values_are_checked_without_the_builder(tmp_path: Path, args: str, key: str) -> None:
    """Shape-neutral builder args plan from the recorded table: their values are checked here."""
    model = f"builder_args = {{ {args} }}"
    text = BASE.format(model=model, data="", optimizer="", warmup="", all="", run="")
    if "stochastic" in args:
        text = text.replace("resnet18", "efficientnet_b0")
    if "dropout" in args:
        text = text.replace("resnet18", "vit_b_16").replace("image_size = 16", "image_size = 224")
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        compile_recipe(path)
    assert info.value.key == key


def test_stochastic_depth_refuses_the_feature_cache(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    text = BASE.format(model="", data="", optimizer="", warmup='bn = "frozen"', all="", run="").replace(
        "resnet18", "efficientnet_b0"
    )
    path.write_text(
        text.replace(
            '[model]\narch = "efficientnet_b0"',
            '[model]\narch = "efficientnet_b0"\nbuilder_args = { dropout = 0.0, stochastic_depth_prob = 0.0 }',
        )
    )
    assert compile_recipe(path).phases[0].cache.on
    path.write_text(
        text.replace(
            '[model]\narch = "efficientnet_b0"',
            '[model]\narch = "efficientnet_b0"\nbuilder_args = { dropout = 0.0, stochastic_depth_prob = 0.1 }',
        )
    )
    cache = compile_recipe(path).phases[0].cache
    assert not cache.on and "stochastic depth" in cache.why


def test_per_phase_data_steps_and_positions(tmp_path: Path) -> None:
    # 431 train images (digits 0-2, 80%): 27 steps/epoch at 16, 14 at 32, 54 at 8.
    plan = plan_of(tmp_path, warmup="data = { image_size = 24, batch_size = 32 }", all="data = { batch_size = 8 }")
    warm, full = plan.phases
    assert (warm.begin, warm.end) == (0, 4)
    assert warm.data == PhaseData(
        image_size=24, batch_size=32, augment=[], mix=None, steps_per_epoch=14, data_begin=0, epoch_base=0
    )
    # the second phase: its epoch counts its own batches (54), from a fresh epoch 1
    assert (full.begin, full.end) == (4, 4 + 54)
    assert full.data and (full.data.steps_per_epoch, full.data.epoch_base, full.data.data_begin) == (54, 1, 4)
    assert "phase all: image 16  batch 8  steps/epoch 54" in render(plan)


def test_head_weights_load_checks_shapes(tmp_path: Path) -> None:
    from ftcompile import arch as archs

    model = archs.build_model("resnet18", 5, None, device="cpu")
    torch.save(model.state_dict(), tmp_path / "five.pt")
    err = error_of(tmp_path, model='weights = "five.pt"\nhead_weights = "load"')
    assert err.key == "model.head_weights"
    assert "fc.weight" in err.message and "(5, 512)" in err.message and "(3, 512)" in err.message
    plan = plan_of(tmp_path, model='weights = "five.pt"\nhead_weights = "load"\nnum_classes = 5')
    assert plan.model.head_weights == "load"
    err = error_of(tmp_path, model='weights = "IMAGENET1K_V1"\nhead_weights = "load"')
    assert err.key == "model.head_weights"


def timm_layer_decay(name: str, n_blocks: int, factor: float) -> float:
    """timm's param_groups_layer_decay for a ViT: layer id 0 = embeddings, i + 1 = block i,
    N + 1 = final norm and head; scale = factor ** (N + 1 - layer id)."""
    if name.startswith("encoder.layers.encoder_layer_"):
        layer = int(name.split(".")[2].rsplit("_", 1)[1]) + 1
    elif name.startswith(("conv_proj", "class_token", "encoder.pos_embedding")):
        layer = 0
    else:
        assert name.startswith(("encoder.ln", "heads")), name
        layer = n_blocks + 1
    return factor ** (n_blocks + 1 - layer)


def test_vit_layer_decay_recipe_matches_timm() -> None:
    plan = compile_recipe(REPO / "recipes" / "vit-layer-decay.toml", dataset_size=1000, val_size=100)
    finetune = plan.phases[-1]
    peak = {g: v.peak for g, v in finetune.lr.items()}  # OneCycleLR's max_lr = the resolved lr
    checked = 0
    for pg in plan.param_groups:
        for name in pg.params:
            assert peak[pg.group] == pytest.approx(1e-3 * timm_layer_decay(name, 12, 0.65), rel=1e-9), name
            checked += 1
    assert checked == len([p for pg in plan.param_groups for p in pg.params]) > 150
