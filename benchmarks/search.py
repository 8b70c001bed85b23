"""Searching a fine-tuning schedule five ways, on a recipe where the choice matters.

For each recipe (recipes/fewshot-trials.toml: 4 LR cuts x 3 depths on 10 images per digit;
recipes/quickstart-trials.toml: 3 x 3 on the full digits split) it runs, the way a user would
(recipes written to a temp folder, `ftcompile run` through its Python entry point):
  (a) every combination from scratch: one recipe per combination, the trial values fixed;
      also the reference for the best accuracy among all combinations
  (b) greedy trials, full windows: the recipe as it is
  (c) greedy trials with `prune = { at = [0.25, 0.5], keep = 0.5 }` in each trial phase
      (`at = [0.25]` for a phase of 3 alternatives or fewer: 3 -> 1, a second rung would
      hold one alternative)
  (d) Optuna: a study over the same combinations (one categorical parameter per trial
      phase, TPESampler(seed=0)), as many trials as combinations, each a run from scratch
      that reports every evaluation (trial.report) to SuccessiveHalvingPruner and stops
      when it says so; a trial's steps are counted up to where it stopped
  (e) (c) with `--backend ray --max-parallel 2`, every process on one thread (torch's
      threads are the driver's, and each Ray task asks for as many CPUs: at 2 threads a
      2-core machine runs one task at a time); (c) runs on torch's default threads
and prints per method the optimizer steps, wall seconds, the combination chosen, its final
accuracy and the best among all combinations, then the issue's goals (issue 19 §4) against
(b) and (d) measured in the same process. The upstream digits-pretrain model is trained
once, first, and not timed. A method whose feature this ftcompile lacks says why instead.

    python benchmarks/search.py                       # both recipes, every method
    python benchmarks/search.py --only fewshot --methods a,b,c --out results.json
    python benchmarks/search.py --workdir /tmp/search # keep (and reuse) the upstream model there
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from ftcompile.runtime.loop import Hooks, observe

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "fewshot": REPO / "recipes" / "fewshot-trials.toml",
    "quickstart": REPO / "recipes" / "quickstart-trials.toml",
}
METHODS = {
    "a": "every combination from scratch",
    "b": "greedy trials, full windows",
    "c": "greedy trials, prune",
    "d": "Optuna, SuccessiveHalvingPruner",
    "e": "(c) on Ray, 2 workers",
}


# ---------------------------------------------------------------- recipes (no training)


@dataclass(frozen=True)
class Combination:
    label: str  # "layer4=head / 10 | full=train=layer4+head": the alternatives' labels, by phase
    choice: tuple[int, ...]  # the alternative of each trial phase, in plan order
    data: dict[str, Any]  # the recipe, trials taken out and the alternatives' values put in


def trial_phases(recipe: Path) -> list[tuple[str, list[Any]]]:
    """(phase, its alternatives) of each trial phase, in the recipe's order."""
    from ftcompile.load import load_recipe
    from ftcompile.schema import validate
    from ftcompile.trials import alternatives

    base = validate(load_recipe(recipe))
    num_classes = len(base.data.classes) or 10
    return [(name, alternatives(name, ph, num_classes)) for name, ph in base.phases.items() if ph.trials]


def standalone(recipe: Path) -> dict[str, Any]:
    """The recipe's merged data (extends resolved), its upstream recipe named by absolute path,
    so that a copy written elsewhere compiles to the same plan."""
    from ftcompile.load import load_recipe

    data = copy.deepcopy(load_recipe(recipe).data)
    weights = data.get("model", {}).get("weights")
    if isinstance(weights, str) and weights.endswith(".toml"):
        data["model"]["weights"] = str((recipe.parent / weights).resolve())
    return data


