"""What the runtime costs over a hand-written PyTorch loop doing the same steps.

Both loops train the same model (runtime.model.build of the plan, same seed) on the same
batches (runtime.data.TrainBatches, the same loader output), with the same param groups
(decay / no-decay parts of `backbone` and `head`, at the plan's LRs and weight decays), the
same scheduler class stepped once per step (OneCycleLR, which also cycles SGD momentum),
loss.backward(), optimizer.step(), zero_grad. The hand loop is plain torch; the runtime is
`runtime.loop.train` on the compiled plan, with everything it does per step (plan changes,
metrics.jsonl and lr.csv lines, loss.item(), train-mode bookkeeping).

Time: an optimizer step-pre-hook (registered identically on both) stamps every
optimizer.step(); the time per step is the median interval between consecutive stamps, so
set-up, the evaluation and checkpoint at the phase end, and the first (warm-up) step do not
count for either loop. Rounds alternate runtime / hand in one process.

Memory: each loop once more in a fresh subprocess; peak RSS (resource.getrusage
ru_maxrss, i.e. resident memory including torch's CPU allocations, which tracemalloc does
not see) minus the RSS just before the loop's set-up began. The runtime's figure includes
its dataset/model set-up inside train(); the hand loop builds the same things.

    python benchmarks/overhead.py                  # 5 rounds x 40 steps, resnet18 32px batch 32, CPU
    python benchmarks/overhead.py --rounds 7 --steps 60
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

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


def stamps_hook(stamps: list[tuple[float, tuple[float, ...]]]):
    def hook(opt: torch.optim.Optimizer, *_: Any) -> None:
        stamps.append((time.perf_counter(), tuple(g["lr"] for g in opt.param_groups)))

    return hook


def run_runtime(plan: Any, folder: Path, stamps: list) -> None:
    import ftcompile.runtime.loop

    build_optimizer = ftcompile.runtime.loop.build_optimizer

    def timed(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        opt = build_optimizer(*args, **kwargs)
        opt.register_step_pre_hook(stamps_hook(stamps))
        return opt

    ftcompile.runtime.loop.build_optimizer = timed
    try:
        run_dir = Path(tempfile.mkdtemp(dir=folder))
        ftcompile.runtime.loop.train(plan, run_dir, folder)
    finally:
        ftcompile.runtime.loop.build_optimizer = build_optimizer


def run_hand(plan: Any, folder: Path, stamps: list) -> None:
    """The loop a person would write by hand, fed exactly what the runtime is fed."""
    import random

    import numpy as np
    from torch import nn

    from ftcompile.runtime.data import TrainBatches, build_datasets
    from ftcompile.runtime.model import build

    random.seed(plan.seed), np.random.seed(plan.seed), torch.manual_seed(plan.seed)
    torch.use_deterministic_algorithms(plan.run.deterministic, warn_only=True)
    data = plan.data
    train_ds, _, _ = build_datasets(data, folder, data["mean"], data["std"])
    batches = TrainBatches(train_ds, data, plan.seed, None)
    model = build(plan.model, folder)
    params = dict(model.named_parameters())
    phase = plan.phases[0]
    lr = {g: phase.lr[g]["peak"] for g in phase.train}  # OneCycleLR's max_lr = the group's lr
    groups = []
    for pg in plan.param_groups:
        groups.append({"params": [params[n] for n in pg.params], "lr": lr[pg.group],
                       **({} if pg.decay else {"weight_decay": 0.0})})
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt.register_step_pre_hook(stamps_hook(stamps))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=plan.total_steps,
                                                pct_start=0.3)
    loss_fn = nn.CrossEntropyLoss()
    spe = data["steps_per_epoch"]
    step = 0
    while step < plan.total_steps:
        for x, y in batches.loader(step // spe):
            model.train()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            if step == plan.total_steps:
                break


def per_step(stamps: list[float]) -> float:
    intervals = [b[0] - a[0] for a, b in zip(stamps[1:], stamps[2:])]  # the first step is warm-up
    return statistics.median(intervals)


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (resource.getpagesize() // 1024)


def memory_child(which: str, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plan = compile_plan(folder, steps)
        import ftcompile.runtime.loop  # noqa: F401  (imports are not the loop's memory)

        before = rss_kib()
        (run_runtime if which == "runtime" else run_hand)(plan, folder, [])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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

    import contextlib
    import io

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet18 32px batch 32, "
          f"{args.steps} steps x {args.rounds} rounds each, CPU")
    times: dict[str, list[float]] = {"runtime": [], "hand": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plan = compile_plan(folder, args.steps)
        warm: dict[str, list] = {"runtime": [], "hand": []}
        with contextlib.redirect_stdout(io.StringIO()):  # warm-up round, not timed
            run_runtime(plan, folder, warm["runtime"])
            run_hand(plan, folder, warm["hand"])
        # the same steps: the LR of every param group at every step agrees exactly
        assert [lr for _, lr in warm["runtime"]] == [lr for _, lr in warm["hand"]], "the loops differ"
        for r in range(args.rounds):
            for which, fn in (("runtime", run_runtime), ("hand", run_hand)) if r % 2 == 0 else (
                    ("hand", run_hand), ("runtime", run_runtime)):
                stamps: list = []
                with contextlib.redirect_stdout(io.StringIO()):  # the runtime's eval line and summary
                    fn(plan, folder, stamps)
                assert len(stamps) == args.steps, (which, len(stamps))
                times[which].append(per_step(stamps))
            print(f"round {r + 1}: runtime {1000 * times['runtime'][-1]:.2f} ms/step, hand {1000 * times['hand'][-1]:.2f} ms/step")
    rt, hd = statistics.median(times["runtime"]), statistics.median(times["hand"])
    print(f"median time per step: runtime {1000 * rt:.2f} ms, hand {1000 * hd:.2f} ms, ratio runtime/hand {rt / hd:.3f}")

    mem = {}
    for which in ("runtime", "hand"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", which, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        mem[which] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS over the loop (ru_maxrss - RSS before set-up, fresh process each): "
          f"runtime {mem['runtime']['delta_kib'] / 1024:.0f} MiB, hand {mem['hand']['delta_kib'] / 1024:.0f} MiB, "
          f"ratio {mem['runtime']['delta_kib'] / max(mem['hand']['delta_kib'], 1):.3f} "
          f"(process peaks {mem['runtime']['peak_kib']} / {mem['hand']['peak_kib']} KiB)")


if __name__ == "__main__":
    main()
