"""torchvision, recorded: the facts the compiler needs, read from package data, not from torchvision.

Importing torchvision costs about as much as importing torch again (it imports
torch._dynamo), while the compiler only needs facts that are fixed for a torchvision
version: the classifier names, each model's modules and parameter shapes as built on the
meta device, the weights names with their normalisation, and the signatures of the
transforms.v2 classes. `python -m ftcompile.tv_record` writes them once per torchvision
version into `ftcompile/tables/torchvision-<version>.zip`; `ftcompile plan` and `check` read
that table and never import torchvision. For a torchvision version without a table (or with
FTCOMPILE_LIVE_TORCHVISION=1) `table()` is None and the callers ask torchvision itself.

A model is rebuilt from its record as a *skeleton*: the same module tree, names, classes
(torch.nn classes as themselves, torchvision's as stand-ins with the same name and the same
torch.nn base class), plain attributes (stride, in_features, p, ...) and meta-device
parameters and buffers of the same shapes. It has no forward code, only what the compiler
reads. tests/ftcompile/test_tv_table.py rebuilds every model and compares it with
torchvision's own meta-device build.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

TABLES = Path(__file__).resolve().parent / "tables"
LIVE_ENV = "FTCOMPILE_LIVE_TORCHVISION"


@lru_cache(maxsize=1)
def torchvision_version() -> str:
    """torchvision.__version__ (e.g. "0.29.1+cu130"), read from its version.py without the import."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    spec = importlib.util.find_spec("torchvision")
    try:
        assert spec is not None and spec.submodule_search_locations
        source = Path(spec.submodule_search_locations[0], "version.py").read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
                return str(ast.literal_eval(node.value))
    except (AssertionError, OSError, SyntaxError, ValueError):
        pass
    import torchvision  # start-up time: the table exists so that planning never imports torchvision

    return torchvision.__version__


def table_path(version: str | None = None) -> Path:
    """One table per torchvision release; a local build tag (+cu130, +cpu) does not change models."""
    release = (version or torchvision_version()).split("+")[0]
    return TABLES / f"torchvision-{release}.zip"


