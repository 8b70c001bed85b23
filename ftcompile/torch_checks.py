"""A recipe's optimizer and scheduler arguments, checked against the torch classes.

The compiler's half of what torch classes mean: torch_args.py holds the tables and the class
lookups (read by the runtime too); this module reads the recipe (schema.Phase, durations,
`lr` expressions) and says, with the recipe key, what torch would reject.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from typing import Any

import torch.optim
import torch.optim.lr_scheduler as sched

from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.lr_expr import evaluate, names_in, parse_expr
from ftcompile.schema import DURATION, Phase, parse_duration
from ftcompile.torch_args import (
    LENGTH_ARGS,
    MAX_LR_DEFAULT,
    UNSUPPORTED_SCHEDULERS,
    dummy_optimizer,
    scheduler_class,
    signature_args,
)


def with_valid(hint: str | None, valid: str) -> str:
    """'did you mean X? valid: ...', or just 'valid: ...' when nothing is close."""
    return f"{hint} valid: {valid}" if hint else f"valid: {valid}"


def check_optimizer(opt_type: str, kwargs: dict[str, Any]) -> None:
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
    valid = signature_args(getattr(torch.optim, opt_type), ("params",))
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
    valid = signature_args(scheduler_class(stype), ("optimizer", "last_epoch", "verbose"))
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
