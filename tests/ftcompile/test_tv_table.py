"""The recorded torchvision table: every model rebuilt from it is torchvision's own meta-device
build (modules, classes, attributes, parameters and buffers, in order), weights and transforms
are torchvision's, plans are byte-identical with and without it, and `plan` / `check` never
import torchvision, scikit-learn or torch._dynamo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from ftcompile import arch as A
from ftcompile import datasets, tv_table
from ftcompile.compiler import compile_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
TABLE = tv_table.table()
needs_table = pytest.mark.skipif(TABLE is None, reason="no table recorded for this torchvision: the live build is used")


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch):
    """Ask torchvision itself, as for a torchvision version without a table."""
    monkeypatch.setenv(tv_table.LIVE_ENV, "1")
    for cached in (tv_table.table, A.arches):
        cached.cache_clear()
    yield
    monkeypatch.delenv(tv_table.LIVE_ENV)
    for cached in (tv_table.table, A.arches):
        cached.cache_clear()


def test_version_is_read_without_importing_torchvision() -> None:
    code = (
        "import sys; from ftcompile.tv_table import torchvision_version as v; print(v(), 'torchvision' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [torchvision.__version__, "False"]


def _float_attrs(model) -> dict[tuple[str, str], float]:
    return {(n, k): v for n, m in model.named_modules() for k, v in vars(m).items() if isinstance(v, float)}


@needs_table
@pytest.mark.parametrize(
    "arch, args",
    [
        ("efficientnet_b0", {"stochastic_depth_prob": 0.0}),  # every StochasticDepth p = 0: cacheable
        ("efficientnet_b0", {"stochastic_depth_prob": 0.35, "dropout": 0.1}),
        ("convnext_tiny", {"stochastic_depth_prob": 0.1}),  # recipes/convnext-mixup-ema.toml
        ("vit_b_16", {"dropout": 0.1, "attention_dropout": 0.05}),  # vit's default dropout is 0
        ("resnet18", {"zero_init_residual": True}),
    ],
)
def test_skeleton_with_rate_builder_args_is_torchvisions_build(arch: str, args: dict) -> None:
    """Rates move module attributes (Dropout / StochasticDepth p, attention dropout) and no
    shape: the table rebuilds them, so the feature-cache decision is the live build's."""
    skeleton = tv_table.skeleton(arch, args)
    assert skeleton is not None
    live_model = A.torchvision_model(arch, builder_args=args)
    want, got = _float_attrs(live_model), _float_attrs(skeleton)
    assert want.keys() == got.keys()
    assert all(got[k] == pytest.approx(v, rel=1e-12, abs=1e-15) for k, v in want.items())
    assert [(n, p.shape) for n, p in skeleton.named_parameters()] == [
        (n, p.shape) for n, p in live_model.named_parameters()
    ]


@needs_table
def test_builder_args_the_table_cannot_rebuild_go_to_torchvision() -> None:
    assert tv_table.skeleton("swin_t", {"stochastic_depth_prob": 0.1}) is None  # the builder fixes it itself
    assert tv_table.skeleton("resnet18", {"width_per_group": 32}) is None  # changes shapes


@needs_table
def test_table_is_for_the_installed_release() -> None:
    assert TABLE.index["torchvision"].split("+")[0] == torchvision.__version__.split("+")[0]
    assert TABLE.arches == sorted(torchvision.models.list_models(module=torchvision.models))


@needs_table
@pytest.mark.parametrize("arch", TABLE.arches if TABLE else [])
def test_skeleton_is_torchvisions_meta_build(arch: str) -> None:
    live_model = A.torchvision_model(arch)
    skeleton = tv_table.skeleton(arch)
    assert tv_table.describe(skeleton) == tv_table.describe(live_model)
    # the orders the plan is made of: parameter names (param groups) and module names
    assert [(n, p.shape) for n, p in skeleton.named_parameters()] == [
        (n, p.shape) for n, p in live_model.named_parameters()
    ]
    assert [(n, type(m).__name__) for n, m in skeleton.named_modules()] == [
        (n, type(m).__name__) for n, m in live_model.named_modules()
    ]
    assert all(p.is_meta for p in skeleton.parameters())


@needs_table
def test_skeleton_classes_keep_torch_bases() -> None:
    # ConvNeXt's LayerNorm2d is a torch LayerNorm (the concat head widens it); BasicBlock is a Module
    sk = tv_table.skeleton("convnext_tiny")
    norm = sk.classifier[0]
    assert type(norm).__name__ == "LayerNorm2d" and isinstance(norm, torch.nn.LayerNorm)
    assert isinstance(sk.features[0][0], torch.nn.Conv2d) and type(sk.features[0][0]) is torch.nn.Conv2d
    assert sk.features[0][0].stride == (4, 4)
    resnet = tv_table.skeleton("resnet18")
    assert type(resnet.layer1[0]).__name__ == "BasicBlock" and resnet.layer1[0].downsample is None