@dataclass(frozen=True)
class Table:
    """An opened table: `index` holds arches, weights and transforms; models are read one by one."""

    path: Path
    index: dict[str, Any]

    @property
    def arches(self) -> list[str]:
        return list(self.index["arches"])

    def weight_names(self, arch: str) -> list[str]:
        return list(self.index["weights"][arch]["names"])

    def weight_stats(self, arch: str, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean, std = self.index["weights"][arch]["stats"][name]
        return tuple(mean), tuple(std)

    def weight_url(self, arch: str, name: str) -> str | None:
        """None: a table recorded before URLs were (ask torchvision)."""
        return self.index["weights"][arch].get("urls", {}).get(name)

    def weight_sizes(self, arch: str, name: str) -> tuple[int, int] | None:
        """(resize, crop) of the weights' evaluation transforms; None: not recorded."""
        sizes = self.index["weights"][arch].get("sizes", {}).get(name)
        return None if sizes is None else (int(sizes[0]), int(sizes[1]))

    @property
    def transforms(self) -> dict[str, dict[str, Any]]:
        return self.index["transforms"]

    def builder_arg_names(self, arch: str) -> list[str] | None:
        """The keywords `model.builder_args` may give (None: a table recorded without them)."""
        names = self.index.get("builder_args", {}).get(arch)
        return None if names is None else list(names)

    def model(self, arch: str) -> dict[str, Any]:
        with zipfile.ZipFile(self.path) as zf:
            return json.loads(zf.read(f"models/{arch}.json"))


@lru_cache(maxsize=1)
def table() -> Table | None:
    """The installed torchvision's table, or None: then ask torchvision."""
    if os.environ.get(LIVE_ENV, "") not in ("", "0"):
        return None
    path = table_path()
    if not path.is_file():
        return None
    with zipfile.ZipFile(path) as zf:
        index = json.loads(zf.read("index.json"))
    return Table(path, index)


# ----------------------------------------------------------------------------- models


def _internal_keys() -> frozenset[str]:
    """What nn.Module.__init__ puts in every module's __dict__ (hooks, registries, `training`)."""
    from torch import nn  # start-up time: datasets.py reads the table without torch

    return frozenset(vars(nn.Module()))


def _plain(value: Any) -> bool:
    """A value JSON keeps exactly: None, bool, int, finite float, str, or lists of them."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return False


def _class_key(cls: type) -> str:
    """Where a class lives; a stand-in answers for the torchvision class it stands in for."""
    return cls.__dict__.get("_stands_for") or f"{cls.__module__}.{cls.__qualname__}"


def _torch_base(cls: type) -> type:
    """The first torch.nn class a module class is (itself, for torch.nn's own classes)."""
    return next(c for c in cls.__mro__ if c.__module__.startswith("torch.nn"))


def _tensor(t: Any) -> list[Any] | None:
    return None if t is None else [list(t.shape), str(t.dtype).removeprefix("torch."), bool(t.requires_grad)]


def describe(model: Any) -> dict[str, Any]:
    """A model as plain data: every module with its class, plain attributes, parameters and buffers."""
    internal = _internal_keys()
    classes: dict[str, dict[str, str]] = {}
    modules = []
    for name, m in model.named_modules():
        cls = type(m)
        classes[_class_key(cls)] = {"name": cls.__name__, "base": _class_key(_torch_base(cls))}
        modules.append(
            {
                "name": name,
                "class": _class_key(cls),
                "attrs": {k: v for k, v in vars(m).items() if k not in internal and _plain(v)},
                # Lists, not objects: the order of a module's parameters is the order of the plan's.
                "params": [[k, _tensor(p)] for k, p in m._parameters.items()],
                "buffers": [[k, _tensor(b)] for k, b in m._buffers.items()],
                "transient": sorted(m._non_persistent_buffers_set),
                "none_children": [k for k, c in m._modules.items() if c is None],
            }
        )
    return json.loads(json.dumps({"classes": classes, "modules": modules}, allow_nan=False))


def _tuples(value: Any) -> Any:
    """JSON arrays back to tuples, as torch.nn keeps kernel sizes, strides and shapes."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@cache
def _module_class(key: str, name: str, base_key: str) -> type[Any]:
    """torch.nn's own class, or for torchvision's a stand-in with the same name deriving from
    the same torch.nn class, so isinstance checks and `type(m).__name__` read the same."""
    module, _, qualname = base_key.rpartition(".")
    base: Any = importlib.import_module(module)
    for part in qualname.split("."):
        base = getattr(base, part)
    if key == base_key:
        return base
    return type(name, (base,), {"__module__": __name__, "__qualname__": name, "_stands_for": key})


def rebuild(record: dict[str, Any]) -> Any:
    """The skeleton of a described model, on the meta device."""
    import torch  # start-up time: datasets.py reads the table without torch
    from torch import nn  # start-up time: datasets.py reads the table without torch

    def tensor(spec: list[Any], param: bool) -> Any:
        shape, dtype, requires_grad = spec
        t = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        return nn.Parameter(t, requires_grad=requires_grad) if param else t

    built: dict[str, Any] = {}
    for entry in record["modules"]:
        spec = record["classes"][entry["class"]]
        cls = _module_class(entry["class"], spec["name"], spec["base"])
        m = cls.__new__(cls)  # type: ignore[call-overload]  # a recorded nn.Module subclass, made without __init__
        nn.Module.__init__(m)
        m.__dict__.update({k: _tuples(v) for k, v in entry["attrs"].items()})
        for k, p in entry["params"]:
            m._parameters[k] = None if p is None else tensor(p, param=True)
        for k, b in entry["buffers"]:
            m._buffers[k] = None if b is None else tensor(b, param=False)
        m._non_persistent_buffers_set.update(entry["transient"])
        for k in entry["none_children"]:
            m._modules[k] = None
        name = entry["name"]
        if name:
            parent, _, leaf = name.rpartition(".")
            built[parent]._modules[leaf] = m
        built[name] = m
    return built[""]


# Builder keywords that change no module, parameter or buffer: rates, whose effect on module
# attributes (a Dropout's or StochasticDepth's `p`) the table records as linear in the rate,
# and initial values, which a meta-device model does not have.
RATE_ARGS = ("dropout", "attention_dropout", "stochastic_depth_prob")
INIT_ARGS = ("zero_init_residual", "init_weights")


def rates_record(build: Any, names: list[str]) -> dict[str, list[list[Any]] | None]:
    """Per rate keyword the arch takes, every float module attribute it moves, as
    [module, attribute, value at rate 0, value at rate 1]; None where that is not linear
    (then the compiler asks torchvision). `build(args)` builds the model on meta."""
    out: dict[str, list[list[Any]] | None] = {}
    for arg in (a for a in RATE_ARGS if a in names):
        try:
            at = [dict(build({arg: rate}).named_modules()) for rate in (0.0, 0.5, 1.0)]
        except TypeError:  # a keyword the builder sets itself: torchvision's own error at compile time
            out[arg] = None
            continue
        moved: list[list[Any]] | None = []
        for name, m in at[0].items():
            for attr, v0 in vars(m).items():
                v1, half = getattr(at[2][name], attr, None), getattr(at[1][name], attr, None)
                if not isinstance(v0, float) or not isinstance(v1, float) or v0 == v1:
                    continue
                if not isinstance(half, float) or not math.isclose(half, (v0 + v1) / 2, rel_tol=1e-9, abs_tol=1e-12):
                    moved = None
                    break
                assert moved is not None  # a None above ends this loop
                moved.append([name, attr, v0, v1])
            if moved is None:
                break
        out[arg] = moved
    return out


def skeleton(arch: str, builder_args: dict[str, Any] | None = None) -> Any | None:
    """The arch's model (torchvision's head, auxiliary classifiers removed) from the table,
    built as with `builder_args`; None when the table cannot say (no table, or a keyword
    that changes the model's structure or an effect not recorded): then ask torchvision."""
    t = table()
    args = builder_args or {}
    if t is None or arch not in t.index["arches"] or not set(args) <= {*RATE_ARGS, *INIT_ARGS}:
        return None
    rates = t.index.get("rates", {}).get(arch, {})
    if any(rates.get(arg) is None for arg in args if arg in RATE_ARGS):
        return None
    model = rebuild(t.model(arch))
    modules = dict(model.named_modules())
    for arg in (a for a in args if a in RATE_ARGS):
        for name, attr, v0, v1 in rates[arg]:
            setattr(modules[name], attr, v0 + args[arg] * (v1 - v0))
    return model
