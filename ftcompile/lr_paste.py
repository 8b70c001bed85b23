"""lr-find's paste-in line: the phase's `lr` table as the recipe writes it, every LR scaled.

This is the recipe side of `ftcompile lr-find`: the runtime's range test (runtime/lr_find.py)
knows the plan (numbers only); the line a user pastes into `[phases.NAME]` keeps the recipe's
expressions and `lr_decay`, so it is formatted here, from the recipe's own phase, and handed
to the runtime's report as text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ftcompile.load import load_overridden
from ftcompile.lr_expr import resolve_lrs
from ftcompile.schema import Phase, validate


def toml_number(x: float) -> str:
    text = f"{x:.2g}"
    return text if any(c in text for c in ".en") else text + ".0"  # 5 -> 5.0: a TOML float


def numbers(lrs: Mapping[str, float], mult: float) -> str:
    """`lr = { group = number, ... }`: every LR times `mult` (2 significant digits)."""
    return "lr = { " + ", ".join(f"{g} = {toml_number(v * mult)}" for g, v in lrs.items()) + " }"


def paste_lr(name: str, phase: Phase, mult: float) -> str:
    """The phase's `lr` table with every LR times `mult`: its numbers scaled (2 significant
    digits), its expressions and `lr_decay` kept, which scales every group when the
    expressions are ratios ("head / 3"). An expression that does not scale so ("head / 3 +
    1e-5") makes every trained group a number instead."""
    written = phase.lr
    planned = resolve_lrs(name, phase)
    if isinstance(written, (int, float)):
        return f"lr = {toml_number(written * mult)}"
    if isinstance(written, dict) and written:
        scaled = {g: v if isinstance(v, str) else v * mult for g, v in written.items()}
        got = resolve_lrs(name, phase.model_copy(update={"lr": scaled}))
        if all(math.isclose(got[g], planned[g] * mult, rel_tol=1e-9) for g in planned):  # the expressions scale
            return (
                "lr = { "
                + ", ".join(
                    f'{g} = "{v}"' if isinstance(v, str) else f"{g} = {toml_number(v)}" for g, v in scaled.items()
                )
                + " }"
            )
    return numbers({g: planned[g] for g in phase.train}, mult)


def written_phase(path: str | Path, overrides: Sequence[str], name: str) -> Phase | None:
    """The phase as the recipe writes it (its `lr` table with expressions); None for a
    compiled plan.json, which keeps only numbers."""
    if Path(path).suffix == ".json":
        return None
    return validate(load_overridden(path, tuple(overrides))).phases.get(name)


def paste_line(path: str | Path, overrides: Sequence[str], name: str, base: Mapping[str, float], mult: float) -> str:
    """The line to paste into `[phases.NAME]`: the written phase's `lr` table x `mult`, or,
    for a plan.json, every trained group as a number (`base`: the phase's planned LRs)."""
    written = written_phase(path, overrides, name)
    return paste_lr(name, written, mult) if written is not None else numbers(base, mult)
