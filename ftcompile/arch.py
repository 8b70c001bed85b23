"""What ftcompile knows about torchvision classifiers, kept as one table.

Every family row says where the classifier head is, which modules are the stem and the
stages (input to output), where the global pool is, and how to build the model on the meta
device with the same structure as torchvision's pretrained one. The compiler uses this to
resolve aliases (`head`, `stem`, `stage1`..`stageN`, `backbone`) without allocating any
weights; the runtime uses the same functions to build the real model, so the parameter
names in a plan are the names the runtime trains.

Adding a torchvision family means adding a row (and a prefix in `_PREFIXES`), not `if`s:
`tests/ftcompile/test_arch.py` builds every model on the meta device and checks that the
head, stem and stages cover every parameter exactly once.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ftcompile import tv_table
from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.plan import HeadSpec

POOLS = ("avg", "max", "concat")


@lru_cache(maxsize=1)
def arches() -> list[str]:
    """Every classification builder in torchvision.models (from the recorded table when there is one)."""
    recorded = tv_table.table()
    if recorded is not None:
        return recorded.arches
    import torchvision  # start-up time: planning reads the recorded table (tv_table), not torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def __getattr__(name: str) -> Any:
    """`ARCHES`, computed on first use: listing torchvision's models means importing it."""
    if name == "ARCHES":
        return arches()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AdaptiveConcatPool2d(nn.Module):
    """fastai's concat pooling: max and average pooled features side by side (2x channels).

    Giving the head both statistics helps when fine-tuning on few images; order
    (max, avg) follows fastai so its recipes carry over.
    """

    def __init__(self, output_size: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.output_size = output_size
        self.mp = nn.AdaptiveMaxPool2d(output_size)
        self.ap = nn.AdaptiveAvgPool2d(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], dim=1)


