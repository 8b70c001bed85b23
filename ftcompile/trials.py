"""Stage 4a: trials — the alternatives of a phase, each validated as a phase of its own.

`[phases.<name>.trials]` maps dotted paths to fields of the phase (`"lr.layer4"`,
`"train"`, `"scheduler.T_max"` ...) to lists of values. Each combination (grid) or each
position (zip) is an alternative: the phase's own table with those values put in, checked by
the same pydantic model as the phase, so a bad value gets the phase's own message. The
resolver then resolves every alternative exactly like a phase (`resolve_phase`).

Why the length may not change: every alternative covers the same step window, so every later
phase keeps its window and the plan stays static.
"""

from __future__ import annotations

import ast
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from ftcompile.errors import RecipeError, RecipeErrors, did_you_mean, loc_to_key
from ftcompile.lr_expr import parse_expr
from ftcompile.metrics import check_available
from ftcompile.plan import Prune
from ftcompile.schema import Phase, _hint

# Trial key -> how many dotted parts it may have (1: the field; 2: field.<group or argument>).
FIELDS = {
    "lr": 2,
    "lr_decay": 1,
    "weight_decay": 2,
    "momentum": 2,
    "scheduler": 2,
    "train": 1,
    "bn": 1,
    "optimizer_state": 1,
}
# Per-group tables: with alternatives over `train`, each alternative keeps its own groups' entries.
PER_GROUP = ("lr", "weight_decay", "momentum")
MAX_ALTERNATIVES = 256  # a grid larger than this is a typo, and would train for days


@dataclass(frozen=True)
class Alternative:
    k: int
    label: str  # stable and readable: `layer4=head / 10, train=head+layer4`
    values: dict[str, Any]  # trial key -> this alternative's value
    phase: Phase  # the phase with those values, validated; no trials of its own


def alternatives(name: str, phase: Phase, num_classes: int, ema: bool = False) -> list[Alternative]:
    """The alternatives of a phase with a `trials` table, in order (the first wins ties)."""
    trials = phase.trials
    assert trials is not None
    where = f"phases.{name}.trials"
    keys = trials.keys
    errors = [err for key, values in keys.items() if (err := _check_key(where, phase, key, values))]
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    if not keys:
        raise RecipeError(
            "a trials table needs at least one key with a list of values",
            key=where,
            suggestion='e.g. "lr.head" = [1e-3, 3e-3]',
        )
    check_available(trials.select, num_classes, f"{where}.select", ema)
    combos = _combinations(where, keys, trials.mode)
    base = phase.model_dump(exclude={"trials"})
    out = []
    for k, combo in enumerate(combos):
        values = dict(zip(keys, combo, strict=False))
        label = ", ".join(f"{_short_key(key)}={_label(v)}" for key, v in values.items())
        out.append(Alternative(k, label, values, _validated(where, name, base, values, keys, label)))
    if "train" in keys:
        _check_group_tables(name, phase, [a.phase for a in out])
    _check_distinct(where, keys, combos, trials.mode)
    return out


def prune_plan(name: str, phase: Phase, begin: int, end: int, n: int) -> Prune | None:
    """The rungs of `trials.prune` in steps, and how many alternatives go on at each.

    A rung point `at[i]` (a fraction of the window of `end - begin` steps) is the step
    `begin + round(at[i] x window)`, halves rounding up, computed on the decimal the recipe
    wrote (0.29 x 100 is 29, not 28.999...). It must lie strictly inside the window and after
    the rung before. At each rung max(1, floor(n x keep)) of the n alternatives running go on
    (successive halving's floor: 4 -> 2 -> 1 with keep = 0.5; 3 -> 1); a rung that a single
    alternative reaches would prune nothing. `stop_early` and `restore_best` end or rewind an
    alternative by its own evaluations, so they do not go with `prune` (see schema.Prune).
    """
    spec = phase.trials.prune if phase.trials else None
    if spec is None:
        return None
    where = f"phases.{name}.trials.prune"
    for field in ("stop_early", "restore_best"):
        if getattr(phase, field):
            raise RecipeError(
                f"prune and {field} do not go together: prune ranks the alternatives on their rung evaluations, "
                f"{field} {'ends an alternative by its own' if field == 'stop_early' else 'rewinds an alternative to its best'}",
                key=where,
                suggestion=f"remove {field} from phases.{name}, or remove prune",
            )
    window = end - begin
    keep = Fraction(str(spec.keep))
    steps: list[int] = []
    kept: list[int] = []
    running = n
    for i, share in enumerate(spec.at):
        exact = Fraction(str(share)) * window
        offset = math.floor(exact + Fraction(1, 2))
        at = f"{where}.at[{i}]"
        arithmetic = f"{share!r} x {window} steps = {float(exact):g}, step {offset} of the window"
        if offset <= 0 or offset >= window:
            raise RecipeError(
                f"rung point {share!r} does not land inside the phase's window ({arithmetic}): "
                + ("no step has run there" if offset <= 0 else "the window's end, where every survivor is judged"),
                key=at,
                suggestion=f"a rung point between {1 / window:.3g} and {1 - 1 / window:.3g} for this {window}-step window",
            )
        if steps and begin + offset == steps[-1]:
            raise RecipeError(
                f"rung points {spec.at[i - 1]!r} and {share!r} land on the same step {begin + offset} ({arithmetic})",
                key=at,
                suggestion=f"rung points at least {1 / window:.3g} apart (one step of this {window}-step window)",
            )
        if running == 1:
            raise RecipeError(
                f"one alternative is left after the rung at step {steps[-1]}: rung point {share!r} would prune nothing",
                key=at,
                suggestion="remove this rung point, or keep a larger share at each rung",
            )
        steps.append(begin + offset)
        running = max(1, math.floor(running * keep))
        kept.append(running)
    return Prune(at=tuple(steps), keep=tuple(kept))


