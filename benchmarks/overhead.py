"""What the runtime costs over a hand-written PyTorch loop doing the same steps.

Both loops train the same model (runtime.model.build of the plan, same seed) on the same
batches (runtime.data.TrainBatches, the same loader output), with the same param groups
(decay / no-decay parts of `backbone` and `head`, at the plan's LRs and weight decays), the
same scheduler class stepped once per step (OneCycleLR, which also cycles SGD momentum),
loss.backward(), optimizer.step(), zero_grad. The hand loop is plain torch; the runtime is
`runtime.loop.train` on the compiled plan, with everything it does per step (plan changes,
metrics.jsonl and lr.csv lines, loss.item(), train-mode bookkeeping).

Time: both loops report every step's wall time and the part of it inside forward, backward
and optimizer.step() (benchmarks/_common.py: the runtime through its step hooks, the hand
loop with the same clock readings). The time per step is the median over a round (the first,
warm-up step left out; evaluation and checkpoints are not inside any step). Rounds alternate
runtime / hand in one process. The wall-time ratio carries this machine's noise (about
+-10% between rounds); the runtime's own cost per step — its time outside forward, backward
and the optimizer step, minus the hand loop's — is the figure that resolves 1%.

Memory: each loop once more in a fresh subprocess; peak RSS over the loop (VmHWM, reset
through /proc/self/clear_refs just before the loop's set-up: resident memory including
torch's CPU allocations, which tracemalloc does not see) minus the RSS at that moment. The runtime's figure includes
its dataset/model set-up inside train(); the hand loop builds the same things.

    python benchmarks/overhead.py                  # 5 rounds x 40 steps, resnet18 32px batch 32, CPU
    python benchmarks/overhead.py --rounds 7 --steps 60
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import median, own_seconds, run_hand, run_runtime, step_seconds

RECIPE = """
name = "overhead"
seed = 0

[model]
arch = "resnet18"
weights = "none"

[data]
builtin = "digits"
classes = ["0", "1", "2", "3", "4"]
image_size = 32
batch_size = 32
workers = 0

[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4

[groups]
backbone = ["backbone"]
head = ["head"]

[phases.all]
train = ["backbone", "head"]
steps = {steps}
lr = {{ head = 0.05, backbone = "head / 10" }}
scheduler = {{ type = "OneCycleLR", pct_start = 0.3 }}

[run]
device = "cpu"
eval_every = "1000 steps"
checkpoint_every = "1000 steps"
"""


def compile_plan(folder: Path, steps: int) -> Any:
    from ftcompile.compiler import compile_recipe

    path = folder / "overhead.toml"
    path.write_text(RECIPE.format(steps=steps))
    return compile_recipe(str(path), None, None)


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (resource.getpagesize() // 1024)


def reset_peak() -> None:
    """Start the peak over: the imports and the compile before the loop peak higher than a
    small model's loop, and ru_maxrss would then read the same for both loops."""
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def peak_kib() -> int:
    """The peak resident set since reset_peak() (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(which: str, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plan = compile_plan(folder, steps)
        import ftcompile.runtime.loop  # noqa: F401  (imports are not the loop's memory)

        before = rss_kib()
        reset_peak()
        (run_runtime if which == "runtime" else run_hand)(plan, folder)
        peak = peak_kib()
        print(json.dumps({"before_kib": before, "peak_kib": peak, "delta_kib": peak - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--memory-child", choices=["runtime", "hand"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.steps)
        return

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet18 32px batch 32, "
        f"{args.steps} steps x {args.rounds} rounds each, CPU"
    )
    wall: dict[str, list[float]] = {"runtime": [], "hand": []}
    own: dict[str, list[float]] = {"runtime": [], "hand": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plan = compile_plan(folder, args.steps)
        # warm-up round, not timed; the same steps: every param group's LR agrees exactly
        assert run_runtime(plan, folder).lrs == run_hand(plan, folder).lrs, "the loops differ"
        for r in range(args.rounds):
            order = (("runtime", run_runtime), ("hand", run_hand))
            for which, fn in order if r % 2 == 0 else order[::-1]:
                times = fn(plan, folder)
                assert len(times.steps) == args.steps, (which, len(times.steps))
                wall[which].append(step_seconds(times))
                own[which].append(own_seconds(times))
            print(
                f"round {r + 1}: runtime {1000 * wall['runtime'][-1]:.2f} ms/step (own {1000 * own['runtime'][-1]:.2f}), "
                f"hand {1000 * wall['hand'][-1]:.2f} ms/step (own {1000 * own['hand'][-1]:.2f})"
            )
    rt, hd = median(wall["runtime"]), median(wall["hand"])
    print(
        f"median time per step: runtime {1000 * rt:.2f} ms, hand {1000 * hd:.2f} ms, ratio runtime/hand {rt / hd:.3f}"
    )
    # Outside forward, backward and optimizer.step(): batch fetch, changes, scheduler, logging.
    own_rt, own_hd = median(own["runtime"]), median(own["hand"])
    extra = own_rt - own_hd
    print(
        f"per step outside forward/backward/optimizer.step: runtime {1000 * own_rt:.2f} ms, hand {1000 * own_hd:.2f} ms; "
        f"the runtime's own cost {1000 * extra:.2f} ms = {100 * extra / rt:.2f}% of its step"
    )

    mem = {}
    for which in ("runtime", "hand"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", which, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        mem[which] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"peak RSS over the loop (VmHWM since set-up - RSS then, fresh process each): "
        f"runtime {mem['runtime']['delta_kib'] / 1024:.0f} MiB, hand {mem['hand']['delta_kib'] / 1024:.0f} MiB, "
        f"ratio {mem['runtime']['delta_kib'] / max(mem['hand']['delta_kib'], 1):.3f} "
        f"(process peaks {mem['runtime']['peak_kib']} / {mem['hand']['peak_kib']} KiB)"
    )


if __name__ == "__main__":
    main()