@contextlib.contextmanager
def _regnet_widths_on_cpu() -> Iterator[None]:
    """RegNet computes its block widths with tensors and `.tolist()`, which the meta device
    cannot do; run just that arithmetic on the CPU (not thread-safe: patches a classmethod)."""
    from torchvision.models import regnet as _regnet  # start-up time: torchvision only to build a model

    original = _regnet.BlockParams.__dict__["from_init_params"]

    def on_cpu(cls: type, *args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    _regnet.BlockParams.from_init_params = classmethod(on_cpu)
    try:
        yield
    finally:
        _regnet.BlockParams.from_init_params = original


@dataclass(frozen=True)
class Family:
    """One torchvision family. Paths are dotted module names as in `named_modules()`.

    Stages are either listed (`stages`) or cut from the children of `body` by `split`
    (one of `_SPLITS`); children already named in `stem` are skipped, the first
    `stem_groups` groups join the stem, the last `tail_groups` groups and the `tail`
    modules join the last stage (a final 1x1 conv or norm is not a stage of its own).
    """

    head: str  # torchvision's classifier attribute; new heads keep this name
    stem: tuple[str, ...] = ()
    stages: tuple[tuple[str, ...], ...] = ()
    body: str = ""
    split: str = ""
    stem_groups: int = 0
    tail_groups: int = 0
    tail: tuple[str, ...] = ()
    keep: int = 0  # leading classifier pieces a custom head keeps (norm, flatten)
    pool: str | None = None  # where the global pool is, or goes when the family pools in forward()
    pool_in_head: bool = False  # torchvision's pool sits in the classifier a custom head replaces
    relu_before_pool: bool = False  # forward() applies ReLU between features and pooling
    drop: str | None = None  # dropout outside the classifier; a custom head owns dropout
    tokens: str = ""  # for transformers: how they pool tokens (then `pool` is refused)
    aux: tuple[str, ...] = ()  # auxiliary classifiers torchvision keeps with pretrained weights
    build_kwargs: tuple[tuple[str, Any], ...] = ()  # for weights=None, to match the pretrained structure
    build_context: Callable[[], contextlib.AbstractContextManager[Any]] = field(default=contextlib.nullcontext)


def _numbered(prefix: str, groups: tuple[tuple[int, ...], ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(f"{prefix}.{i}" for i in group) for group in groups)


_HIERARCHICAL = ((1,), (2, 3), (4, 5), (6, 7))  # ConvNeXt / Swin: a downsample joins the next stage
_NO_AUX = (("aux_logits", False), ("init_weights", False))

FAMILIES: dict[str, Family] = {
    "resnet": Family(
        head="fc",
        stem=("conv1", "bn1"),
        stages=(("layer1",), ("layer2",), ("layer3",), ("layer4",)),
        pool="avgpool",
    ),
    "efficientnet": Family(
        head="classifier",
        stem=("features.0",),
        body="features",
        split="each",
        tail_groups=1,
        pool="avgpool",
    ),
    "convnext": Family(
        head="classifier",
        stem=("features.0",),
        stages=_numbered("features", _HIERARCHICAL),
        keep=2,
        pool="avgpool",
    ),
    "mobilenet_v2": Family(
        head="classifier",
        stem=("features.0",),
        body="features",
        split="stride",
        pool="features.pool",
    ),
    "mobilenet_v3": Family(
        head="classifier",
        stem=("features.0",),
        body="features",
        split="stride",
        pool="avgpool",
    ),
    "densenet": Family(
        head="classifier",
        stem=("features.conv0", "features.norm0"),
        stages=tuple((f"features.denseblock{i}", f"features.transition{i}") for i in (1, 2, 3))
        + (("features.denseblock4", "features.norm5"),),
        pool="features.pool",
        relu_before_pool=True,
    ),
    "vgg": Family(head="classifier", body="features", split="maxpool", stem_groups=1, pool="avgpool"),
    "alexnet": Family(head="classifier", body="features", split="maxpool", stem_groups=1, pool="avgpool"),
    "squeezenet": Family(
        head="classifier",
        body="features",
        split="maxpool",
        stem_groups=1,
        pool="features.pool",
        pool_in_head=True,
    ),
    "googlenet": Family(
        head="fc",
        stem=("conv1", "conv2", "conv3"),
        stages=(
            ("inception3a", "inception3b"),
            tuple(f"inception4{c}" for c in "abcde"),
            ("inception5a", "inception5b"),
        ),
        pool="avgpool",
        drop="dropout",
        aux=("aux1", "aux2"),
        build_kwargs=_NO_AUX,
    ),
    "inception": Family(
        head="fc",
        stem=("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
        stages=(
            tuple(f"Mixed_5{c}" for c in "bcd"),
            tuple(f"Mixed_6{c}" for c in "abcde"),
            tuple(f"Mixed_7{c}" for c in "abc"),
        ),
        pool="avgpool",
        drop="dropout",
        aux=("AuxLogits",),
        build_kwargs=_NO_AUX,
    ),
    "shufflenet": Family(
        head="fc",
        stem=("conv1",),
        stages=(("stage2",), ("stage3",), ("stage4", "conv5")),
        pool="conv5.pool",
    ),
    "mnasnet": Family(
        head="classifier",
        stem=tuple(f"layers.{i}" for i in (0, 1, 3, 4, 6, 7)),
        stages=_numbered("layers", ((8,), (9,), (10,), (11,), (12,), (13, 14, 15))),
        pool="layers.pool",
    ),
    "regnet": Family(
        head="fc",
        stem=("stem",),
        stages=tuple((f"trunk_output.block{i}",) for i in (1, 2, 3, 4)),
        pool="avgpool",
        build_context=_regnet_widths_on_cpu,
    ),
    "vit": Family(
        head="heads",
        stem=("conv_proj", "class_token", "encoder.pos_embedding"),
        body="encoder.layers",
        split="quarters",
        tail=("encoder.ln",),
        tokens="pools with its class token",
    ),
    "swin": Family(
        head="head",
        stem=("features.0",),
        stages=_numbered("features", _HIERARCHICAL),
        tail=("norm",),
        tokens="averages its patch tokens after a LayerNorm",
    ),
    "maxvit": Family(
        head="classifier",
        stem=("stem",),
        stages=_numbered("blocks", ((0,), (1,), (2,), (3,))),
        keep=3,
        tokens="averages its last feature map and applies a LayerNorm",
    ),
}

# Longest matching prefix wins, so "mobilenet_v3_small" finds "mobilenet_v3".
_PREFIXES: dict[str, str] = {
    "resnet": "resnet",
    "resnext": "resnet",
    "wide_resnet": "resnet",
    "efficientnet": "efficientnet",
    "convnext": "convnext",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3",
    "densenet": "densenet",
    "vgg": "vgg",
    "alexnet": "alexnet",
    "squeezenet": "squeezenet",
    "googlenet": "googlenet",
    "inception": "inception",
    "shufflenet": "shufflenet",
    "mnasnet": "mnasnet",
    "regnet": "regnet",
    "vit": "vit",
    "swin": "swin",
    "maxvit": "maxvit",
}


def check_arch(arch: str) -> None:
    """Reject names torchvision cannot build, with the nearest real names as the hint."""
    if arch not in arches():
        raise RecipeError(
            f"unknown architecture {arch!r}",
            key="model.arch",
            suggestion=did_you_mean(arch, arches()) or "see torchvision.models.list_models()",
        )


def family_name(arch: str) -> str:
    """The `FAMILIES` key of an arch, found by name prefix."""
    matches = [p for p in _PREFIXES if arch.startswith(p)]
    if not matches:
        raise RecipeError(
            f"ftcompile has no architecture table entry for {arch!r}",
            key="model.arch",
            suggestion="supported families: " + ", ".join(sorted(FAMILIES)),
        )
    return _PREFIXES[max(matches, key=len)]


def family(arch: str) -> Family:
    return FAMILIES[family_name(arch)]


def valid_weights(arch: str) -> list[str]:
    """Names a recipe may give as `model.weights` for this arch (besides a file or "none")."""
    check_arch(arch)
    recorded = tv_table.table()
    if recorded is not None:
        return recorded.weight_names(arch)
    import torchvision  # start-up time: planning reads the recorded table (tv_table), not torchvision

    names = list(torchvision.models.get_model_weights(arch).__members__)
    return names if "DEFAULT" in names else names + ["DEFAULT"]


def weights_stats(arch: str, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the images a torchvision weights member was trained on (its transforms)."""
    recorded = tv_table.table()
    if recorded is not None:
        return recorded.weight_stats(arch, name)
    import torchvision  # start-up time: planning reads the recorded table (tv_table), not torchvision

    enum = torchvision.models.get_model_weights(arch)
    member = enum.DEFAULT if name == "DEFAULT" else enum[name]
    tf = member.transforms()
    return tuple(float(x) for x in tf.mean), tuple(float(x) for x in tf.std)


def weights_url(arch: str, name: str) -> str:
    """Where a torchvision weights member downloads from; its last part names the hub cache file."""
    recorded = tv_table.table()
    url = recorded.weight_url(arch, name) if recorded is not None else None
    return url if url is not None else _weights_member(arch, name).url


def weights_sizes(arch: str, name: str) -> tuple[int, int]:
    """(resize, crop) of the images a torchvision weights member was evaluated on."""
    recorded = tv_table.table()
    sizes = recorded.weight_sizes(arch, name) if recorded is not None else None
    if sizes is not None:
        return sizes
    tf = _weights_member(arch, name).transforms()
    return int(tf.resize_size[0]), int(tf.crop_size[0])


def _weights_member(arch: str, name: str) -> Any:
    import torchvision  # start-up time: planning reads the recorded table (tv_table), not torchvision

    enum = torchvision.models.get_model_weights(arch)
    return enum.DEFAULT if name == "DEFAULT" else enum[name]


def torchvision_model(
    arch: str, device: str = "meta", weights: object | None = None, builder_args: Mapping[str, Any] | None = None
) -> nn.Module:
    """torchvision's own model with its own head, auxiliary classifiers removed."""
    import torchvision  # start-up time: planning reads the recorded table (tv_table), not torchvision

    check_arch(arch)
    row = family(arch)
    # With weights torchvision forces these kwargs itself (and rejects other values).
    kwargs = dict(row.build_kwargs) if weights is None else {}
    kwargs.update(builder_args or {})
    with torch.device(device), row.build_context():
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)
    _strip_aux(model, row)
    return model


def build_model(
    arch: str,
    num_classes: int,
    head: HeadSpec | Mapping[str, Any] | None,
    device: str = "meta",
    weights: object | None = None,
    builder_args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build torchvision's model with our head; on "meta" it costs no memory or init time.

    `head` is the plan's `model.head` (or that table as a dict, as an export's sidecar holds
    it); `builder_args` are the recipe's extra builder keywords (checked by `check_builder_args`).
    """
    return replace_head(torchvision_model(arch, device, weights, builder_args), arch, num_classes, head)


def compile_model(
    arch: str, num_classes: int, head: HeadSpec | None, builder_args: Mapping[str, Any] | None = None
) -> nn.Module:
    """What the compiler resolves a recipe against: the model with our head on the meta
    device, rebuilt from the recorded table (no torchvision import, no forward code) when
    there is one for the installed torchvision and it knows what the builder arguments do,
    else built by torchvision."""
    check_arch(arch)
    model = tv_table.skeleton(arch, dict(builder_args or {}))
    if model is None:
        model = torchvision_model(arch, builder_args=builder_args)
    return replace_head(model, arch, num_classes, head)


# Builder keywords a recipe may not give: the compiler sets them (classes, weights) or they
# take Python objects (layers, callables) that TOML cannot write.
_BUILDER_FIXED = {"self", "num_classes", "weights", "progress", "block", "layers", "norm_layer", "block_type"}


def builder_arg_names(arch: str) -> list[str]:
    """The keywords `model.builder_args` may give for `arch`: the model class's own keyword
    arguments with a plain default (numbers, strings, booleans, None), plus `dropout`, which
    several builders take without a class default."""
    recorded = tv_table.table()
    names = recorded.builder_arg_names(arch) if recorded is not None else None
    if names is not None:
        return names

    model_cls = type(build_model(arch, 2, None, device="meta"))
    names = []
    for name, p in inspect.signature(model_cls.__init__).parameters.items():
        if name in _BUILDER_FIXED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        plain = p.default is None or isinstance(p.default, (bool, int, float, str))
        if (p.default is not p.empty and plain) or name == "dropout":
            names.append(name)
    return names


def _strip_aux(model: nn.Module, row: Family) -> None:
    """Drop auxiliary classifiers: they only add a second output the training loop ignores."""
    if row.aux:
        setattr(model, "aux_logits", False)  # noqa: B010 - a plain bool where torch types a module attribute
        for name in row.aux:
            setattr(model, name, None)


# ----------------------------------------------------------------------------- head


def replace_head(model: nn.Module, arch: str, num_classes: int, head: HeadSpec | Mapping[str, Any] | None) -> nn.Module:
    """Swap in the recipe's classifier; keeps torchvision's attribute name so the
    state_dict keys (and the `head` alias) stay where torchvision puts them."""
    row = family(arch)
    with torch.device(_device_of(model)):
        if head is None:
            path = _last_layer(model, row.head)
            _set_module(model, path, _resized(_get_module(model, path), num_classes))
        else:
            _replace_with_mlp(model, arch, row, num_classes, HeadSpec.of(head))
    return model


def _replace_with_mlp(model: nn.Module, arch: str, row: Family, num_classes: int, head: HeadSpec) -> None:
    pool = _pool_choice(arch, row, head)
    old = _get_module(model, row.head)
    kept = list(old.children())[: row.keep]
    n_in = _in_features(old, row.keep)
    if pool == "concat":
        n_in *= 2
        kept = [_widened(m) if isinstance(m, nn.LayerNorm) else m for m in kept]
    if pool != "avg" or row.pool_in_head:
        _place_pool(model, row, pool)
    if row.drop:
        _set_module(model, row.drop, nn.Identity())
    flatten = [nn.Flatten()] if row.pool_in_head else []
    layers = _mlp(n_in, [*head.hidden, num_classes], head)
    _set_module(model, row.head, nn.Sequential(*kept, *flatten, *layers))


def _pool_choice(arch: str, row: Family, head: HeadSpec) -> str:
    """`pool` only makes sense where a CNN feature map is pooled into a vector."""
    if head.pool is not None and row.tokens:
        raise RecipeError(
            f"{arch} is a transformer; head pooling is for CNNs only",
            key="model.head.pool",
            suggestion=f"remove model.head.pool; {arch} {row.tokens}",
        )
    pool = head.pool or "avg"
    if pool not in POOLS:
        raise RecipeError(
            f"unknown pooling {pool!r}",
            key="model.head.pool",
            suggestion=did_you_mean(str(pool), POOLS) or "use one of: " + ", ".join(POOLS),
        )
    return pool


_POOL_MODULES: dict[str, Callable[[Any], nn.Module]] = {
    "avg": nn.AdaptiveAvgPool2d,
    "max": nn.AdaptiveMaxPool2d,
    "concat": AdaptiveConcatPool2d,
}


def _place_pool(model: nn.Module, row: Family, pool: str) -> None:
    """Swap the family's pool, or append one to the Sequential before a functional pool
    (torchvision's later mean / adaptive_avg_pool2d then acts on a 1x1 map: a no-op)."""
    assert row.pool is not None
    old = _get_module_or_none(model, row.pool)
    size = getattr(old, "output_size", 1)  # VGG/AlexNet pool to 7x7/6x6: keep that
    new = _POOL_MODULES[pool](size)
    if row.relu_before_pool:  # pool(relu(x)), as torchvision does, not relu(pool(x))
        new = nn.Sequential(nn.ReLU(), new)
    _set_module(model, row.pool, new)


def _mlp(n_in: int, widths: list[int], head: HeadSpec) -> list[nn.Module]:
    """fastai's head: per Linear [BatchNorm1d] [Dropout] Linear, activation between Linears."""
    dropouts = _dropouts(head.dropout, len(widths))
    activation = _activation(head.activation)
    layers: list[nn.Module] = []
    for i, (width, p) in enumerate(zip(widths, dropouts, strict=False)):
        if head.batchnorm:
            layers.append(nn.BatchNorm1d(n_in))
        if p > 0:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(n_in, width))
        if i < len(widths) - 1:
            layers.append(activation())
        n_in = width
    return layers


def _dropouts(dropout: float | Sequence[float], n_linear: int) -> list[float]:
    if isinstance(dropout, (int, float)):
        return [float(dropout)] * n_linear
    if len(dropout) != n_linear:
        raise RecipeError(
            f"dropout has {len(dropout)} values but the head has {n_linear} Linear layers",
            key="model.head.dropout",
            suggestion=f"give one value per Linear (len(hidden) + 1 = {n_linear}) or a single float",
        )
    return [float(p) for p in dropout]


_NOT_ELEMENTWISE = {
    "MultiheadAttention",
    "Softmax",
    "Softmin",
    "LogSoftmax",
    "Softmax2d",
    "GLU",
    "Threshold",
}
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name.lower(): getattr(nn, name) for name in nn.modules.activation.__all__ if name not in _NOT_ELEMENTWISE
}


def _activation(name: str) -> type[nn.Module]:
    """Accept "leaky_relu" and "leakyrelu" alike: names are matched without underscores."""
    cls = ACTIVATIONS.get(str(name).lower().replace("_", ""))
    if cls is None:
        raise RecipeError(
            f"unknown activation {name!r}",
            key="model.head.activation",
            suggestion=did_you_mean(str(name), ACTIVATIONS) or "e.g. relu, gelu, silu, tanh",
        )
    return cls


def _resized(layer: nn.Module, num_classes: int) -> nn.Module:
    """A fresh copy of the final layer with `num_classes` outputs (SqueezeNet's is a 1x1 conv)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    assert isinstance(layer, nn.Conv2d)
    (kh, kw), (sh, sw) = layer.kernel_size[:2], layer.stride[:2]
    return nn.Conv2d(layer.in_channels, num_classes, (kh, kw), (sh, sw))


def _widened(norm: nn.LayerNorm) -> nn.LayerNorm:
    """ConvNeXt normalises pooled channels in its head; concat pooling doubles them, so the
    norm doubles too, starting from the pretrained scale and shift for both halves."""
    (channels,) = norm.normalized_shape
    wide = type(norm)(2 * channels, eps=norm.eps)
    with torch.no_grad():
        wide.weight.copy_(norm.weight.repeat(2))
        wide.bias.copy_(norm.bias.repeat(2))
    return wide


def _last_layer(model: nn.Module, head: str) -> str:
    """Path of the classifier's final Linear (or conv) — the only piece `head = None` replaces."""
    paths = [n for n, m in _get_module(model, head).named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return ".".join(p for p in (head, paths[-1]) if p)


def _in_features(classifier: nn.Module, keep: int) -> int:
    """Width of the features entering the replaced part of torchvision's classifier."""
    parts = [classifier] if not list(classifier.children()) else list(classifier.children())[keep:]
    for part in parts:
        for m in part.modules():
            if isinstance(m, nn.Linear):
                return m.in_features
            if isinstance(m, nn.Conv2d):
                return m.in_channels
    raise AssertionError(f"no Linear in {classifier}")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _get_module_or_none(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace (or, on a Sequential, append) the module at a dotted path."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


# ----------------------------------------------------------------------------- aliases


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _split_each(children: list[tuple[str, nn.Module]]) -> list[list[str]]:
    """EfficientNet: torchvision already groups each stage into one child."""
    return [[name] for name, _ in children]


def _downsamples(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in module.modules())


def _split_stride(children: list[tuple[str, nn.Module]]) -> list[list[str]]:
    """MobileNet lists single blocks; a stage is a run at one resolution, so a new one
    starts at every block that downsamples."""
    groups: list[list[str]] = []
    for name, module in children:
        if not groups or _downsamples(module):
            groups.append([])
        groups[-1].append(name)
    return groups


def _split_maxpool(children: list[tuple[str, nn.Module]]) -> list[list[str]]:
    """VGG / AlexNet / SqueezeNet: a block ends with each MaxPool2d."""
    groups: list[list[str]] = [[]]
    for name, module in children:
        groups[-1].append(name)
        if isinstance(module, nn.MaxPool2d):
            groups.append([])
    return groups


def _split_quarters(children: list[tuple[str, nn.Module]]) -> list[list[str]]:
    """ViT has 12-32 identical encoder layers; four equal stages mirror the CNNs'."""
    names = [name for name, _ in children]
    size = -(-len(names) // 4)
    return [names[i : i + size] for i in range(0, len(names), size)]


_SPLITS: dict[str, Callable[[list[tuple[str, nn.Module]]], list[list[str]]]] = {
    "each": _split_each,
    "stride": _split_stride,
    "maxpool": _split_maxpool,
    "quarters": _split_quarters,
}


def _layout(row: Family, model: nn.Module) -> tuple[list[str], list[list[str]]]:
    """Stem prefixes and stage prefixes (input to output) of a built model."""
    stem = list(row.stem)
    if row.stages:
        stages = [list(s) for s in row.stages]
    else:
        stages = _body_groups(row, model)
        stem += [p for group in stages[: row.stem_groups] for p in group]
        stages = stages[row.stem_groups :]
    if row.tail_groups:
        stages = stages[: -row.tail_groups - 1] + [[p for group in stages[-row.tail_groups - 1 :] for p in group]]
    stages[-1] += row.tail
    return stem, stages


def _body_groups(row: Family, model: nn.Module) -> list[list[str]]:
    """Cut the body's children into groups; parameter-free modules (ReLU, pools) are left
    out so every prefix names weights, and groups left empty disappear."""
    children = [
        (f"{row.body}.{name}", m)
        for name, m in _get_module(model, row.body).named_children()
        if f"{row.body}.{name}" not in row.stem
    ]
    stateful = {name for name, m in children if _has_state(m)}
    groups = [[p for p in g if p in stateful] for g in _SPLITS[row.split](children)]
    return [g for g in groups if g]


def aliases(arch: str, model: nn.Module) -> dict[str, list[str]]:
    """Alias -> module/parameter-name prefixes; a prefix p matches name n when n == p or
    n starts with p + ".". `backbone` is everything but the head."""
    stem, stages = _layout(family(arch), model)
    names: dict[str, list[str]] = {"head": [family(arch).head], "stem": stem}
    for i, stage in enumerate(stages, start=1):
        names[f"stage{i}"] = stage
    names["backbone"] = stem + [p for stage in stages for p in stage]
    return names


def stage_count(arch: str, model: nn.Module) -> int:
    return len(_layout(family(arch), model)[1])
