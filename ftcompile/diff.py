"""`ftcompile diff OLD NEW`: what a recipe change does to training, for a code review.

Both sides become plans (a recipe is compiled, a plan.json or a run directory is read, a
`REV:path` is compiled as it was at that git revision) and the plans are compared as their
JSON data, which stays the same whatever Python types hold them: the sections (model,
data, groups, optimizer, run), the phases by name (added, removed, reordered, moved
windows, changed fields, trial alternatives by label), the change lists record by record,
and per param group the LR traces step by step (real torch schedulers, as `plan --trace`).
Equal plans (the same hash) are exit 0; a comment-only edit compiles to the same hash.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ftcompile.errors import RecipeError, RecipeErrors
from ftcompile.plan import Change, Op, Plan
from ftcompile.render import describe_change
from ftcompile.revisions import checkout, split_revision

# Plan sections compared key by key; the rest of the plan has a section of its own below.
SECTIONS = ("recipe", "versions", "seed", "model", "data", "optimizer", "run", "total_steps")
# What a phase's other fields already say, or the LR section shows in full.
_PHASE_SKIP = ("name", "begin", "end", "lr", "trials")


@dataclass(frozen=True)
class Side:
    label: str  # as given on the command line
    plan: dict[str, Any]  # the plan's JSON data, "hash" included


# ----------------------------------------------------------------------------- reading a side


def read_side(spec: str, options: Any) -> Side:
    """A recipe, a plan.json, a run directory, or REV:path -> its plan data."""
    if split_revision(spec) is not None:
        return Side(spec, _revision_plan(spec, options))
    path = Path(spec)
    if path.is_dir():
        if not (path / "plan.json").is_file():
            raise RecipeError(
                f"{spec} is a folder without plan.json",
                file=spec,
                suggestion="give a recipe, a plan.json, a run directory or REV:path",
            )
        path = path / "plan.json"
    if path.suffix == ".json":
        plan = Plan.load(path)
    else:
        from ftcompile.compiler import compile_checked  # imports torch: a plan.json side does not need it

        plan = compile_checked(path, options).plan
    return Side(spec, {**plan.to_dict(), "hash": plan.hash})


def _revision_plan(spec: str, options: Any) -> dict[str, Any]:
    """Compile the recipe as it was at the revision; errors name REV:path, not the temporary copy."""
    from ftcompile.compiler import compile_checked  # imports torch: a plan.json side does not need it

    with tempfile.TemporaryDirectory(prefix="ftcompile-rev-") as tmp:
        out = checkout(spec, Path(tmp))
        try:
            plan = compile_checked(out.recipe, replace(options, data_root=out.data_root)).plan
        except RecipeError as err:
            rev = spec.partition(":")[0]
            for e in err.errors if isinstance(err, RecipeErrors) else [err]:
                if e.file and e.file.startswith(tmp):
                    e.file = f"{rev}:{Path(e.file).relative_to(tmp).as_posix()}"
            raise
    return {**plan.to_dict(), "hash": plan.hash}


# ----------------------------------------------------------------------------- comparing


def leaf_changes(old: Any, new: Any, key: str = "") -> list[dict[str, Any]]:
    """{key, old, new} for every value that differs; tables by key, equal-length lists by index."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in [*old, *(k for k in new if k not in old)]:
            sub = f"{key}.{k}" if key else str(k)
            if k not in old or k not in new:
                out.append({"key": sub, "old": old.get(k), "new": new.get(k)})
            else:
                out += leaf_changes(old[k], new[k], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new:
        return [c for i, (a, b) in enumerate(zip(old, new, strict=False)) for c in leaf_changes(a, b, f"{key}[{i}]")]
    return [] if old == new else [{"key": key, "old": old, "new": new}]


def _sections(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in SECTIONS:
        a, b = old.get(name), new.get(name)
        if name == "model":  # an upstream recipe's plan is compared as a plan of its own, below
            a, b = _without_upstream_plan(a), _without_upstream_plan(b)
        changes = leaf_changes(*_split_files_apart(a, b), name) if name == "data" else leaf_changes(a, b, name)
        if name == "data":
            changes += _split_files_changes(a, b)
        if name == "recipe":  # the content hash changes with every edit; what changed is shown elsewhere
            changes = [c for c in changes if c["key"] != "recipe.source_hash"]
        if changes:
            out[name] = changes
    return out


def _split_files_apart(a: Any, b: Any) -> tuple[Any, Any]:
    drop = lambda d: {k: v for k, v in d.items() if k != "split_files"} if isinstance(d, dict) else d  # noqa: E731
    return drop(a), drop(b)


def _split_files_changes(a: Any, b: Any) -> list[dict[str, Any]]:
    """data.val = { split }: each side's file list as the files it lost and gained (an image
    added to the folder is one name, not two lists of thousands)."""
    lists = [(d.get("split_files") or {}) if isinstance(d, dict) else {} for d in (a, b)]
    out = []
    for side in ("train", "val"):
        old, new = set(lists[0].get(side) or []), set(lists[1].get(side) or [])
        if old != new:
            out.append(
                {"key": f"data.split_files.{side} removed -> added", "old": sorted(old - new), "new": sorted(new - old)}
            )
    return out


def _without_upstream_plan(model: Any) -> Any:
    if isinstance(model, dict) and isinstance(model.get("weights"), dict) and "plan" in model["weights"]:
        return {**model, "weights": {**model["weights"], "plan": model["weights"]["plan"].get("hash")}}
    return model


def _upstream(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """The diff of two upstream plans (weights = "pretrain.toml"), when both sides have one."""
    plans = [p.get("model", {}).get("weights", {}).get("plan") for p in (old, new)]
    if not all(isinstance(p, dict) for p in plans) or plans[0].get("hash") == plans[1].get("hash"):
        return None
    return compare(Side("old upstream", plans[0]), Side("new upstream", plans[1]))


def _by_name(items: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def _groups(old: dict[str, Any], new: dict[str, Any], field: str) -> dict[str, Any]:
    a, b = _by_name(old[field]), _by_name(new[field])
    changed = [c for name in a if name in b for c in leaf_changes(a[name], b[name], name)]
    out = {"added": [n for n in b if n not in a], "removed": [n for n in a if n not in b], "changed": changed}
    return {k: v for k, v in out.items() if v}


def _trials(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]] | None:
    """Trial alternatives of a phase, by label (phases that have a `trials` list)."""
    if "trials" not in old and "trials" not in new:
        return None
    labels = [[t.get("label") if isinstance(t, dict) else t for t in p.get("trials") or []] for p in (old, new)]
    out = {
        "added": [t for t in labels[1] if t not in labels[0]],
        "removed": [t for t in labels[0] if t not in labels[1]],
    }
    return out if out["added"] or out["removed"] else None


def _phases(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    a, b = _by_name(old["phases"]), _by_name(new["phases"])
    common_old = [n for n in a if n in b]
    common_new = [n for n in b if n in a]
    out: dict[str, Any] = {
        "added": [{"name": n, "window": [b[n]["begin"], b[n]["end"]]} for n in b if n not in a],
        "removed": [{"name": n, "window": [a[n]["begin"], a[n]["end"]]} for n in a if n not in b],
        "reordered": {"old": list(a), "new": list(b)} if common_old != common_new else None,
        "moved": [
            {"name": n, "old": [a[n]["begin"], a[n]["end"]], "new": [b[n]["begin"], b[n]["end"]]}
            for n in common_new
            if (a[n]["begin"], a[n]["end"]) != (b[n]["begin"], b[n]["end"])
        ],
        "changed": [
            c
            for n in common_new
            for c in leaf_changes(
                {k: v for k, v in a[n].items() if k not in _PHASE_SKIP},
                {k: v for k, v in b[n].items() if k not in _PHASE_SKIP},
                n,
            )
        ],
        "trials": [{"phase": n, **t} for n in common_new if (t := _trials(a[n], b[n]))],
    }
    for n in b:  # trials of a phase that is new come with it
        if n not in a and b[n].get("trials"):
            out["trials"].append({"phase": n, "added": _trials({}, b[n])["added"], "removed": []})  # type: ignore[index]
    return {k: v for k, v in out.items() if v}


def _change_key(change: dict[str, Any]) -> str:
    return json.dumps(change, sort_keys=True, separators=(",", ":"))


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Every change record only one side has, in step order: {"side": "-"|"+", "step", "change"}."""
    a = [_change_key(c) for c in old["changes"]]
    b = [_change_key(c) for c in new["changes"]]
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        out += [{"side": "-", "step": c["step"], "change": c} for c in old["changes"][i1:i2]]
        out += [{"side": "+", "step": c["step"], "change": c} for c in new["changes"][j1:j2]]
    return sorted(out, key=lambda d: (d["step"], d["side"] == "+"))  # old before new; record order kept


# What ftcompile.trace.lr_trace reads of a plan: where both sides agree on all of them, the
# traces are equal and torch (which the trace runs) is not imported.
_TRACE_INPUTS = ("optimizer", "param_groups", "changes", "phases", "total_steps")


def _lr_traces(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Per param group on both sides: the first step whose LR differs, and the largest
    absolute and relative (to the old LR, where it is not 0) differences."""
    if all(old.get(k) == new.get(k) for k in _TRACE_INPUTS):
        return []
    from ftcompile.trace import lr_trace  # imports torch: only plans whose LR schedules may differ

    plans = [Plan.from_dict(p, source=label) for p, label in ((old, "old"), (new, "new"))]
    rows = [lr_trace(p) for p in plans]
    names = [p.param_group_names for p in plans]
    out = []
    for name in names[1]:
        if name not in names[0]:
            continue
        i, j = names[0].index(name), names[1].index(name)
        a = [r[2][i] for r in rows[0]]
        b = [r[2][j] for r in rows[1]]
        report = _trace_difference(a, b)
        if report:
            out.append({"param_group": name, **report})
    return out


def _trace_difference(a: list[float], b: list[float]) -> dict[str, Any] | None:
    first = next((s for s, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first is None and len(a) == len(b):
        return None
    if first is None:
        first = min(len(a), len(b))  # equal while both run; one side runs longer
    abs_step = max(range(min(len(a), len(b))), key=lambda s: abs(b[s] - a[s]), default=None)
    rel = [(abs(b[s] - a[s]) / abs(a[s]), s) for s in range(min(len(a), len(b))) if a[s] != 0]
    rel_value, rel_step = max(rel, key=lambda r: r[0], default=(None, None))  # the first step on a tie
    return {
        "first_step": first,
        "old": a[first] if first < len(a) else None,
        "new": b[first] if first < len(b) else None,
        "max_abs": abs(b[abs_step] - a[abs_step]) if abs_step is not None else None,
        "max_abs_step": abs_step,
        "max_rel": rel_value if rel_value else None,
        "max_rel_step": rel_step if rel_value else None,
        "steps": [len(a), len(b)],
    }


def compare(old: Side, new: Side) -> dict[str, Any]:
    """The whole difference of two plans as JSON-ready data; {"equal": true, ...} when the hashes agree."""
    a, b = old.plan, new.plan
    report: dict[str, Any] = {
        "old": {"source": old.label, "hash": a.get("hash")},
        "new": {"source": new.label, "hash": b.get("hash")},
        "equal": a.get("hash") == b.get("hash"),
    }
    if report["equal"]:
        return report
    body = {
        "sections": _sections(a, b),
        "upstream": _upstream(a, b),
        "groups": _groups(a, b, "groups"),
        "param_groups": _groups(a, b, "param_groups"),
        "phases": _phases(a, b),
        "changes": _changes(a, b),
        "lr": _lr_traces(a, b),
    }
    return {**report, **{k: v for k, v in body.items() if v}}


# ----------------------------------------------------------------------------- text


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, float) else f"{value:.6g}"
    return text if len(text) <= 80 else text[:77] + "..."


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3g}%"


def render(report: dict[str, Any], max_changes: int = 200, indent: str = "") -> str:
    """The report for a person: one block per kind of difference."""
    return "\n".join(indent + line if line else line for line in _lines(report, max_changes))


def _lines(r: dict[str, Any], max_changes: int) -> Iterator[str]:
    width = max(len(r["old"]["source"]), len(r["new"]["source"]))
    for side in ("old", "new"):
        yield f"{side}  {r[side]['source']:<{width}}  plan {(r[side]['hash'] or '?')[:12]}"
    if r["equal"]:
        yield "the plans are equal"
        return
    for name, changes in r.get("sections", {}).items():
        yield ""
        yield f"{name}:"
        yield from (f"  {c['key']}: {_short(c['old'])} -> {_short(c['new'])}" for c in changes)
    if r.get("upstream"):
        yield ""
        yield "upstream recipe (model.weights):"
        yield from ("  " + line if line else line for line in _lines(r["upstream"], max_changes))
    for field in ("groups", "param_groups"):
        g = r.get(field)
        if g:
            yield ""
            yield f"{field.replace('_', ' ')}:"
            yield from (f"  added    {n}" for n in g.get("added", []))
            yield from (f"  removed  {n}" for n in g.get("removed", []))
            yield from (
                f"  changed  {c['key']}: {_short(c['old'])} -> {_short(c['new'])}" for c in g.get("changed", [])
            )
    p = r.get("phases")
    if p:
        yield ""
        yield "phases:"
        yield from (f"  added    {x['name']}  [{x['window'][0]}, {x['window'][1]})" for x in p.get("added", []))
        yield from (f"  removed  {x['name']}  [{x['window'][0]}, {x['window'][1]})" for x in p.get("removed", []))
        if p.get("reordered"):
            yield f"  order    {' -> '.join(p['reordered']['old'])}  became  {' -> '.join(p['reordered']['new'])}"
        yield from (
            f"  moved    {x['name']}  [{x['old'][0]}, {x['old'][1]}) -> [{x['new'][0]}, {x['new'][1]})"
            for x in p.get("moved", [])
        )
        yield from (f"  changed  {c['key']}: {_short(c['old'])} -> {_short(c['new'])}" for c in p.get("changed", []))
        for t in p.get("trials", []):
            yield from (f"  trials   {t['phase']}: added {label!r}" for label in t["added"])
            yield from (f"  trials   {t['phase']}: removed {label!r}" for label in t["removed"])
    changes = r.get("changes", [])
    if changes:
        yield ""
        yield f"changes ({len(changes)} records differ; - old, + new; at step S = after S optimizer steps):"
        for d in changes[:max_changes]:
            c = d["change"]
            yield f"  {d['side']} {d['step']:>7}  {describe_change(Change(c['step'], Op(c['op']), c['target'], c['field'], c['value']))}"
        if len(changes) > max_changes:
            yield f"  ... {len(changes) - max_changes} more (--all-changes, or --json)"
    lr = r.get("lr", [])
    if lr:
        yield ""
        yield "LR per param group (first step that differs: old -> new; largest difference):"
        w = max(len(x["param_group"]) for x in lr)
        for x in lr:
            at = f"step {x['first_step']}: {_short(x['old'])} -> {_short(x['new'])}"
            big = f"max abs {_short(x['max_abs'])} (step {x['max_abs_step']}), max rel {_pct(x['max_rel'])} (step {x['max_rel_step']})"
            steps = f", {x['steps'][0]} -> {x['steps'][1]} steps" if x["steps"][0] != x["steps"][1] else ""
            yield f"  {x['param_group']:<{w}}  {at}; {big}{steps}"
