"""Parameters and groups: which parameters a selector names, which skip weight decay.

Works on any model, real or built on the meta device; the compiler calls it on the meta
model, so no weights are ever allocated to resolve a recipe's groups.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftcompile.errors import RecipeError, did_you_mean

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


def prefix_match(prefix: str, name: str) -> bool:
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
    return [p for p in params if any(prefix_match(pre, p) for pre in prefixes)]


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
