"""Trials against the same search done by hand: every combination as its own run from scratch.

Runs recipes/quickstart-trials.toml once (3 layer4 LR cuts, then 3 unfreezing depths for the
last phase, greedy), then each of the 3 x 3 combinations as a recipe without trials, from
step 0. Prints wall time and optimizer steps of both, the saving factor, and each run's
final val accuracy. The upstream digits-pretrain model is trained (or found in runs/) first
and is not timed. Runs on the CPU; expect several minutes per full run on 2 cores.

    python benchmarks/trials.py
    python benchmarks/trials.py --recipe recipes/quickstart-trials.toml --out /tmp/trials-bench
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def combination_plans(recipe: Path) -> list[tuple[str, Any]]:
    """One plan per combination of the trial phases' alternatives, trials taken out."""
    from ftcompile.compiler import CompileOptions, build_plan, compile_upstream, locate
    from ftcompile.errors import RecipeError
    from ftcompile.load import load_recipe
    from ftcompile.resolve import resolve
    from ftcompile.schema import validate
    from ftcompile.trials import alternatives

    loaded = load_recipe(recipe)
    base = validate(loaded)
    num_classes = len(base.data.classes) or 10
    per_phase = [
        [(name, alt) for alt in alternatives(name, ph, num_classes)] for name, ph in base.phases.items() if ph.trials
    ]
    plans = []
    for combo in itertools.product(*per_phase):
        data = copy.deepcopy(loaded.data)
        data["name"] = base.name + "-" + "-".join(str(alt.k) for _, alt in combo)
        for name, alt in combo:
            data["phases"][name] = alt.phase.model_dump(exclude={"trials"}, exclude_none=True)
        one = replace(loaded, data=data)
        try:
            r = validate(one)
            upstream, _ = compile_upstream(r.model.weights, one.folder, (one.path.resolve(),), CompileOptions())
            plan = build_plan(resolve(r, one.folder, upstream=upstream), r, one.path.name, one.source_hash())
        except RecipeError as err:
            raise locate(err, one) from None
        plans.append((" | ".join(f"{name}: {alt.label}" for name, alt in combo), plan))
    return plans


def timed_run(plan: Any, recipe: Path, out: Path) -> dict[str, Any]:
    from ftcompile.runtime import rundir
    from ftcompile.runtime.loop import Hooks, observe

    class Count(Hooks):
        steps = 0

        def on_step(self, session: Any, info: Any) -> None:
            Count.steps += 1

    count = Count()
    started = time.perf_counter()
    with observe(count):
        rundir.run_new(plan, recipe, recipe.parent, out)
    seconds = time.perf_counter() - started
    from ftcompile.runtime.runfiles import continued_evals

    last = continued_evals(out, plan)[-1]  # of a trial phase, the chosen alternative's
    return {"seconds": seconds, "steps": Count.steps, "top1": last["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "quickstart-trials.toml"))
    parser.add_argument("--out", default=None, help="folder for the run directories (default: a temp folder)")
    args = parser.parse_args()
    import torch
    from ftcompile.runtime import rundir

    from ftcompile.compiler import compile_recipe

    torch.set_num_threads(min(2, torch.get_num_threads()))
    recipe = Path(args.recipe).resolve()
    out = Path(args.out or tempfile.mkdtemp(prefix="trials-bench-"))
    plan = compile_recipe(recipe)
    rundir.upstream_model(plan, recipe.parent)  # trained once, outside the timing
    print(
        f"trials: {recipe.name}, {plan.steps_with_trials} optimizer steps planned ({plan.total_steps} without trials)",
        flush=True,
    )
    trials = timed_run(plan, recipe, out / "trials")
    rows = [("trials (greedy, one run)", trials)]
    for label, one in combination_plans(recipe):
        print(f"from scratch: {label}", flush=True)
        rows.append((label, timed_run(one, recipe, out / one.recipe.name)))
    scratch_s = sum(r["seconds"] for _, r in rows[1:])
    scratch_steps = sum(r["steps"] for _, r in rows[1:])
    width = max(len(label) for label, _ in rows)
    print(f"\n{'run':<{width}}  {'steps':>6}  {'seconds':>8}  top1")
    for label, r in rows:
        print(f"{label:<{width}}  {r['steps']:>6}  {r['seconds']:>8.1f}  {100 * r['top1']:.2f}%")
    print(
        f"\ntrials: {trials['steps']} steps, {trials['seconds']:.1f} s; every combination from scratch: "
        f"{scratch_steps} steps, {scratch_s:.1f} s; saving x{scratch_s / trials['seconds']:.2f} in time, "
        f"x{scratch_steps / trials['steps']:.2f} in steps"
    )
    best = max(rows[1:], key=lambda row: row[1]["top1"])
    print(
        f"best combination from scratch: {best[0]} ({100 * best[1]['top1']:.2f}%); "
        f"trials chose {100 * trials['top1']:.2f}% (see {out / 'trials' / 'trials.csv'})"
    )


if __name__ == "__main__":
    main()