def combinations(recipe: Path) -> list[Combination]:
    """One recipe per combination of the trial phases' alternatives (the product, in order)."""
    per_phase = trial_phases(recipe)
    base = standalone(recipe)
    out = []
    for combo in itertools.product(*(alts for _, alts in per_phase)):
        data = copy.deepcopy(base)
        data["name"] = base["name"] + "-" + "-".join(str(alt.k) for alt in combo)
        for (name, _), alt in zip(per_phase, combo, strict=True):
            data["phases"][name] = alt.phase.model_dump(exclude={"trials"}, exclude_none=True)
        label = " | ".join(f"{name}: {alt.label}" for (name, _), alt in zip(per_phase, combo, strict=True))
        out.append(Combination(label, tuple(alt.k for alt in combo), data))
    return out


def prune_for(alternatives: int) -> dict[str, Any]:
    """Successive halving with keep = 0.5: two rungs where they leave two alternatives at the
    second (4 -> 2 -> 1), one for 3 or fewer (3 -> 1)."""
    return {"at": [0.25, 0.5] if alternatives >= 4 else [0.25], "keep": 0.5}


def pruned(recipe: Path) -> dict[str, Any]:
    """The recipe with `prune` in each trial phase."""
    data = standalone(recipe)
    data["name"] = data["name"] + "-prune"
    for name, alts in trial_phases(recipe):
        data["phases"][name]["trials"]["prune"] = prune_for(len(alts))
    return data


def toml_text(data: dict[str, Any]) -> str:
    """A recipe as TOML: one `key = value` line per top-level key, tables inline."""

    def key(k: str) -> str:
        return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{v} has no TOML form here")
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }" if v else "{}"
        raise TypeError(f"no TOML form for {type(v).__name__}")

    return "".join(f"{key(k)} = {value(v)}\n" for k, v in data.items())


def write(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['name']}.toml"
    path.write_text(toml_text(data))
    return path


# ---------------------------------------------------------------- runs


@dataclass
class Outcome:
    method: str
    steps: int | None = None
    seconds: float | None = None
    chosen: str | None = None
    top1: float | None = None
    note: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)  # (a): one per combination; (d): one per trial


def run(recipe: Path, out: Path, *args: str, hooks: tuple[Any, ...] = ()) -> tuple[int, float]:
    """`ftcompile run RECIPE --out OUT ARGS`: optimizer steps taken and wall seconds. The
    terminal output is kept in OUT.log, not printed."""
    from ftcompile.cli import main

    class Count(Hooks):
        steps = 0

        def on_step(self, session: Any, info: Any) -> None:
            self.steps += 1

    count = Count()
    buffer = io.StringIO()
    started = time.perf_counter()
    try:
        with observe(count, *hooks), contextlib.redirect_stdout(buffer):
            rc = main(["run", str(recipe), "--out", str(out), *args])
    finally:
        seconds = time.perf_counter() - started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".log").write_text(buffer.getvalue())
    if rc != 0:
        raise RuntimeError(f"ftcompile run {recipe} {' '.join(args)} exited {rc}; see {out.with_suffix('.log')}")
    # On Ray the alternatives' steps run in the workers, where no hook of this process sees
    # them; the run's metrics.jsonl holds every step (the driver merges the workers' rows).
    logged = sum('"type": "step"' in line for line in (out / "metrics.jsonl").read_text().splitlines())
    return max(count.steps, logged), seconds


def final_eval(run_dir: Path) -> dict[str, Any]:
    """The run's last evaluation record as it went on (in a trial phase, the chosen alternative's)."""
    from ftcompile.runtime.runfiles import continued_evals

    from ftcompile.plan import Plan

    return continued_evals(run_dir, Plan.load(run_dir / "plan.json"))[-1]


def final_top1(run_dir: Path) -> float:
    return final_eval(run_dir)["top1"]


def select_metric(recipe: Path) -> Any:
    """The metric the recipe's trial phases select by (one for all), so that Optuna's study
    reports and optimises what the trials compare."""
    from ftcompile.load import load_recipe
    from ftcompile.metrics import metric
    from ftcompile.schema import validate

    names = {ph.trials.select for ph in validate(load_recipe(recipe)).phases.values() if ph.trials}
    if len(names) != 1:
        raise SystemExit(f"{recipe}: the trial phases select by {sorted(names)}; the Optuna study needs one metric")
    return metric(names.pop())


