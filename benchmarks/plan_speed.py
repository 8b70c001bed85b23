"""Dry-run speed: `ftcompile plan` of every shipped recipe and `ftcompile check` of all of
them, each a fresh process, next to `python -c "import torch"` timed in the same run.

torch must be imported to plan (the LR trace runs real torch schedulers), so its import is
the floor. Each round times the torch import, every plan, then the check, interleaved so
that load from other work on the machine falls on all of them alike; the table gives the
median of the rounds. Recipes whose data folders are absent are planned with
`--dataset-size 1000 --val-size 200`; `check` needs no sizes.

Targets: every plan <= 1.3x the torch import; check of all shipped recipes <= 2x.

    python benchmarks/plan_speed.py              # 5 rounds
    python benchmarks/plan_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
PLAN_TARGET = 1.3
CHECK_TARGET = 2.0


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return seconds


def plan_argv(recipe: Path) -> list[str]:
    from ftcompile.datasets import absent_folders
    from ftcompile.load import load_recipe

    loaded = load_recipe(recipe)
    sizes = (
        ["--dataset-size", "1000", "--val-size", "200"]
        if absent_folders(loaded.data.get("data", {}), loaded.folder)
        else []
    )
    return [sys.executable, "-m", "ftcompile", "plan", str(recipe.relative_to(REPO)), *sizes]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    recipes = sorted(RECIPES.glob("*.toml"))
    commands = {r.name: plan_argv(r) for r in recipes}
    commands["check (all)"] = [sys.executable, "-m", "ftcompile", "check", *(str(r.relative_to(REPO)) for r in recipes)]
    torch_argv = [sys.executable, "-c", "import torch"]
    times: dict[str, list[float]] = {name: [] for name in ["import torch", *commands]}
    wall(torch_argv)  # warm the file cache
    for argv in commands.values():
        wall(argv)
    for i in range(args.rounds):
        times["import torch"].append(wall(torch_argv))
        for name, argv in commands.items():
            times[name].append(wall(argv))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)

    base = statistics.median(times["import torch"])
    print(f'median of {args.rounds} wall times; python -c "import torch": {base:.2f} s\n')
    print(f"{'command':<40} {'median s':>9} {'x torch':>8} {'target':>7}")
    ok = True
    for name in commands:
        median = statistics.median(times[name])
        target = CHECK_TARGET if name.startswith("check") else PLAN_TARGET
        label = name if name.startswith("check") else f"plan {name}"
        ratio = median / base
        ok &= ratio <= target
        print(f"{label:<40} {median:>9.2f} {ratio:>8.2f} {target:>6.1f}x{'' if ratio <= target else '  over'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
