"""LR expressions of a phase: numbers, expressions over other groups, layer-wise decay.

`"head / 10"` is parsed with Python's own parser and evaluated by walking the tree with a
whitelist of arithmetic operators, so no recipe text is ever executed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.schema import Phase

_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


# Bounds on an expression, checked before Python's parser (which recurses) ever sees it:
# a real one is a group name, an operator and a number or two.
MAX_EXPR_CHARS = 200
MAX_EXPR_DEPTH = 16


def parse_expr(text: str) -> ast.expr:
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError(
            f'an expression of {len(text)} characters is too long (at most {MAX_EXPR_CHARS}); write e.g. "head / 10"'
        )
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):
        raise ValueError(f'cannot parse {text!r}; write e.g. "head / 10" or "layer4 * 0.1"') from None
    if _depth(tree) > MAX_EXPR_DEPTH:
        raise ValueError(f'{text!r} nests more than {MAX_EXPR_DEPTH} operations deep; write e.g. "head / 10"')
    for node in ast.walk(tree):
        if not isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Load, *_OPS)):
            raise ValueError(f"{text!r}: only numbers, group names and + - * / ** are allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ValueError(f"{text!r}: only numbers, group names and + - * / ** are allowed")
    return tree


def _depth(tree: ast.AST) -> int:
    """How many operations deep a tree nests (`head / 10` is 2), without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(child, depth + 1) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)]
    return deepest


def names_in(tree: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]


def evaluate(tree: ast.expr, env: dict[str, float]) -> float:
    """The value of an expression; every step must stay a finite real number, so an overflow
    (`10 ** 10 ** 10`, `1e308 * 10`), a division by zero or a complex power (`(0 - 1) ** 0.5`)
    is a ValueError naming the part of the expression where it happens."""
    if isinstance(tree, ast.Constant):
        try:
            return _real(float(tree.value), tree)  # type: ignore[arg-type]  # a str or bytes constant fails here
        except OverflowError:  # an integer literal beyond a float
            raise ValueError(_too_large(tree)) from None
    if isinstance(tree, ast.Name):
        return env[tree.id]
    if isinstance(tree, ast.UnaryOp):
        return _real(_OPS[type(tree.op)](evaluate(tree.operand, env)), tree)
    if isinstance(tree, ast.BinOp):
        left, right = evaluate(tree.left, env), evaluate(tree.right, env)
        try:
            return _real(_OPS[type(tree.op)](left, right), tree)
        except ZeroDivisionError:
            raise ValueError(f"{ast.unparse(tree)!r}: division by zero") from None
        except OverflowError:  # float ** float raises where float * float gives inf
            raise ValueError(_too_large(tree)) from None
    raise ValueError("unsupported expression")


def _too_large(tree: ast.expr) -> str:
    return f"{ast.unparse(tree)!r} is too large for a number (beyond about 1.8e308)"


def _real(value: complex, tree: ast.expr) -> float:  # a float, or the complex a fractional power can give
    if isinstance(value, complex):
        raise ValueError(f"{ast.unparse(tree)!r} is not a real number (a negative number to a fractional power)")
    if not math.isfinite(value):
        raise ValueError(_too_large(tree))
    return value


def resolve_lrs(phase_name: str, phase: Phase) -> dict[str, float]:
    """Numbers, expressions over the phase's other groups, and layer-wise decay -> numbers.

    Decay rule: walking `train` from its last group toward its first, a group without an
    explicit LR gets the LR of the group after it times `lr_decay`.
    """
    key = f"phases.{phase_name}.lr"
    train = list(phase.train)
    given: dict[str, float | str] = (
        {g: phase.lr for g in train} if isinstance(phase.lr, (int, float, str)) else dict(phase.lr)
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
            cycle = " -> ".join([*visiting[visiting.index(g) :], g])
            raise RecipeError(
                f"circular LR reference: {cycle}", key=f"{key}.{g}", suggestion="give one of them a number"
            )
        visiting.append(g)
        if g in trees:
            env = {ref: value(ref) for ref in names_in(trees[g])}
            try:
                lrs[g] = evaluate(trees[g], env)
            except ValueError as exc:
                raise RecipeError(str(exc), key=f"{key}.{g}") from None
        elif g in given:
            lrs[g] = float(given[g])
        elif phase.lr_decay is not None and train.index(g) < len(train) - 1:
            lrs[g] = value(train[train.index(g) + 1]) * phase.lr_decay
        else:
            raise RecipeError(
                f"group {g!r} is trained but has no LR",
                key=f"{key}.{g}",
                suggestion=f'add {g} = 1e-3 (or an expression like "{train[-1]} / 10") to phases.{phase_name}.lr'
                + ("" if phase.lr_decay else ", or set lr_decay"),
            )
        visiting.pop()
        if not (lrs[g] > 0 and math.isfinite(lrs[g])):
            raise RecipeError(
                f"LR of {g!r} resolves to {lrs[g]!r}; it must be > 0 and finite",
                key=f"{key}.{g}",
                suggestion='LRs are small positive numbers, e.g. 1e-3 or "head / 10"',
            )
        return lrs[g]

    return {g: value(g) for g in train}