def chosen_label(run_dir: Path, phases: list[str]) -> str:
    """The combination a trial run chose, labelled as `combinations` labels it."""
    from ftcompile.runtime.runfiles import read_trials

    from ftcompile.plan import Plan

    rows = read_trials(run_dir, Plan.load(run_dir / "plan.json"))
    chosen = {row["phase"]: row["label"] for row in rows if row["chosen"] == "true"}
    return " | ".join(f"{name}: {chosen[name]}" for name in phases)


def every_combination(combos: list[Combination], work: Path) -> Outcome:
    outcome = Outcome("a")
    for combo in combos:
        steps, seconds = run(write(work / "recipes", combo.data), work / "a" / combo.data["name"])
        top1 = final_top1(work / "a" / combo.data["name"])
        outcome.runs.append({"label": combo.label, "steps": steps, "seconds": seconds, "top1": top1})
        print(f"  (a) {combo.label}: {100 * top1:.2f}%  {steps} steps  {seconds:.1f} s", flush=True)
    best = max(outcome.runs, key=lambda r: r["top1"])  # ties: the first, as trials choose
    outcome.steps = sum(r["steps"] for r in outcome.runs)
    outcome.seconds = sum(r["seconds"] for r in outcome.runs)
    outcome.chosen, outcome.top1 = best["label"], best["top1"]
    return outcome


def trials_run(method: str, data: dict[str, Any], phases: list[str], work: Path, *args: str) -> Outcome:
    out = work / method / data["name"]
    steps, seconds = run(write(work / "recipes", data), out, *args)
    return Outcome(method, steps, seconds, chosen_label(out, phases), final_top1(out))


def optuna_study(combos: list[Combination], phases: list[tuple[str, list[Any]]], select: Any, work: Path) -> Outcome:
    """A TPE study over the combinations, each trial a run from scratch that reports each
    evaluation's `select` metric (the trials' own) to a SuccessiveHalvingPruner."""
    import optuna  # the bench extra

    by_choice = {c.choice: c for c in combos}
    outcome = Outcome("d")

    class Report(Hooks):
        """Each evaluation goes to the pruner; a trial it prunes stops here."""

        def __init__(self, trial: optuna.Trial) -> None:
            self.trial = trial

        def on_evaluate(self, session: Any, record: dict[str, Any]) -> None:
            self.trial.report(record[select.key], record["step"])
            if self.trial.should_prune():
                raise optuna.TrialPruned()

    def objective(trial: optuna.Trial) -> float:
        choice = tuple(
            [alt.label for alt in alts].index(trial.suggest_categorical(name, [alt.label for alt in alts]))
            for name, alts in phases
        )
        combo = by_choice[choice]
        out = work / "d" / f"trial-{trial.number}"
        record = {"label": combo.label, "steps": 0, "seconds": 0.0, "top1": None, "pruned": False}
        outcome.runs.append(record)
        report = Report(trial)
        steps_before = _Steps()
        try:
            steps, seconds = run(write(work / "recipes", combo.data), out, hooks=(report, steps_before))
        except optuna.TrialPruned:
            record.update(steps=steps_before.steps, seconds=steps_before.seconds(), pruned=True)
            raise
        last = final_eval(out)  # read once: top-1 for the table, the select metric for the study
        record.update(steps=steps, seconds=seconds, top1=last["top1"])
        return last[select.key]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if select.maximise else "minimize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.SuccessiveHalvingPruner(),
    )
    started = time.perf_counter()
    study.optimize(objective, n_trials=len(combos))
    outcome.seconds = time.perf_counter() - started
    outcome.steps = sum(r["steps"] for r in outcome.runs)
    best = study.best_trial.number
    outcome.chosen, outcome.top1 = outcome.runs[best]["label"], outcome.runs[best]["top1"]
    pruned = sum(r["pruned"] for r in outcome.runs)
    distinct = len({r["label"] for r in outcome.runs})
    outcome.note = f"{pruned} of {len(combos)} trials pruned, {distinct} distinct combinations"
    for r in outcome.runs:
        state = "pruned" if r["pruned"] else f"{100 * r['top1']:.2f}%"
        print(f"  (d) {r['label']}: {state}  {r['steps']} steps", flush=True)
    return outcome


