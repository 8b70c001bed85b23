"""Stage 4: resolve a validated recipe against the real model and the counted data.

Selectors become parameter names (model built on the meta device: no memory, no weights),
epochs become optimizer steps (once, here), LR expressions become numbers, scheduler and
optimizer arguments are checked against the torch signatures.
"""

from __future__ import annotations

import ast
import json
import fnmatch
import inspect
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.schema import Phase, Recipe, parse_duration

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Scheduler arguments that measure the phase; they default to its length in steps.
LENGTH_ARGS = {
    "OneCycleLR": "total_steps",
    "CosineAnnealingLR": "T_max",
    "LinearLR": "total_iters",
    "ConstantLR": "total_iters",
    "PolynomialLR": "total_iters",
}
MAX_LR_DEFAULT = ("OneCycleLR", "CyclicLR")
# Need a callable or a metric, which a TOML recipe cannot give.
UNSUPPORTED_SCHEDULERS = {"LambdaLR", "MultiplicativeLR", "ReduceLROnPlateau", "SequentialLR", "ChainedScheduler"}
# A phase longer than this is a typo (and its LR trace would take hours to compute).
MAX_STEPS = 10**7
NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    numel: int
    no_decay: bool


@dataclass(frozen=True)
class GroupInfo:
    name: str
    selectors: tuple[str, ...]
    params: tuple[str, ...]
    numel: int


@dataclass(frozen=True)
class ResolvedPhase:
    name: str
    after: tuple[str, ...]
    begin: int
    end: int
    epochs: float | None
    train: tuple[str, ...]
    lr: dict[str, float]
    weight_decay: dict[str, float]
    momentum: dict[str, float]
    bn: str
    optimizer_state: str
    scheduler: dict[str, Any] | None  # {"type", "args"}; a dict-valued arg holds one value per group
    cache: dict[str, Any]  # {"on": bool, "why": str, "module": head module}


@dataclass(frozen=True)
class Resolved:
    model: dict[str, Any]
    data: dict[str, Any]
    optimizer: dict[str, Any]
    groups: tuple[GroupInfo, ...]
    no_decay: frozenset[str]
    numels: dict[str, int]
    phases: tuple[ResolvedPhase, ...]
    total_steps: int
    eval_every: int
    checkpoint_every: int
    bn_groups: dict[str, str]  # BatchNorm module name -> group


# ---------------------------------------------------------------- model


