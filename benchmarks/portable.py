"""What `run.reproducible = "portable"` costs in speed: ms per training step, default vs portable.

The pins (ftcompile/portable.py) are environment variables that oneDNN, ATen, MKL and OpenMP
read once, when the process starts using them, so each setting runs in a child process of
this one (started with that environment) and the children alternate, round by round:
- default: the environment as given (this machine's instruction set, torch's thread count);
- one thread: only OMP_NUM_THREADS=1 / MKL_NUM_THREADS=1, to tell the cost of the thread
  count from the cost of the instruction sets;
- portable: every pin (AVX2 oneDNN / ATen / MKL, one thread).
Each child compiles one recipe (resnet18 from random init on the builtin digits, the whole
model trained, SGD + OneCycleLR, batch 32; the portable golden run's model and data) and
trains it with the runtime (`runtime.loop.train`), reporting the median per step (the first
step left out) of the wall time and of the process's CPU time (all its threads). The printed
ratios are portable / default and portable / one thread, from the same rounds.

On a machine that other work keeps busy, wall times of several threads are unreliable (the
threads wait for each other and for cores); the CPU time of the one-thread settings is not:
portable / one thread in CPU time is the cost of the instruction sets alone. Say the load
(`uptime`) beside any figure.

    python benchmarks/portable.py                        # 3 rounds x 30 steps, 32 and 96 px
    python benchmarks/portable.py --rounds 5 --steps 40 --sizes 32 64 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftcompile import portable  # noqa: E402  (no torch: the parent never starts a kernel)

RECIPE = """
name = "portable-bench"
seed = 0

[model]
arch = "resnet18"
weights = "none"

[data]
builtin = "digits"
classes = ["0", "1", "2", "3", "4"]
image_size = {size}
batch_size = 32
workers = 0

[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4

[groups]
body = ["backbone"]
head = ["head"]

[phases.all]
train = ["body", "head"]
steps = {steps}
lr = {{ head = 0.05, body = "head / 3" }}
scheduler = {{ type = "OneCycleLR", pct_start = 0.25 }}

[run]
device = "cpu"
eval_every = "1000 steps"
checkpoint_every = "never"
keep_checkpoints = "none"
"""

SETTINGS = {
    "default": {},
    "one thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "portable": dict(portable.PINS),
}


def child(size: int, steps: int) -> None:
    """In the child: train the recipe, print the median seconds per step and what torch ran."""
    import time

    import torch
    from _common import run_runtime, step_seconds
    from ftcompile.runtime.loop import Hooks

    class CpuTimes(Hooks):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step(self, session: object, info: object) -> None:
            self.marks.append(time.process_time())

    from ftcompile.compiler import compile_recipe

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(RECIPE.format(size=size, steps=steps))
        plan = compile_recipe(path)
        cpu = CpuTimes()
        times = run_runtime(plan, Path(tmp), hooks=[cpu])
    import statistics

    cpu_steps = [
        b - a for a, b in zip(cpu.marks, cpu.marks[1:], strict=False)
    ]  # from the end of step 1: warm-up left out
    print(
        json.dumps(
            {
                "seconds": step_seconds(times),
                "cpu": statistics.median(cpu_steps),
                "capability": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
            }
        )
    )


def measure(setting: str, size: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in portable.PINS}
    env.update(SETTINGS[setting])
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(size), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--child", type=int, nargs=2, metavar=("SIZE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    import platform
    import statistics

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.machine(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.machine()
    )
    print(
        f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; resnet18, batch 32, "
        f"{args.steps} steps x {args.rounds} rounds per setting (median of the round medians)"
    )
    for size in args.sizes:
        wall: dict[str, list[float]] = {s: [] for s in SETTINGS}
        cpu_s: dict[str, list[float]] = {s: [] for s in SETTINGS}
        how: dict[str, str] = {}
        for _ in range(args.rounds):
            for setting in SETTINGS:
                r = measure(setting, size, args.steps)
                wall[setting].append(r["seconds"])
                cpu_s[setting].append(r["cpu"])
                how[setting] = f"{r['capability']}, {r['threads']} thread(s)"
        ms = {s: 1000 * statistics.median(v) for s, v in wall.items()}
        cms = {s: 1000 * statistics.median(v) for s, v in cpu_s.items()}
        print(f"\n{size} px            wall ms/step   CPU ms/step")
        for s in SETTINGS:
            print(
                f"  {s:<10}  {ms[s]:10.1f}  {cms[s]:12.1f}   ({how[s]}; wall rounds "
                + ", ".join(f"{1000 * v:.0f}" for v in wall[s])
                + ")"
            )
        print(
            f"  wall: portable / default = {ms['portable'] / ms['default']:.2f}x, "
            f"portable / one thread = {ms['portable'] / ms['one thread']:.2f}x"
        )
        print(
            f"  CPU:  portable / one thread = {cms['portable'] / cms['one thread']:.2f}x (the instruction sets alone)"
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