class _Steps(Hooks):
    """Steps and wall time of a run up to where a hook stopped it."""

    def __init__(self) -> None:
        self.steps, self.started = 0, time.perf_counter()

    def on_step(self, session: Any, info: Any) -> None:
        self.steps += 1

    def seconds(self) -> float:
        return time.perf_counter() - self.started


# ---------------------------------------------------------------- what this ftcompile can do


def prune_unavailable(recipe: Path, work: Path) -> str | None:
    """Why (c) cannot run here, or None: the compiler must accept `prune` and plan fewer steps."""
    from ftcompile.compiler import compile_recipe
    from ftcompile.errors import RecipeError

    try:
        full = compile_recipe(recipe)
        cut = compile_recipe(write(work / "recipes", pruned(recipe)))
    except RecipeError as err:
        return str(err).splitlines()[0]
    if cut.steps_with_trials >= full.steps_with_trials:
        return f"the plan with prune has {cut.steps_with_trials} steps, as many as without"
    return None


def ray_unavailable() -> str | None:
    from ftcompile.cli import build_parser

    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        build_parser().parse_args(["run", "--help"])
    if "--backend" not in help_text.getvalue():
        return "`ftcompile run` has no --backend option"
    try:
        import ray  # noqa: F401  (the optional extra)
    except ImportError:
        return 'Ray is not installed (pip install "ftcompile[ray]")'
    return None


# ---------------------------------------------------------------- one recipe


def bench(name: str, recipe: Path, methods: str, work: Path) -> dict[str, Any]:
    from ftcompile.compiler import compile_recipe

    plan = compile_recipe(recipe)
    phases = trial_phases(recipe)
    combos = combinations(recipe)
    val = plan.data.val_size
    print(
        f"\n{name}: {recipe.name}, {len(combos)} combinations of "
        + " x ".join(f"{len(alts)} ({ph})" for ph, alts in phases)
        + f"; {plan.total_steps} steps each from scratch; val {val} images (one = {100 / val:.2f}%)",
        flush=True,
    )
    names = [ph for ph, _ in phases]
    outcomes: dict[str, Outcome] = {}
    for m in methods:
        print(f" ({m}) {METHODS[m]}", flush=True)
        if m == "a":
            outcomes[m] = every_combination(combos, work)
        elif m == "b":
            outcomes[m] = trials_run("b", standalone(recipe), names, work)
        elif m in "ce":
            why = prune_unavailable(recipe, work) or (ray_unavailable() if m == "e" else None)
            if why:
                outcomes[m] = Outcome(m, note=f"not available: {why}")
                print(f"  ({m}) not available: {why}", flush=True)
                continue
            args = ("--backend", "ray", "--max-parallel", "2") if m == "e" else ()
            threads = torch.get_num_threads()
            try:
                if m == "e":
                    torch.set_num_threads(1)  # the workers take the driver's threads
                outcomes[m] = trials_run(m, pruned(recipe), names, work, *args)
                if m == "e":
                    outcomes[m].note = "1 thread per process, 2 Ray workers"
            except Exception as err:  # a backend still being built fails here: say so, go on
                outcomes[m] = Outcome(m, note=f"failed: {type(err).__name__}: {str(err).splitlines()[0]}")
                print(f"  ({m}) failed: {err}", flush=True)
            finally:
                torch.set_num_threads(threads)
        elif m == "d":
            outcomes[m] = optuna_study(combos, phases, select_metric(recipe), work)
    best = outcomes["a"].top1 if "a" in outcomes else None
    table(outcomes, best)
    goals = check_goals(outcomes, val)
    for line in goals:
        print("  " + line)
    return {
        "recipe": recipe.name,
        "combinations": len(combos),
        "val_images": val,
        "best_top1": best,
        "methods": {m: asdict(o) for m, o in outcomes.items()},
        "goals": goals,
    }