def resolve_weights(arch: str, weights: str, folder: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A torchvision weights name, a state_dict file, an upstream recipe, or none.

    An upstream recipe (`weights = "pretrain.toml"`) means: the final model.pt of that
    recipe's run; its whole plan is embedded, so the runtime can train it first when no
    finished run of exactly that plan exists, and the hash covers it.
    """
    from ftcompile import arch as archs

    if weights.lower() == "none":
        return {"kind": "none", "value": None}
    valid = archs.valid_weights(arch)
    if weights in valid:
        return {"kind": "torchvision", "value": weights}
    if weights.endswith(".toml"):
        return _upstream(weights, folder, chain)
    if _looks_like_file(weights):
        return {"kind": "file", "value": weights}
    raise RecipeError(
        f"{weights!r} is not a weights name for {arch} nor a state_dict file",
        key="model.weights",
        suggestion=_with_valid(did_you_mean(weights, valid), f"{', '.join(valid)}, a .pt/.pth path, an upstream recipe .toml, or \"none\""),
    )


def _with_valid(hint: str | None, valid: str) -> str:
    """'did you mean X? valid: ...', or just 'valid: ...' when nothing is close."""
    return f"{hint} valid: {valid}" if hint else f"valid: {valid}"


def _looks_like_file(value: str) -> bool:
    """The same test `load` uses to decide that a weights value is a path to rebase."""
    from ftcompile.load import _looks_like_path

    return _looks_like_path(value)


def _upstream(weights: str, folder: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    from ftcompile.compiler import compile_recipe

    path = (folder / weights).resolve()
    if not path.is_file():
        raise RecipeError(f"upstream recipe not found: {folder / weights}", key="model.weights",
                          suggestion="the path is relative to this recipe's folder")
    if path in chain:
        raise RecipeError("upstream recipes form a cycle", key="model.weights", suggestion="remove one weights reference")
    try:
        plan = compile_recipe(path, _chain=chain)
    except RecipeError as err:
        raise RecipeError(f"upstream recipe {weights} fails to compile: {err}", key="model.weights") from None
    import os

    return {"kind": "recipe", "value": weights, "root": os.path.relpath(path.parent, folder.resolve()),
            "plan": json.loads(plan.to_json())}


def normalisation(arch: str, weights: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the torchvision weights' metadata, ImageNet statistics otherwise."""
    if weights["kind"] == "recipe":
        data = weights["plan"]["data"]
        return tuple(data["mean"]), tuple(data["std"])
    if weights["kind"] == "torchvision":
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        member = enum.DEFAULT if weights["value"] == "DEFAULT" else enum[weights["value"]]
        tf = member.transforms()
        return tuple(float(x) for x in tf.mean), tuple(float(x) for x in tf.std)
    return IMAGENET_MEAN, IMAGENET_STD


def param_infos(model: Any, no_decay: str | list[str]) -> list[ParamInfo]:
    """Every parameter, and whether weight decay skips it (biases, norm layers, or patterns)."""
    norm_params: set[str] = set()
    for mod_name, module in model.named_modules():
        if any(t in type(module).__name__ for t in NORM_TYPES):
            norm_params.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    infos = []
    for name, param in model.named_parameters():
        if no_decay == "none":
            skip = False
        elif no_decay == "auto":
            skip = param.ndim <= 1 or name.endswith(".bias") or name in norm_params
        else:
            skip = any(fnmatch.fnmatchcase(name, pat) for pat in no_decay)
        infos.append(ParamInfo(name, param.numel(), skip))
    return infos


def bn_modules(model: Any) -> list[tuple[str, str]]:
    """(module name, name of its first parameter) for every BatchNorm layer."""
    out = []
    for name, module in model.named_modules():
        if "BatchNorm" in type(module).__name__:
            params = [p for p, _ in module.named_parameters(recurse=False)]
            out.append((name, f"{name}.{params[0]}" if params else name))
    return out


# ---------------------------------------------------------------- groups


def _prefix_match(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def select(selector: str, params: Sequence[str], aliases: dict[str, list[str]], modules: Sequence[str]) -> list[str]:
    """Parameters named by an alias, a module name, or a glob over module/parameter names."""
    if selector in aliases:
        prefixes = aliases[selector]
    elif any(ch in selector for ch in "*?["):
        prefixes = [m for m in modules if fnmatch.fnmatchcase(m, selector)]
        prefixes += [p for p in params if fnmatch.fnmatchcase(p, selector)]
    else:
        prefixes = [selector]
    return [p for p in params if any(_prefix_match(pre, p) for pre in prefixes)]


def resolve_groups(
    groups: dict[str, list[str]], params: Sequence[ParamInfo], aliases: dict[str, list[str]], modules: Sequence[str]
) -> tuple[GroupInfo, ...]:
    names = [p.name for p in params]
    numel = {p.name: p.numel for p in params}
    owner: dict[str, str] = {}
    out = []
    for gname, selectors in groups.items():
        chosen: list[str] = []
        picked: set[str] = set()  # == set(chosen), for O(1) membership
        for i, sel in enumerate(selectors):
            hits = select(sel, names, aliases, modules)
            if not hits:
                top = sorted({m.split(".")[0] for m in modules if m} | set(aliases))
                near = did_you_mean(sel, list(aliases) + list(modules), n=5)
                raise RecipeError(
                    f"selector {sel!r} matches no parameter",
                    key=f"groups.{gname}[{i}]",
                    suggestion=near or f"aliases and top-level modules: {', '.join(top)}",
                )
            new = [h for h in hits if h not in picked]
            chosen += new
            picked.update(new)
        for pname in chosen:
            if pname in owner and owner[pname] != gname:
                raise RecipeError(
                    f"parameter {pname!r} is in two groups: {owner[pname]!r} and {gname!r}",
                    key=f"groups.{gname}",
                    suggestion="narrow one of the selectors (module names like 'layer4.1' or globs work)",
                )
            owner[pname] = gname
        ordered = tuple(n for n in names if n in picked)
        out.append(GroupInfo(gname, tuple(selectors), ordered, sum(numel[n] for n in ordered)))
    rest = tuple(n for n in names if n not in owner)
    if rest:
        out.append(GroupInfo("rest", (), rest, sum(numel[n] for n in rest)))
    return tuple(out)


# ---------------------------------------------------------------- learning rates

_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def parse_expr(text: str) -> ast.expr:
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"cannot parse {text!r}; write e.g. \"head / 10\" or \"layer4 * 0.1\"") from None
    for node in ast.walk(tree):
        if not isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Load, *_OPS)):
            raise ValueError(f"{text!r}: only numbers, group names and + - * / ** are allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ValueError(f"{text!r}: only numbers, group names and + - * / ** are allowed")
    return tree


def names_in(tree: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]


def evaluate(tree: ast.expr, env: dict[str, float]) -> float:
    if isinstance(tree, ast.Constant):
        return float(tree.value)
    if isinstance(tree, ast.Name):
        return env[tree.id]
    if isinstance(tree, ast.UnaryOp):
        return _OPS[type(tree.op)](evaluate(tree.operand, env))
    if isinstance(tree, ast.BinOp):
        try:
            return _OPS[type(tree.op)](evaluate(tree.left, env), evaluate(tree.right, env))
        except (ZeroDivisionError, OverflowError) as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("unsupported expression")


def resolve_lrs(phase_name: str, phase: Phase) -> dict[str, float]:
    """Numbers, expressions over the phase's other groups, and layer-wise decay -> numbers.

    Decay rule: walking `train` from its last group toward its first, a group without an
    explicit LR gets the LR of the group after it times `lr_decay`.
    """
    key = f"phases.{phase_name}.lr"
    train = list(phase.train)
    given: dict[str, float | str] = (
        {g: phase.lr for g in train} if isinstance(phase.lr, (int, float, str)) and phase.lr != {} else dict(phase.lr)
    )
    for g in given:
        if g not in train:
            raise RecipeError(
                f"group {g!r} has an LR but is not trained in this phase",
                key=f"{key}.{g}",
                suggestion=f"add it to phases.{phase_name}.train or remove its LR (trained: {', '.join(train)})",
            )
    trees: dict[str, ast.expr] = {}
    for g, v in given.items():
        if isinstance(v, str):
            try:
                trees[g] = parse_expr(v)
            except ValueError as exc:
                raise RecipeError(
                    str(exc), key=f"{key}.{g}", suggestion=f"refer to groups trained in this phase: {', '.join(train)}"
                ) from None
            for ref in names_in(trees[g]):
                if ref not in train:
                    raise RecipeError(
                        f"{v!r} refers to {ref!r}, which is not trained in this phase",
                        key=f"{key}.{g}",
                        suggestion=did_you_mean(ref, train) or f"refer to one of: {', '.join(train)}",
                    )
    lrs: dict[str, float] = {}
    visiting: list[str] = []

    def value(g: str) -> float:
        if g in lrs:
            return lrs[g]
        if g in visiting:
            cycle = " -> ".join([*visiting[visiting.index(g):], g])
            raise RecipeError(f"circular LR reference: {cycle}", key=f"{key}.{g}", suggestion="give one of them a number")
        visiting.append(g)
        if g in trees:
            env = {ref: value(ref) for ref in names_in(trees[g])}
            try:
                lrs[g] = evaluate(trees[g], env)
            except ValueError as exc:
                raise RecipeError(str(exc), key=f"{key}.{g}") from None
        elif g in given:
            lrs[g] = float(given[g])  # type: ignore[arg-type]
        elif phase.lr_decay is not None and train.index(g) < len(train) - 1:
            lrs[g] = value(train[train.index(g) + 1]) * phase.lr_decay
        else:
            raise RecipeError(
                f"group {g!r} is trained but has no LR",
                key=f"{key}.{g}",
                suggestion=f"add {g} = 1e-3 (or an expression like \"{train[-1]} / 10\") to phases.{phase_name}.lr"
                + ("" if phase.lr_decay else ", or set lr_decay"),
            )
        visiting.pop()
        if not (lrs[g] > 0 and math.isfinite(lrs[g])):
            raise RecipeError(f"LR of {g!r} resolves to {lrs[g]!r}; it must be > 0", key=f"{key}.{g}")
        return lrs[g]

    return {g: value(g) for g in train}


# ---------------------------------------------------------------- optimizer and scheduler


@lru_cache(maxsize=None)
def _init_params(cls: type) -> Any:
    """inspect.signature is slow and asked once per phase; a torch class's signature is fixed."""
    return inspect.signature(cls.__init__).parameters


def _signature_args(cls: type, skip: Sequence[str]) -> dict[str, inspect.Parameter]:
    params = _init_params(cls)
    return {n: p for n, p in params.items() if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_optimizer(opt_type: str, kwargs: dict[str, Any]) -> None:
    import torch.optim

    classes = sorted(n for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer")
    if opt_type not in classes:
        raise RecipeError(
            f"unknown optimizer {opt_type!r}",
            key="optimizer.type",
            suggestion=did_you_mean(opt_type, classes) or f"torch.optim has: {', '.join(classes)}",
        )
    valid = _signature_args(getattr(torch.optim, opt_type), ("params",))
    for name, value in kwargs.items():
        if name not in valid:
            raise RecipeError(
                f"{opt_type} has no argument {name!r}",
                key=f"optimizer.{name}",
                suggestion=_with_valid(did_you_mean(name, valid), ", ".join(valid)),
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise RecipeError(f"must be >= 0 (got {value!r})", key=f"optimizer.{name}")
        if not _finite(value):
            raise RecipeError(f"must be finite (got {value!r})", key=f"optimizer.{name}", suggestion="write a number")
    from ftcompile.apply import dummy_optimizer

    try:  # the optimizer's own checks (types, ranges), on one dummy parameter
        dummy_optimizer(opt_type, kwargs, n_groups=1)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise RecipeError(
            f"{opt_type} rejects its arguments: {exc}",
            key="optimizer",
            suggestion=f"see the torch.optim.{opt_type} documentation for each argument's type and range",
        ) from None


def _finite(value: Any) -> bool:
    """No inf or nan anywhere in a value: a plan is JSON."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def scheduler_names() -> list[str]:
    import torch.optim.lr_scheduler as sched

    return sorted(
        n
        for n, c in vars(sched).items()
        if isinstance(c, type) and issubclass(c, sched.LRScheduler) and n not in ("LRScheduler", "_LRScheduler")
        and n not in UNSUPPORTED_SCHEDULERS
    )


def resolve_scheduler(
    phase_name: str, phase: Phase, length: int, spe: int, lrs: dict[str, float]
) -> dict[str, Any] | None:
    """Type and arguments with durations in steps; `lr` expressions stay per group (lists)."""
    if phase.scheduler is None:
        return None
    key = f"phases.{phase_name}.scheduler"
    stype = phase.scheduler.type
    valid_types = scheduler_names()
    if stype not in valid_types:
        why = " (it needs a function or a metric, which a recipe cannot give)" if stype in UNSUPPORTED_SCHEDULERS else ""
        raise RecipeError(
            f"unknown scheduler {stype!r}{why}",
            key=f"{key}.type",
            suggestion=did_you_mean(stype, valid_types) or f"torch.optim.lr_scheduler has: {', '.join(valid_types)}",
        )
    from ftcompile.apply import scheduler_class

    valid = _signature_args(scheduler_class(stype), ("optimizer", "last_epoch", "verbose"))
    args: dict[str, Any] = {}
    for name, raw in phase.scheduler.kwargs.items():
        if name not in valid:
            raise RecipeError(
                f"{stype} has no argument {name!r}",
                key=f"{key}.{name}",
                suggestion=_with_valid(did_you_mean(name, valid), ", ".join(valid)),
            )
        if stype == "OneCycleLR" and name in ("epochs", "steps_per_epoch"):
            raise RecipeError(
                "the phase's length sets OneCycleLR's total_steps",
                key=f"{key}.{name}",
                suggestion="remove it; the cycle spans the phase (or set total_steps)",
            )
        try:
            args[name] = _scheduler_value(raw, spe, lrs)
        except ValueError as exc:
            raise RecipeError(str(exc), key=f"{key}.{name}") from None
    length_arg = LENGTH_ARGS.get(stype)
    if length_arg and length_arg not in args:
        args[length_arg] = length
    if stype in MAX_LR_DEFAULT and "max_lr" not in args:
        args["max_lr"] = dict(lrs)
    missing = [n for n, p in valid.items() if p.default is inspect.Parameter.empty and n not in args]
    if missing:
        raise RecipeError(
            f"{stype} needs {', '.join(missing)}",
            key=f"{key}.{missing[0]}",
            suggestion=f"add {missing[0]} = ... to the scheduler table" + (' (e.g. "lr / 10")' if "lr" in missing[0] else ""),
        )
    return {"type": stype, "args": args}


def _scheduler_value(raw: Any, spe: int, lrs: dict[str, float]) -> Any:
    """Durations -> steps; expressions over `lr` -> {group: value} (one per group)."""
    if isinstance(raw, dict):
        raise ValueError("a table is not a scheduler argument; per-group values come from expressions over `lr`")
    if not _finite(raw):
        raise ValueError(f"must be finite (got {raw!r})")
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    from ftcompile.schema import DURATION

    if DURATION.match(text):
        return parse_duration(text, spe)
    if re.match(r"^\d+(\.\d+)?\s+[A-Za-z]+$", text):
        raise ValueError(f'{raw!r} is not a duration; write "N epoch(s)" or "N step(s)"')
    tree = parse_expr(text)
    unknown = [n for n in names_in(tree) if n != "lr"]
    if unknown:
        # A plain string argument, e.g. CyclicLR mode = "triangular2".
        if isinstance(tree, ast.Name) and tree.id == text:
            return raw
        raise ValueError(f"{raw!r}: only `lr` (the group's own LR) may appear in a scheduler expression")
    if "lr" not in names_in(tree):
        return evaluate(tree, {})
    return {g: evaluate(tree, {"lr": lr}) for g, lr in lrs.items()}


# ---------------------------------------------------------------- the whole recipe


def resolve(
    recipe: Recipe, folder: Path, dataset_size: int | None = None, val_size: int | None = None, chain: tuple[Path, ...] = ()
) -> Resolved:
    from ftcompile import arch as archs
    from ftcompile import datasets
    from ftcompile.graph import phase_order

    m = recipe.model
    archs.check_arch(m.arch)
    weights = resolve_weights(m.arch, m.weights, folder, chain)
    data = recipe.data.model_dump()
    datasets.validate_augment(data["augment"])
    counts = _counts(data, folder, dataset_size, val_size, m.num_classes)
    class_names = list(counts.class_names)
    num_classes = len(class_names) if m.num_classes == "auto" else m.num_classes
    if num_classes < len(class_names):
        raise RecipeError(
            f"num_classes = {num_classes} but the data has {len(class_names)} classes",
            key="model.num_classes",
            suggestion=f'set num_classes = {len(class_names)} or "auto"',
        )
    if num_classes < 2:
        raise RecipeError("a classifier needs at least 2 classes", key="model.num_classes", suggestion="add class folders")
    head = m.head.model_dump() if m.head else None
    try:
        model = archs.build_model(m.arch, num_classes, head, device="meta")
    except (RuntimeError, ValueError, OverflowError) as exc:  # e.g. a Linear too large to exist
        raise RecipeError(
            f"torchvision cannot build {m.arch} with {num_classes} classes and this head: {exc}",
            key="model.head" if head else "model.num_classes",
            suggestion="check model.num_classes and the widths in model.head",
        ) from None
    opt = recipe.optimizer
    check_optimizer(opt.type, opt.kwargs)
    params = param_infos(model, opt.no_decay)
    modules = [n for n, _ in model.named_modules() if n]
    groups_spec = recipe.groups or {"head": ["head"], "backbone": ["backbone"]}
    groups = resolve_groups(groups_spec, params, archs.aliases(m.arch, model), modules)
    group_names = [g.name for g in groups]
    owner = {p: g.name for g in groups for p in g.params}
    below_head = _below_head(model, archs.aliases(m.arch, model)["head"], groups)

    bs = data["batch_size"]
    spe = (counts.train_size // bs) if data["drop_last"] else math.ceil(counts.train_size / bs)
    if spe < 1:
        raise RecipeError(
            f"{counts.train_size} training images give no full batch of {bs}",
            key="data.batch_size",
            suggestion="lower batch_size or set drop_last = false",
        )
    after = {name: list(p.after) for name, p in recipe.phases.items()}
    order = phase_order(after)
    phases = []
    step = 0
    for name in order:
        phase = recipe.phases[name]
        for i, g in enumerate(phase.train):
            if g not in group_names:
                raise RecipeError(
                    f"unknown group {g!r}",
                    key=f"phases.{name}.train[{i}]",
                    suggestion=did_you_mean(g, group_names) or f"groups are: {', '.join(group_names)}",
                )
        for field in ("weight_decay", "momentum"):
            for g in getattr(phase, field):
                if g not in group_names:
                    raise RecipeError(
                        f"unknown group {g!r}", key=f"phases.{name}.{field}.{g}", suggestion=did_you_mean(g, group_names)
                    )
        length = round(phase.epochs * spe) if phase.epochs is not None else phase.steps
        length = max(1, int(length))
        if step + length > MAX_STEPS:
            raise RecipeError(
                f"the run would be {step + length} optimizer steps long, more than {MAX_STEPS}",
                key=f"phases.{name}.{'epochs' if phase.epochs is not None else 'steps'}",
                suggestion=f"one epoch is {spe} steps; check the phase's length",
            )
        lrs = resolve_lrs(name, phase)
        sched = resolve_scheduler(name, phase, length, spe, lrs)
        phases.append(
            ResolvedPhase(
                name=name,
                after=tuple(phase.after),
                begin=step,
                end=step + length,
                epochs=phase.epochs if phase.epochs is not None else length / spe,
                train=tuple(phase.train),
                lr=lrs,
                weight_decay=dict(phase.weight_decay),
                momentum=dict(phase.momentum),
                bn=phase.bn,
                optimizer_state=phase.optimizer_state,
                scheduler=sched,
                cache=cacheability(phase, below_head, data["augment"]),
            )
        )
        step += length
    run = recipe.run
    mean, std = normalisation(m.arch, weights)
    model_info = {
        "arch": m.arch,
        "weights": weights,
        "num_classes": num_classes,
        "head": head,
        "total_params": sum(p.numel for p in params),
    }
    data.update(
        train_size=counts.train_size,
        val_size=counts.val_size,
        class_names=class_names,
        class_counts=list(counts.class_counts),
        steps_per_epoch=spe,
        mean=list(mean),
        std=list(std),
    )
    return Resolved(
        model=model_info,
        data=data,
        optimizer={"type": opt.type, "kwargs": opt.kwargs, "no_decay": opt.no_decay},
        groups=groups,
        no_decay=frozenset(p.name for p in params if p.no_decay),
        numels={p.name: p.numel for p in params},
        phases=tuple(phases),
        total_steps=step,
        eval_every=parse_duration(run.eval_every, spe),
        checkpoint_every=parse_duration(run.checkpoint_every, spe),
        bn_groups={mod: owner[first] for mod, first in bn_modules(model) if first in owner},
    )


@dataclass(frozen=True)
class BelowHead:
    """What the feature cache needs to know about everything that feeds the head."""

    head_module: str | None  # the one module holding the head, or None
    head_only_groups: frozenset[str]  # groups whose parameters all sit in the head
    bn: bool  # BatchNorm layers below the head
    random: bool  # dropout / stochastic depth below the head


def _below_head(model: Any, head: list[str], groups: tuple[GroupInfo, ...]) -> BelowHead:
    inside = lambda name: any(_prefix_match(h, name) for h in head)  # noqa: E731
    below = [(n, m) for n, m in model.named_modules() if n and not inside(n)]
    random = any(type(m).__name__ in ("Dropout", "Dropout2d", "StochasticDepth") and getattr(m, "p", 0) > 0 for _, m in below)
    return BelowHead(
        head_module=head[0] if len(head) == 1 else None,
        head_only_groups=frozenset(g.name for g in groups if g.params and all(inside(p) for p in g.params)),
        bn=any("BatchNorm" in type(m).__name__ for _, m in below),
        random=random,
    )


def cacheability(phase: Phase, below: BelowHead, augment: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the frozen part's output can be computed once and reused for every epoch.

    Safe when only the head trains, BatchNorm below it keeps its statistics (bn = "frozen")
    and nothing below it or in the train transforms is random; `cache_features = true`
    accepts random augmentation / dropout applied once, `false` turns the cache off.
    """
    def no(why: str) -> dict[str, Any]:
        return {"on": False, "why": why, "module": below.head_module}

    if phase.cache_features is False:
        return no("cache_features = false")
    below_groups = [g for g in phase.train if g not in below.head_only_groups]
    if below_groups:
        return no(f"trains {', '.join(below_groups)} below the head")
    if below.head_module is None:
        return no("the head is not one module")
    if below.bn and phase.bn != "frozen":
        return no('BatchNorm below the head keeps learning statistics (set bn = "frozen")')
    if phase.cache_features is None:
        if augment:
            return no("train augmentation is random (cache_features = true applies it once)")
        if below.random:
            return no("dropout / stochastic depth below the head (cache_features = true accepts it)")
    return {"on": True, "why": "opted in" if phase.cache_features else "only the head trains", "module": below.head_module}


def _counts(
    data: dict[str, Any], folder: Path, train_size: int | None, val_size: int | None, num_classes: int | str
) -> Any:
    """Count the data, or take the sizes given on the command line (data not on this machine)."""
    from ftcompile import datasets

    if train_size is None:
        return datasets.count_data(data, folder)
    if data["classes"]:
        names = tuple(sorted(data["classes"]))
    elif data["builtin"] == "digits":
        names = tuple(str(i) for i in range(10))
    elif isinstance(num_classes, int):
        names = tuple(str(i) for i in range(num_classes))
    else:
        raise RecipeError(
            'num_classes = "auto" counts class folders, which --dataset-size skips',
            key="model.num_classes",
            suggestion="set model.num_classes to a number, or list data.classes",
        )
    return datasets.DataCounts(train_size, val_size or 0, names, tuple([0] * len(names)))
