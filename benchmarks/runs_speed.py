"""`ftcompile runs` over 50 run folders, next to `python -c "import torch"` timed in the same run.

`runs` only reads JSON files, so it must not import torch (tests/test_imports.py checks that
it does not); this measures what that buys. The run folders are 50 copies of one small real
run (a 4-step resnet18 on 16 px digits, trained here first, or `--run DIR`), each under its
own `runs/tiny/<n>-<hash>/` name. A copy holds the files `runs` reads (plan.json, env.json,
summary.json, metrics.jsonl, ...) but not the weights (*.pt, checkpoints/), which it never
opens. Each round times the torch import and then `runs`, each a fresh process, so that load
from other work on the machine falls on both alike; the figure is the best of the rounds.

Target: `runs` over 50 folders <= 0.5x the torch import.

    python benchmarks/runs_speed.py              # 7 rounds, 50 runs
    python benchmarks/runs_speed.py --run runs/quickstart/1-ab12cd34 --copies 200
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from plan_speed import wall

TARGET = 0.5
RECIPE = """\
name = "tiny"
seed = 0

[model]
arch = "resnet18"
weights = "none"

[data]
builtin = "digits"
classes = ["0", "1", "2"]
image_size = 16
batch_size = 16
workers = 0

[optimizer]
type = "SGD"
momentum = 0.9

[groups]
all = ["backbone", "head"]

[phases.only]
train = ["all"]
steps = 4
lr = { all = 0.05 }

[run]
device = "cpu"
eval_every = "2 steps"
checkpoint_every = "4 steps"
"""


def train_tiny(folder: Path) -> Path:
    """One real run of the tiny recipe (about half a minute on a CPU)."""
    (folder / "tiny.toml").write_text(RECIPE)
    argv = [sys.executable, "-m", "ftcompile", "run", "tiny.toml", "--out", "tiny-run"]
    done = subprocess.run(argv, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training the tiny run failed:\n{done.stdout}\n{done.stderr}")
    return folder / "tiny-run"


def copy_runs(run: Path, root: Path, copies: int) -> None:
    """root/runs/tiny/<n>-<hash>/ for n = 1..copies: the run without its weights."""
    skip = shutil.ignore_patterns("*.pt", "checkpoints", ".lock")
    for n in range(1, copies + 1):
        shutil.copytree(run, root / "runs" / "tiny" / f"{n}-{n:08x}", ignore=skip)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--run", type=Path, help="a finished run directory to copy (default: train a tiny one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="runs-speed-") as tmp:
        root = Path(tmp)
        run = args.run.resolve() if args.run else train_tiny(root)
        copy_runs(run, root / "copies", args.copies)
        runs_argv = [sys.executable, "-m", "ftcompile", "runs", str(root / "copies" / "runs")]
        listing = subprocess.run(runs_argv, capture_output=True, text=True, check=True).stdout
        listed = [line for line in listing.splitlines() if line.startswith(str(root))]
        if len(listed) != args.copies:
            raise SystemExit(f"runs listed {len(listed)} runs, not {args.copies}:\n{listing}")
        torch_argv = [sys.executable, "-c", "import torch"]
        wall(torch_argv)  # warm the file cache
        wall(runs_argv)
        times: dict[str, list[float]] = {"torch": [], "runs": []}
        for i in range(args.rounds):
            times["torch"].append(wall(torch_argv))
            times["runs"].append(wall(runs_argv))
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)

    base, runs = min(times["torch"]), min(times["runs"])
    ratio = runs / base
    print(f"{date.today()}, {cpu_name()}, Python {platform.python_version()}; best of {args.rounds} rounds")
    names = ['python -c "import torch"', f"ftcompile runs ({args.copies} runs)"]
    print(f"{names[0]:<36} {base:>7.2f} s")
    print(f"{names[1]:<36} {runs:>7.2f} s  {ratio:.2f}x torch (target <= {TARGET}x)")
    print(f"status of the copies: {sorted({line.split()[3] for line in listed})}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