def table(outcomes: dict[str, Outcome], best: float | None) -> None:
    rows = [["method", "steps", "seconds", "final top1", "best of all", "chosen"]]
    for m, o in outcomes.items():
        if o.steps is None:
            rows.append([f"({m}) {METHODS[m]}", "-", "-", "-", "-", o.note])
            continue
        rows.append(
            [
                f"({m}) {METHODS[m]}",
                str(o.steps),
                f"{o.seconds:.1f}",
                f"{100 * o.top1:.2f}%" if o.top1 is not None else "-",
                f"{100 * best:.2f}%" if best is not None else "(needs a)",
                o.chosen + (f"  [{o.note}]" if o.note else ""),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    print()
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    print()


def check_goals(outcomes: dict[str, Outcome], val: int) -> list[str]:
    """Issue 19 §4's goals, each as measured here, or why it cannot be checked."""
    o = {m: x for m, x in outcomes.items() if x.steps is not None}
    lines = []
    one_image = 1 / val
    if "b" in o and "c" in o:
        ratio = o["c"].steps / o["b"].steps
        near = o["c"].top1 >= o["b"].top1 - one_image - 1e-12
        lines.append(f"(c) steps / (b) steps = {ratio:.2f} (goal <= 0.6): {'met' if ratio <= 0.6 else 'NOT met'}")
        gap = round((o["b"].top1 - o["c"].top1) * val)
        where = f"{gap} validation images below" if gap > 0 else f"{-gap} validation images above" if gap else "equal"
        lines.append(
            f"(c) final {100 * o['c'].top1:.2f}% vs (b) {100 * o['b'].top1:.2f}%: {where} "
            f"(goal: at most 1 below): {'met' if near else 'NOT met'}"
        )
    else:
        lines.append("(c) against (b): needs both")
    if "c" in o and "d" in o:
        fewer, as_good = o["c"].steps < o["d"].steps, o["c"].top1 >= o["d"].top1
        lines.append(
            f"(c) {o['c'].steps} steps, {100 * o['c'].top1:.2f}% vs (d) {o['d'].steps} steps, "
            f"{100 * o['d'].top1:.2f}% (goal: fewer steps, equal or better): {'met' if fewer and as_good else 'NOT met'}"
        )
    else:
        lines.append("(c) against (d): needs both")
    if "c" in o and "e" in o:
        ratio = o["e"].seconds / o["c"].seconds
        lines.append(f"(e) wall / (c) wall = {ratio:.2f} (goal <= 0.65): {'met' if ratio <= 0.65 else 'NOT met'}")
    else:
        lines.append("(e) against (c): needs both")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(RECIPES), help="one recipe (default: both)")
    parser.add_argument("--methods", default="a,b,c,d,e", help="comma-separated, of a b c d e (default: all)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--workdir", help="folder for recipes, runs and the upstream model (default: a temp folder)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    import torch

    from ftcompile.cli import main as ftcompile

    out = Path(args.out).resolve() if args.out else None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="search-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # runs/ (the upstream model) lands here
    print(f"work folder {work}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if not list(Path("runs").glob("digits-pretrain/*/model.pt")):  # the upstream model, once, not timed
        print("training the upstream recipes/digits-pretrain.toml first", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            if ftcompile(["run", str(REPO / "recipes" / "digits-pretrain.toml")]) != 0:
                raise SystemExit("training recipes/digits-pretrain.toml failed")
    results = {
        name: bench(name, recipe, "".join(methods), work)
        for name, recipe in RECIPES.items()
        if args.only in (None, name)
    }
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
