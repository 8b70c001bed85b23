"""Run directories: runs/<name>/<n>-<plan hash[:8]>/ with everything needed to rerun.

recipe.toml, plan.json, env.json, metrics.jsonl, lr.csv, checkpoints/, model.pt.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from ftcompile.errors import RecipeError
from ftcompile.plan import Plan

RUNS = Path("runs")


def new_run_dir(plan: Plan, out: Path | None) -> Path:
    if out is not None:
        if out.exists() and any(out.iterdir()):
            raise RecipeError(f"{out} exists and is not empty", key="--out", suggestion="give a new folder, or resume it")
        out.mkdir(parents=True, exist_ok=True)
        return out
    parent = RUNS / plan.recipe["name"]
    parent.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-")[0]) for p in parent.iterdir() if p.name.split("-")[0].isdigit()]
    path = parent / f"{max(numbers, default=0) + 1}-{plan.hash[:8]}"
    path.mkdir()
    return path


def env_record(plan: Plan, recipe: Path | None, root: Path, world: int = 1) -> dict[str, Any]:
    import torch
    import torchvision

    import ftcompile
    from ftcompile import provenance
    from ftcompile.runtime.loop import pick_device

    return {
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "ftcompile": ftcompile.__version__,
                     "python": platform.python_version()},
        "device": str(pick_device(plan.run.device)),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seed": plan.seed,
        "processes": world,
        "plan_hash": plan.hash,
        "recipe": str(recipe) if recipe else None,
        "data_root": str(root.resolve()),
        # provenance: the recipe's git commit and files, the data, what bitwise equality needs
        **provenance.recipe_record(recipe, plan.recipe.get("overrides", [])),
        "data": provenance.data_fingerprint(plan.to_dict()["data"], root),
        "machine": provenance.machine(),
    }


def changed_since(run_dir: Path, plan: Plan, env: dict[str, Any]) -> list[str]:
    """rerun / resume: what differs from the run's recipe, data and machine, one line each."""
    from ftcompile import provenance
    from ftcompile.errors import RecipeError

    lines = provenance.recipe_warnings(run_dir, env, plan.recipe["source_hash"])
    try:
        lines += provenance.data_warnings(env, provenance.data_fingerprint(plan.to_dict()["data"], Path(env["data_root"])))
    except RecipeError:
        pass  # data that cannot be listed fails the run itself, with its own message
    return lines + provenance.machine_warnings(env, provenance.machine())


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def start_run(plan: Plan, recipe: Path | None, root: Path, out: Path | None) -> int:
    from ftcompile.runtime import distributed

    run_new(plan, recipe, root, out)
    distributed.shutdown(distributed.init(plan.run.device))
    return 0


def run_new(plan: Plan, recipe: Path | None, root: Path, out: Path | None) -> Path:
    """Create the run directory (rank 0; the others learn its name), record, train."""
    from ftcompile.runtime import distributed

    d = distributed.init(plan.run.device)
    run_dir = distributed.broadcast(new_run_dir(plan, out) if d.main else None, d)
    if d.main:
        if recipe is not None:
            from ftcompile.provenance import stored_recipe_text

            (run_dir / "recipe.toml").write_text(stored_recipe_text(recipe, plan.recipe.get("overrides", [])))
        (run_dir / "plan.json").write_text(plan.to_json() + "\n")
        write_json(run_dir / "env.json", env_record(plan, recipe, root, d.world))
    distributed.barrier(d)
    _train(plan, run_dir, root, None, d)
    return run_dir


def open_run(run_dir: Path) -> tuple[Plan, dict[str, Any]]:
    if not (run_dir / "plan.json").is_file() or not (run_dir / "env.json").is_file():
        raise RecipeError(
            f"{run_dir} is not a run directory (no plan.json / env.json)",
            file=run_dir,
            suggestion="pass a folder made by ftcompile run, e.g. runs/<name>/1-ab12cd34",
        )
    plan = Plan.load(run_dir / "plan.json")
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except json.JSONDecodeError as exc:
        raise RecipeError(f"env.json is damaged: {exc}", file=run_dir / "env.json") from None
    return plan, env