@needs_table
def test_compiled_heads_match_the_live_build() -> None:
    head = {"pool": "concat", "hidden": [32], "dropout": [0.1, 0.2], "batchnorm": True, "activation": "relu"}
    for arch in ("convnext_tiny", "densenet121", "squeezenet1_0", "efficientnet_b0", "vgg11", "inception_v3"):
        for h in (None, head):
            a, b = A.compile_model(arch, 7, h), A.build_model(arch, 7, h)
            assert tv_table.describe(a) == tv_table.describe(b), (arch, h)
            assert A.aliases(arch, a) == A.aliases(arch, b)


@needs_table
def test_weights_and_transforms_are_torchvisions(live: None) -> None:
    # `live` makes arch / datasets ask torchvision; the table must say the same
    for arch in TABLE.arches:
        assert TABLE.weight_names(arch) == A.valid_weights(arch), arch
        for name in TABLE.weight_names(arch):
            assert TABLE.weight_stats(arch, name) == A.weights_stats(arch, name), (arch, name)
            assert TABLE.weight_url(arch, name) == A.weights_url(arch, name), (arch, name)
            assert TABLE.weight_sizes(arch, name) == A.weights_sizes(arch, name), (arch, name)
    assert TABLE.transforms == json.loads(json.dumps(datasets.augment_signatures()))


def _plans(names: list[str]) -> dict[str, str]:
    return {
        n: compile_recipe(
            RECIPES / n,
            **({} if n in ("quickstart.toml", "digits-pretrain.toml") else {"dataset_size": 1000, "val_size": 200}),
        ).to_json()
        for n in names
    }


@needs_table
def test_plans_are_the_same_without_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    names = sorted(p.name for p in RECIPES.glob("*.toml"))
    with_table = _plans(names)
    monkeypatch.setenv(tv_table.LIVE_ENV, "1")
    tv_table.table.cache_clear()
    A.arches.cache_clear()
    try:
        assert tv_table.table() is None
        assert _plans(names) == with_table
    finally:
        monkeypatch.delenv(tv_table.LIVE_ENV)
        tv_table.table.cache_clear()
        A.arches.cache_clear()


def test_without_a_table_torchvision_is_asked(live: None) -> None:
    assert tv_table.table() is None and tv_table.skeleton("resnet18") is None
    plan = compile_recipe(RECIPES / "digits-pretrain.toml")
    assert plan.total_steps == 184


def test_plan_and_check_import_neither_torchvision_nor_sklearn() -> None:
    code = (
        "import sys; from ftcompile.cli import main\n"
        "assert main(['plan', sys.argv[1]]) == 0\n"
        "assert main(['check', *sys.argv[2:]]) == 0\n"
        "print(sorted(m for m in ('torchvision', 'sklearn', 'torch._dynamo') if m in sys.modules))\n"
    )
    done = subprocess.run(
        # check: every shipped recipe, builder_args (convnext-mixup-ema) included
        [sys.executable, "-c", code, str(RECIPES / "quickstart.toml"), *map(str, sorted(RECIPES.glob("*.toml")))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    imported = set(json.loads(done.stdout.splitlines()[-1].replace("'", '"')))
    assert "sklearn" not in imported
    if TABLE is not None:
        assert not imported & {"torchvision", "torch._dynamo"}


def test_digits_labels_without_sklearn_are_sklearns() -> None:
    from sklearn.datasets import load_digits

    assert datasets._digits_targets() == tuple(int(t) for t in load_digits().target)


def test_augment_names_from_the_table_values_when_built(write, tiny: str) -> None:
    from ftcompile.compiler import CompileOptions, compile_checked
    from ftcompile.errors import RecipeError

    bad_value = write(
        tiny.replace("batch_size = 64", 'batch_size = 64\naugment = [{ op = "RandomHorizontalFlip", p = 2.0 }]')
    )
    compile_checked(bad_value, CompileOptions())  # plan / check: the name and argument are fine
    with pytest.raises(RecipeError) as err:  # run builds the op first
        compile_checked(bad_value, CompileOptions(build_transforms=True))
    assert err.value.key == "data.augment[0]" and "RandomHorizontalFlip(p=2.0) is invalid" in str(err.value)
    typo = write(
        tiny.replace("batch_size = 64", 'batch_size = 64\naugment = [{ op = "RandomHorizontalFlip", pp = 0.5 }]'),
        "typo.toml",
    )
    with pytest.raises(RecipeError) as err:
        compile_checked(typo, CompileOptions())
    assert err.value.key == "data.augment[0].pp" and "did you mean 'p'?" in str(err.value)