def _check_key(where: str, phase: Phase, key: str, values: Any) -> RecipeError | None:
    parts = key.split(".")
    field = parts[0]
    if field in ("epochs", "steps"):
        return RecipeError(
            "a trial may not change the phase's length: every alternative runs the same window",
            key=f"{where}.{key}",
            suggestion="make a phase of each length, or trial the LR or the scheduler",
        )
    if field not in FIELDS or len(parts) > FIELDS[field]:
        valid = [f"{f}.<group>" if FIELDS[f] == 2 and f != "scheduler" else f for f in FIELDS] + ["scheduler.<arg>"]
        return RecipeError(
            f"{key!r} is not a trial key",
            key=f"{where}.{key}",
            suggestion=did_you_mean(field, list(FIELDS)) or f"trial keys: {', '.join(valid)}",
        )
    if field == "scheduler" and len(parts) == 2 and phase.scheduler is None:
        return RecipeError(
            f"{key!r} trials a scheduler argument, but the phase has no scheduler",
            key=f"{where}.{key}",
            suggestion="give the phase a scheduler, or trial whole tables: scheduler = [{ type = ... }, ...]",
        )
    if not isinstance(values, list) or len(values) < 2:
        return RecipeError(
            f"give a list of at least 2 values (got {values!r})",
            key=f"{where}.{key}",
            suggestion=f'e.g. "{key}" = [a, b]: one alternative per value',
        )
    return None


def _combinations(where: str, keys: dict[str, list[Any]], mode: str) -> list[tuple[Any, ...]]:
    lists = list(keys.values())
    if mode == "zip":
        lengths = {len(v) for v in lists}
        if len(lengths) > 1:
            raise RecipeError(
                f'mode = "zip" pairs the lists element-wise, but their lengths differ: '
                f"{', '.join(f'{k} {len(v)}' for k, v in keys.items())}",
                key=f"{where}.mode",
                suggestion='give every list the same length, or use the grid (mode = "grid")',
            )
        return list(zip(*lists, strict=False))
    combos = list(itertools.product(*lists))
    if len(combos) > MAX_ALTERNATIVES:
        raise RecipeError(
            f"the grid has {len(combos)} alternatives, more than {MAX_ALTERNATIVES}",
            key=where,
            suggestion='fewer values, or mode = "zip" to pair them',
        )
    return combos


def _check_distinct(where: str, keys: dict[str, list[Any]], combos: list[tuple[Any, ...]], mode: str) -> None:
    """Two alternatives with the same values run the same training twice, for twice the cost:
    refused, naming the key and the value. Values are compared as the compiler reads them
    (`_same`): 1e-3 and 0.001, 1 and 1.0, "head/10" and "head / 10.0" are one value."""
    if mode == "grid":  # a value twice in one list: every combination with it runs twice
        for key, values in keys.items():
            first: dict[Any, int] = {}
            for i, value in enumerate(values):
                j = first.setdefault(_same(value), i)
                if j != i:
                    same = "" if values[j] == value else f" ({values[j]!r})"
                    raise RecipeError(
                        f"{value!r} is the same value as [{j}]{same}: every alternative with it would run twice",
                        key=f"{where}.{key}[{i}]",
                        suggestion="remove one of them (values are compared as numbers and expressions: "
                        '1e-3 is 0.001, "head/10" is "head / 10")',
                    )
    first_combo: dict[tuple[Any, ...], int] = {}
    for k, combo in enumerate(combos):
        j = first_combo.setdefault(tuple(_same(v) for v in combo), k)
        if j != k:
            pairs = ", ".join(f"{key} = {v!r}" for key, v in zip(keys, combo, strict=False))
            raise RecipeError(
                f"alternatives {j} and {k} are the same combination ({pairs}): it would run twice",
                key=where,
                suggestion='remove one position from every list (mode = "zip" pairs the lists element-wise)',
            )


