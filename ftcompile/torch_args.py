"""What torch classes mean, in one place: the compiler's checks and the runtime read it alike.

Two tables (which optimizer calls its momentum what; which scheduler arguments measure a
phase's length) and the checks of recipe arguments against the torch class signatures.
torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import math
import re
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.lr_expr import evaluate, names_in, parse_expr
from ftcompile.schema import DURATION, Phase, parse_duration

# Where each torch.optim class keeps its momentum: a `momentum` argument, the first of its
# `betas` (the Adam family), or nowhere (None: per-phase `momentum` overrides are an error).
# A class missing here (a newer torch) is looked up in its signature the same way.
MOMENTUM_FIELD: dict[str, str | None] = {
    "SGD": "momentum",
    "RMSprop": "momentum",
    "Muon": "momentum",
    "Adam": "betas",
    "AdamW": "betas",
    "Adamax": "betas",
    "NAdam": "betas",
    "RAdam": "betas",
    "SparseAdam": "betas",
    "ASGD": None,
    "Adadelta": None,
    "Adafactor": None,
    "Adagrad": None,
    "LBFGS": None,
    "Rprop": None,
}
# Scheduler arguments that measure the phase; they default to its length in steps.
LENGTH_ARGS = {
    "OneCycleLR": "total_steps",
    "CosineAnnealingLR": "T_max",
    "LinearLR": "total_iters",
    "ConstantLR": "total_iters",
    "PolynomialLR": "total_iters",
}
MAX_LR_DEFAULT = ("OneCycleLR", "CyclicLR")
# State tensors of a parameter's size that each torch.optim class keeps for every parameter
# that has trained (the memory estimate of `ftcompile plan`), and the arguments that add one
# when true or non-zero. A class missing here (a newer torch) is assumed to keep two, as Adam.
STATE_TENSORS: dict[str, tuple[int, dict[str, int]]] = {
    "SGD": (0, {"momentum": 1}),  # momentum_buffer
    "Adam": (2, {"amsgrad": 1}),  # exp_avg, exp_avg_sq (+ max_exp_avg_sq)
    "AdamW": (2, {"amsgrad": 1}),
    "NAdam": (2, {}),
    "RAdam": (2, {}),
    "Adamax": (2, {}),  # exp_avg, exp_inf
    "SparseAdam": (2, {}),
    "Adagrad": (1, {}),  # sum
    "Adadelta": (2, {}),  # square_avg, acc_delta
    "RMSprop": (1, {"momentum": 1, "centered": 1}),  # square_avg (+ momentum_buffer, grad_avg)
    "Rprop": (2, {}),  # prev, step_size
    "ASGD": (1, {}),  # ax
    "Adafactor": (0, {}),  # factored: a row and a column per matrix, negligible
    "LBFGS": (2, {}),  # d, prev_flat_grad; plus 2 x history_size copies (state_tensors)
    "Muon": (1, {}),  # momentum_buffer
}
# Need a callable or a metric, which a TOML recipe cannot give.
UNSUPPORTED_SCHEDULERS = {"LambdaLR", "MultiplicativeLR", "ReduceLROnPlateau", "SequentialLR", "ChainedScheduler"}


def optimizer_class(name: str) -> Any:
    return getattr(importlib.import_module("torch.optim"), name)


def scheduler_class(name: str) -> Any:
    return getattr(importlib.import_module("torch.optim.lr_scheduler"), name)


def momentum_field(opt_type: str) -> str | None:
    """ "momentum", "betas" (momentum is betas[0]) or None, from the table or the signature."""
    if opt_type in MOMENTUM_FIELD:
        return MOMENTUM_FIELD[opt_type]
    params = _init_params(optimizer_class(opt_type))
    return "momentum" if "momentum" in params else "betas" if "betas" in params else None


def base_value(opt_type: str, kwargs: dict[str, Any], name: str) -> float | None:
    """The optimizer's value of `name` (lr, weight_decay, momentum) before any phase sets it:
    the recipe's argument, else the class default; momentum reads betas[0] where that is it."""
    key = momentum_field(opt_type) if name == "momentum" else name
    if key is None:
        return None
    if key in kwargs:
        value = kwargs[key]
    else:
        params = _init_params(optimizer_class(opt_type))
        if key not in params:
            return None
        value = params[key].default
    if key == "betas" and name == "momentum":
        value = value[0]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def state_tensors(opt_type: str, kwargs: dict[str, Any]) -> int:
    """Parameter-sized state tensors the optimizer keeps per trained parameter (table above)."""
    base, extra = STATE_TENSORS.get(opt_type, (2, {}))
    params = _init_params(optimizer_class(opt_type))

    def given(arg: str) -> Any:
        return kwargs[arg] if arg in kwargs else (params[arg].default if arg in params else None)

    count = base + sum(n for arg, n in extra.items() if given(arg))
    if opt_type == "LBFGS":
        count += 2 * int(given("history_size") or 100)
    return count