def resume_run(run_dir: Path) -> int:
    plan, env = open_run(run_dir)
    from ftcompile.runtime import checkpoint, distributed

    d = distributed.init(plan.run.device)
    if d.main:
        for line in changed_since(run_dir, plan, env):
            print(line, file=sys.stderr)
    state = checkpoint.load_newest(run_dir / "checkpoints")
    if state is not None and state.get("plan_hash") != plan.hash:
        raise RecipeError("the checkpoint belongs to another plan", file=run_dir, suggestion="start a new run")
    if state is None:
        print("no complete checkpoint: starting from step 0", file=sys.stderr)
        from ftcompile.runtime.logs import truncate_logs

        if d.main:
            truncate_logs(run_dir, {"metrics.jsonl": 0, "lr.csv": 0})
    elif d.main:
        print(f"resuming at step {state['step']} of {plan.total_steps}", file=sys.stderr)
    distributed.barrier(d)
    _train(plan, run_dir, Path(env["data_root"]), state, d)
    distributed.shutdown(d)
    return 0


def version_warnings(plan: Plan) -> list[str]:
    """One line per library whose version differs from the one the plan was made with."""
    import torch
    import torchvision

    import ftcompile

    now = {"torch": torch.__version__, "torchvision": torchvision.__version__, "ftcompile": ftcompile.__version__}
    return [
        f"warning: the plan was made with {lib} {plan.versions.get(lib)}, this is {version}"
        for lib, version in now.items()
        if plan.versions.get(lib) != version
    ]


def rerun_run(run_dir: Path, out: Path | None) -> int:
    plan, env = open_run(run_dir)
    from ftcompile.runtime import distributed

    d = distributed.init(plan.run.device)
    if d.main:
        for line in version_warnings(plan) + changed_since(run_dir, plan, env):
            print(line, file=sys.stderr)
    new_dir = distributed.broadcast(new_run_dir(plan, out) if d.main else None, d)
    if d.main:
        if (run_dir / "recipe.toml").is_file():
            shutil.copyfile(run_dir / "recipe.toml", new_dir / "recipe.toml")
        (new_dir / "plan.json").write_text(plan.to_json() + "\n")
        write_json(new_dir / "env.json", {**env, **rerun_record(plan, env), "processes": d.world, "rerun_of": str(run_dir)})
    distributed.barrier(d)
    _train(plan, new_dir, Path(env["data_root"]), None, d)
    distributed.shutdown(d)
    return 0


def rerun_record(plan: Plan, env: dict[str, Any]) -> dict[str, Any]:
    """What a rerun records of its own: the data and machine it runs on (the recipe's
    provenance stays the original run's: the plan is the original's)."""
    from ftcompile import provenance

    record: dict[str, Any] = {"machine": provenance.machine()}
    try:
        record["data"] = provenance.data_fingerprint(plan.to_dict()["data"], Path(env["data_root"]))
    except (RecipeError, OSError):
        pass  # data that cannot be listed fails the run itself, with its own message
    return record


def upstream_model(plan: Plan, root: Path) -> Path | None:
    """model.pt of a finished run of the upstream plan (weights = "other.toml"), trained
    first when there is none; None when the weights name no upstream recipe. Done before
    this run seeds its RNGs, so training the upstream first or finding it gives one result."""
    weights = plan.model.weights
    if weights.kind != "recipe" or weights.plan is None or weights.value is None or weights.root is None:
        return None
    upstream = Plan.from_dict(weights.plan, source=weights.value)
    for run in sorted(RUNS.glob(f"{upstream.recipe['name']}/*-{upstream.hash[:8]}")):
        if (run / "model.pt").is_file():
            return run / "model.pt"
    upstream_root = root / weights.root
    print(f"weights: no finished run of {weights.value} (plan {upstream.hash[:8]}); training it first", flush=True)
    return run_new(upstream, upstream_root / Path(weights.value).name, upstream_root, None) / "model.pt"


def _train(plan: Plan, run_dir: Path, root: Path, state: dict[str, Any] | None, d: Any) -> None:
    from ftcompile.runtime.loop import train

    result = train(plan, run_dir, root, state, d, upstream=upstream_model(plan, root))
    if d.main:
        print_summary(plan, result)
        print(run_dir)


def print_summary(plan: Plan, result: dict[str, Any]) -> None:
    last = {}
    for rec in result["evals"]:
        last[rec["phase"]] = rec
    rows = [("phase", "steps", "val_loss", "top1", "top5")]
    for ph in plan.phases:
        rec = last.get(ph.name)
        fmt = lambda k: f"{100 * rec[k]:.2f}%" if rec and k in rec else "-"  # noqa: E731
        rows.append((ph.name, f"[{ph.begin}, {ph.end})", f"{rec['val_loss']:.4f}" if rec else "-", fmt("top1"), fmt("top5")))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"time {result['seconds']:.1f} s")
