"""The feature cache decision: can a phase train the head on features computed once?

The runtime (`runtime/features.py`) only computes and serves the tensors; whether that is
exact for a phase is decided here, at compile time, and `ftcompile plan` shows why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftcompile.groups import GroupInfo, prefix_match
from ftcompile.plan import FeatureCacheSpec, JSONObject
from ftcompile.schema import Phase


@dataclass(frozen=True)
class BelowHead:
    """What the feature cache needs to know about everything that feeds the head."""

    head_module: str | None  # the one module holding the head, or None
    head_only_groups: frozenset[str]  # groups whose parameters all sit in the head
    bn: bool  # BatchNorm layers below the head
    random: bool  # dropout / stochastic depth below the head


def below_head(model: Any, head: list[str], groups: tuple[GroupInfo, ...]) -> BelowHead:
    inside = lambda name: any(prefix_match(h, name) for h in head)  # noqa: E731
    below = [(n, m) for n, m in model.named_modules() if n and not inside(n)]
    random = any(
        type(m).__name__ in ("Dropout", "Dropout2d", "StochasticDepth") and getattr(m, "p", 0) > 0 for _, m in below
    )
    return BelowHead(
        head_module=head[0] if len(head) == 1 else None,
        head_only_groups=frozenset(g.name for g in groups if g.params and all(inside(p) for p in g.params)),
        bn=any("BatchNorm" in type(m).__name__ for _, m in below),
        random=random,
    )


def cacheability(phase: Phase, below: BelowHead, augment: list[JSONObject]) -> FeatureCacheSpec:
    """Whether the frozen part's output can be computed once and reused for every epoch.

    Safe when only the head trains, BatchNorm below it keeps its statistics (bn = "frozen")
    and nothing below it or in the train transforms is random; `cache_features = true`
    accepts random augmentation / dropout applied once, `false` turns the cache off.
    """

    def no(why: str) -> FeatureCacheSpec:
        return FeatureCacheSpec(on=False, why=why, module=below.head_module)

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
    return FeatureCacheSpec(
        on=True, why="opted in" if phase.cache_features else "only the head trains", module=below.head_module
    )