def dummy_optimizer(opt_type: str, kwargs: dict[str, Any], n_groups: int) -> Any:
    """An optimizer of the recipe's class over one scalar per param group, for tracing."""
    import torch

    groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(n_groups)]
    with _eager_add_param_group():
        return optimizer_class(opt_type)(groups, **kwargs)


@contextlib.contextmanager
def _eager_add_param_group() -> Iterator[None]:
    """Build an optimizer without importing torch._dynamo.

    `Optimizer.add_param_group` is wrapped by torch so that torch.compile never traces it;
    the wrapper imports torch._dynamo on its first call, which takes as long as importing
    torch itself, a third of a whole `ftcompile plan`. Outside torch.compile the wrapper
    only calls the function, so the compiler's dummy optimizers call it directly (for the
    time of their construction; the runtime's real optimizer is built as torch builds it).
    """
    from torch.optim import Optimizer

    wrapped = Optimizer.__dict__["add_param_group"]
    Optimizer.add_param_group = inspect.unwrap(wrapped)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Optimizer.add_param_group = wrapped  # type: ignore[method-assign]


def with_valid(hint: str | None, valid: str) -> str:
    """'did you mean X? valid: ...', or just 'valid: ...' when nothing is close."""
    return f"{hint} valid: {valid}" if hint else f"valid: {valid}"


@cache
def _init_params(cls: type) -> Any:
    """inspect.signature is slow and asked once per phase; a torch class's signature is fixed."""
    return inspect.signature(cls.__init__).parameters


def _signature_args(cls: type, skip: Sequence[str]) -> dict[str, inspect.Parameter]:
    params = _init_params(cls)
    return {
        n: p for n, p in params.items() if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def check_optimizer(opt_type: str, kwargs: dict[str, Any]) -> None:
    import torch.optim

    classes = sorted(
        n
        for n, c in vars(torch.optim).items()
        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer"
    )
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
                suggestion=with_valid(did_you_mean(name, valid), ", ".join(valid)),
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise RecipeError(f"must be >= 0 (got {value!r})", key=f"optimizer.{name}")
        if not _finite(value):
            raise RecipeError(f"must be finite (got {value!r})", key=f"optimizer.{name}", suggestion="write a number")
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
        if isinstance(c, type)
        and issubclass(c, sched.LRScheduler)
        and n not in ("LRScheduler", "_LRScheduler")
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
        why = (
            " (it needs a function or a metric, which a recipe cannot give)" if stype in UNSUPPORTED_SCHEDULERS else ""
        )
        raise RecipeError(
            f"unknown scheduler {stype!r}{why}",
            key=f"{key}.type",
            suggestion=did_you_mean(stype, valid_types) or f"torch.optim.lr_scheduler has: {', '.join(valid_types)}",
        )
    valid = _signature_args(scheduler_class(stype), ("optimizer", "last_epoch", "verbose"))
    args: dict[str, Any] = {}
    for name, raw in phase.scheduler.kwargs.items():
        if name not in valid:
            raise RecipeError(
                f"{stype} has no argument {name!r}",
                key=f"{key}.{name}",
                suggestion=with_valid(did_you_mean(name, valid), ", ".join(valid)),
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
            suggestion=f"add {missing[0]} = ... to the scheduler table"
            + (' (e.g. "lr / 10")' if "lr" in missing[0] else ""),
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
