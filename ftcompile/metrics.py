"""The evaluation metrics a recipe can name, in one table: what `stop_early`, `restore_best`,
`keep_best` (and trials' `select`) compare.

A user writes `val_top1`; the runtime's eval records (metrics.jsonl) store it as `top1`.
Adding a metric (e.g. the EMA model's `val_top1_ema`) is one row here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ftcompile.errors import RecipeError, did_you_mean


@dataclass(frozen=True)
class Metric:
    name: str  # what a recipe writes
    key: str  # the key in an eval record
    maximise: bool  # higher is better
    min_classes: int = 1  # top-5 is reported only with more than 5 classes
    ema: bool = False  # the EMA weights' metric: needs [run] ema


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("val_loss", "val_loss", maximise=False),
        Metric("val_top1", "top1", maximise=True),
        Metric("val_top5", "top5", maximise=True, min_classes=6),
        Metric("val_loss_ema", "val_loss_ema", maximise=False, ema=True),
        Metric("val_top1_ema", "top1_ema", maximise=True, ema=True),
        Metric("val_top5_ema", "top5_ema", maximise=True, min_classes=6, ema=True),
    )
}


def metric(name: str) -> Metric:
    """The metric a recipe names; an unknown name is a ValueError (pydantic reports it with its key)."""
    if name not in METRICS:
        hint = did_you_mean(name, list(METRICS))
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}" + (f" ({hint})" if hint else ""))
    return METRICS[name]


def check_available(name: str, num_classes: int, key: str, ema: bool = False) -> None:
    """A metric the evaluation will not report for this model is a compile error."""
    m = metric(name)
    if num_classes < m.min_classes:
        raise RecipeError(
            f"{name} needs at least {m.min_classes} classes; the model has {num_classes}",
            key=key,
            suggestion="use val_top1 or val_loss",
        )
    if m.ema and not ema:
        raise RecipeError(
            f"{name} is the EMA weights' metric, and this recipe keeps no EMA",
            key=key,
            suggestion="add [run] ema = { decay = 0.999 }, or use the metric without _ema",
        )


def value(record: dict[str, Any], name: str) -> float:
    """The metric's value in an eval record (nan when it is missing)."""
    return float(record.get(METRICS[name].key, math.nan))


def improves(new: float, best: float | None, name: str, min_delta: float = 0.0) -> bool:
    """Whether `new` beats `best` by more than `min_delta`; a non-finite value never does,
    and the first finite value always does."""
    if not math.isfinite(new):
        return False
    if best is None or not math.isfinite(best):
        return True
    return new - min_delta > best if METRICS[name].maximise else new + min_delta < best