def _same(value: Any) -> Any:
    """A hashable form of a trial value in which values the compiler reads alike are equal."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, str):
        try:
            return _expr_form(parse_expr(value))
        except ValueError:
            return ("text", value.strip())
    if isinstance(value, list):
        return ("list", tuple(_same(v) for v in value))
    if isinstance(value, dict):
        return ("table", tuple(sorted((str(k), _same(v)) for k, v in value.items())))
    return ("other", repr(value))


def _expr_form(tree: ast.expr) -> Any:
    """An expression's tree with every number a float and no formatting (depth is bounded by parse_expr)."""
    if isinstance(tree, ast.Constant):
        return ("number", float(tree.value))  # type: ignore[arg-type]  # a str or bytes constant fails here
    if isinstance(tree, ast.Name):
        return ("name", tree.id)
    if isinstance(tree, ast.UnaryOp):
        return (type(tree.op).__name__, _expr_form(tree.operand))
    if isinstance(tree, ast.BinOp):
        return (type(tree.op).__name__, _expr_form(tree.left), _expr_form(tree.right))
    return ("expr", ast.dump(tree))


def check_distinct_resolved(name: str, resolved: list[tuple[Alternative, Any]]) -> None:
    """Alternatives written differently that resolve to the same phase (`"head / 10"` and 0.001
    when head is 0.01; T_max = "1 epoch" and its number of steps) train the same thing twice."""
    for j, (b, phase_b) in enumerate(resolved):
        for a, phase_a in resolved[:j]:
            if phase_a == phase_b:
                raise RecipeError(
                    f"alternatives {a.k} ({a.label}) and {b.k} ({b.label}) resolve to the same phase "
                    "(the same groups, LRs, schedule and settings): it would run twice",
                    key=f"phases.{name}.trials",
                    suggestion="remove one of them, or make them differ",
                )


def _validated(
    where: str, name: str, base: dict[str, Any], values: dict[str, Any], keys: dict[str, Any], label: str
) -> Phase:
    """The phase with this alternative's values, checked by the phase's own model."""
    data = {**base, "lr": _table(base["lr"], base["train"]), "trials": None}
    for key, value in values.items():
        field, _, sub = key.partition(".")
        if not sub:
            data[field] = value
        elif field == "lr":
            data["lr"] = {**data["lr"], sub: value}
        else:
            data[field] = {**(data[field] or {}), sub: value}
    if "train" in values:
        train = data["train"] if isinstance(data["train"], list) else []
        for field in PER_GROUP:  # each alternative uses the entries of the groups it trains
            if isinstance(data[field], dict):
                data[field] = {g: v for g, v in data[field].items() if g in train}
    try:
        return Phase.model_validate(data)
    except ValidationError as exc:
        found = [(loc_to_key(tuple(e["loc"])), e) for e in exc.errors(include_url=False)]
        # A union (number or expression; scalar or table) fails once per member: keep the
        # errors at the trial key's own path, the first one per key.
        own = [(path, e) for path, e in found if any(_touches(k, path) for k in values)] or found
        errors: dict[str, RecipeError] = {}
        for path, err in own:
            trial_key = next((k for k in values if _touches(k, path)), None)
            at = (
                f"{where}.{trial_key}[{list(keys[trial_key]).index(values[trial_key])}]"
                if trial_key
                else f"phases.{name}.{path}"
            )
            message = err["msg"].removeprefix("Value error, ") + f" (alternative {label})"
            errors.setdefault(at, RecipeError(message, key=at, suggestion=_hint(err["type"], err.get("ctx") or {})))
        found_errors = list(errors.values())
        raise (found_errors[0] if len(found_errors) == 1 else RecipeErrors(found_errors)) from None


def _table(lr: Any, train: list[str]) -> Any:
    """A single LR for every trained group as a table, so `lr.<group>` can replace one entry."""
    return {g: lr for g in train} if isinstance(lr, (int, float, str)) else dict(lr)


def _touches(key: str, path: str) -> bool:
    """Whether an error at `path` (dotted, from loc_to_key) is about trial key `key`."""
    return path == key or path.startswith(key + ".") or path.startswith(key + "[")


def _check_group_tables(name: str, phase: Phase, alts: list[Phase]) -> None:
    """With alternatives over `train`, a per-group entry must belong to a group some alternative trains."""
    trained = {g for alt in alts for g in alt.train}
    for field in PER_GROUP:
        table = getattr(phase, field)
        for g in table if isinstance(table, dict) else []:
            if g not in trained:
                raise RecipeError(
                    f"group {g!r} has a {field} entry but no alternative trains it",
                    key=f"phases.{name}.{field}.{g}",
                    suggestion=f"remove it, or add it to a train list (trained: {', '.join(sorted(trained))})",
                )


def _short_key(key: str) -> str:
    """`lr.layer4` reads as `layer4` (the LR is what one trials most); other keys stay whole."""
    return key.removeprefix("lr.")


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_label(v) for v in value)
    if isinstance(value, dict):
        return (
            str(value.get("type", ""))
            + "("
            + ", ".join(f"{k}={_label(v)}" for k, v in value.items() if k != "type")
            + ")"
        )
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
