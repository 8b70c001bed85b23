"""The architecture table: every torchvision classifier, its aliases and its heads.

Models are built on the meta device, so building all 80 costs seconds and no memory;
meta tensors still carry shapes through forward(), which is what the head tests check.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftcompile import arch as A
from ftcompile.errors import RecipeError

# One small representative per family, with the input size its forward() needs.
REPRESENTATIVES = {
    "resnet18": 224,
    "efficientnet_b0": 224,
    "efficientnet_v2_s": 224,
    "convnext_tiny": 224,
    "mobilenet_v3_small": 224,
    "mobilenet_v2": 224,
    "densenet121": 224,
    "vgg11": 224,
    "alexnet": 224,
    "squeezenet1_0": 224,
    "googlenet": 224,
    "inception_v3": 299,
    "shufflenet_v2_x0_5": 224,
    "mnasnet0_5": 224,
    "regnet_y_400mf": 224,
    "vit_b_16": 224,
    "swin_t": 224,
    "maxvit_t": 224,
}
TOKEN_MODELS = {"vit_b_16", "swin_t", "maxvit_t"}
HEAD = {"hidden": [32], "dropout": [0.1, 0.2], "batchnorm": True}


def _matches(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _meta_forward(model: nn.Module, size: int) -> torch.Size:
    return model(torch.empty(2, 3, size, size, device="meta")).shape


def test_every_arch_has_a_family() -> None:
    assert len(A.ARCHES) >= 80
    for arch in A.ARCHES:
        assert A.family_name(arch) in A.FAMILIES, arch


def test_representatives_cover_every_family() -> None:
    assert {A.family_name(a) for a in REPRESENTATIVES} == set(A.FAMILIES)


@pytest.mark.parametrize("arch", A.ARCHES)
def test_aliases_cover_every_parameter_once(arch: str) -> None:
    model = A.build_model(arch, num_classes=10, head=None)
    names = [n for n, _ in model.named_parameters()]
    aliases = A.aliases(arch, model)
    n_stages = A.stage_count(arch, model)
    assert n_stages >= 2
    parts = ["head", "stem"] + [f"stage{i}" for i in range(1, n_stages + 1)]
    assert set(aliases) == set(parts) | {"backbone"}
    assert all(aliases[p] for p in parts), "every alias names at least one module"
    owners = {n: [p for p in parts if any(_matches(x, n) for x in aliases[p])] for n in names}
    assert {n: o for n, o in owners.items() if len(o) != 1} == {}
    stages = [x for i in range(1, n_stages + 1) for x in aliases[f"stage{i}"]]
    assert aliases["backbone"] == aliases["stem"] + stages


@pytest.mark.parametrize("arch", REPRESENTATIVES)
def test_default_head_is_one_new_linear(arch: str) -> None:
    model = A.build_model(arch, num_classes=7, head=None)
    assert _meta_forward(model.eval(), REPRESENTATIVES[arch]) == (2, 7)


@pytest.mark.parametrize("arch", REPRESENTATIVES)
def test_mlp_head_shapes(arch: str) -> None:
    pool = {} if arch in TOKEN_MODELS else {"pool": "concat"}
    model = A.build_model(arch, num_classes=7, head={**HEAD, **pool})
    assert _meta_forward(model.train(), REPRESENTATIVES[arch]) == (2, 7)
    head = model.get_submodule(A.aliases(arch, model)["head"][0])
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.out_features) for m in linears[-2:]] == [32, 7]
    assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.2]


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("arch", sorted(set(REPRESENTATIVES) - TOKEN_MODELS))
def test_other_pools_keep_shapes(arch: str, pool: str) -> None:
    model = A.build_model(arch, num_classes=7, head={"pool": pool})
    assert _meta_forward(model.eval(), REPRESENTATIVES[arch]) == (2, 7)


@pytest.mark.parametrize("arch", sorted(TOKEN_MODELS))
def test_token_models_refuse_pool(arch: str) -> None:
    with pytest.raises(RecipeError, match="pooling is for CNNs") as err:
        A.build_model(arch, num_classes=7, head={"pool": "avg"})
    assert err.value.key == "model.head.pool"
    assert err.value.suggestion.startswith("remove model.head.pool")


def test_default_head_keeps_torchvision_pieces() -> None:
    convnext = A.build_model("convnext_tiny", 7, None)
    assert [type(m).__name__ for m in convnext.classifier] == ["LayerNorm2d", "Flatten", "Linear"]
    mobilenet = A.build_model("mobilenet_v3_small", 7, None)
    assert mobilenet.classifier[0].out_features == 1024  # torchvision's pre-logits Linear stays
    squeeze = A.build_model("squeezenet1_0", 7, None)
    assert squeeze.classifier[1].out_channels == 7 and squeeze.classifier[1].kernel_size == (1, 1)


def test_mlp_head_layer_order() -> None:
    # fastai order per Linear: BatchNorm1d, Dropout, Linear, activation (none after the last).
    # concat pooling doubles resnet18's 512 features: 2 * 512 = 1024 inputs.
    model = A.build_model("resnet18", 7, {**HEAD, "pool": "concat", "activation": "leaky_relu"})
    kinds = [type(m).__name__ for m in model.fc]
    assert kinds == ["BatchNorm1d", "Dropout", "Linear", "LeakyReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert model.fc[0].num_features == 1024 and model.fc[2].in_features == 1024
    assert isinstance(model.avgpool, A.AdaptiveConcatPool2d)


def test_single_dropout_applies_to_every_linear_and_zero_adds_none() -> None:
    model = A.build_model("resnet18", 7, {"hidden": [16, 8], "dropout": 0.3})
    assert [m.p for m in model.fc if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.3]
    plain = A.build_model("resnet18", 7, {"hidden": [16]})
    assert [type(m).__name__ for m in plain.fc] == ["Linear", "ReLU", "Linear"]


def test_custom_head_owns_dropout_outside_classifier() -> None:
    # GoogLeNet's dropout sits beside fc; with a recipe head, only the recipe's dropout counts.
    model = A.build_model("googlenet", 7, {"dropout": 0.0})
    assert isinstance(model.dropout, nn.Identity)
    assert model.aux1 is None and model.aux2 is None


def test_convnext_concat_widens_head_norm() -> None:
    model = A.build_model("convnext_tiny", 7, {"pool": "concat"}, device="cpu")
    norm = model.classifier[0]
    assert norm.normalized_shape == (2 * 768,)
    assert model.classifier[2].in_features == 2 * 768


def test_vgg_max_pool_keeps_output_size() -> None:
    model = A.build_model("vgg11", 7, {"pool": "max"})
    assert isinstance(model.avgpool, nn.AdaptiveMaxPool2d) and model.avgpool.output_size == (7, 7)


def test_real_cpu_forward_with_concat_pool() -> None:
    torch.manual_seed(0)
    model = A.build_model("resnet18", 7, {**HEAD, "pool": "concat"}, device="cpu").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_head_state_dict_keys_and_strict_reload() -> None:
    args = ("resnet18", 7, {**HEAD, "pool": "concat"})
    model = A.build_model(*args, device="cpu")
    state = model.state_dict()
    head_keys = [k for k in state if not any(_matches(p, k) for p in A.aliases("resnet18", model)["backbone"])]
    assert head_keys and all(k.startswith("fc.") for k in head_keys)
    assert "fc.2.weight" in state and state["fc.2.weight"].shape == (32, 1024)
    fresh = A.build_model(*args, device="cpu")
    fresh.load_state_dict(state, strict=True)


def test_unknown_arch_suggests_nearest() -> None:
    with pytest.raises(RecipeError) as err:
        A.check_arch("resnet51")
    assert err.value.key == "model.arch"
    assert "resnet50" in err.value.suggestion
    with pytest.raises(RecipeError):
        A.build_model("resnet51", 7, None)


def test_dropout_list_must_match_linears() -> None:
    with pytest.raises(RecipeError) as err:
        A.build_model("resnet18", 7, {"hidden": [32], "dropout": [0.1]})
    assert err.value.key == "model.head.dropout"


@pytest.mark.parametrize(("field", "value"), [("activation", "relux"), ("pool", "mean")])
def test_bad_head_values_name_their_key(field: str, value: str) -> None:
    with pytest.raises(RecipeError) as err:
        A.build_model("resnet18", 7, {field: value})
    assert err.value.key == f"model.head.{field}"


def test_valid_weights() -> None:
    names = A.valid_weights("resnet50")
    assert {"IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"} <= set(names)
    assert names.count("DEFAULT") == 1
    assert A.valid_weights("squeezenet1_1")[-1] == "DEFAULT"


def test_regnet_builds_on_meta_and_restores_torchvision() -> None:
    # RegNet's width arithmetic is patched to run on the CPU only while building.
    from torchvision.models import regnet

    before = regnet.BlockParams.__dict__["from_init_params"]
    model = A.build_model("regnet_x_400mf", 7, None)
    assert next(model.parameters()).is_meta
    assert regnet.BlockParams.__dict__["from_init_params"] is before


def test_concat_pool_is_max_then_avg() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])  # one channel: max 6, mean (1+2+3+6)/4 = 3
    assert A.AdaptiveConcatPool2d(1)(x).flatten().tolist() == [6.0, 3.0]


def test_pool_appended_where_torchvision_pools_in_forward() -> None:
    # ShuffleNet takes x.mean([2, 3]) in forward(); the appended max pool leaves a 1x1 map,
    # so the mean becomes a no-op and fc sees the spatial max of conv5's output.
    torch.manual_seed(0)
    model = A.build_model("shufflenet_v2_x0_5", 7, None, device="cpu").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.conv5(model.stage4(model.stage3(model.stage2(model.maxpool(model.conv1(x))))))
        A._place_pool(model, A.family("shufflenet_v2_x0_5"), "max")
        torch.testing.assert_close(model(x), model.fc(features.amax(dim=(2, 3))))
