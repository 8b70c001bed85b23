"""Training throughput: the runtime against a hand-written loop, per model and precision,
with the achieved model FLOP/s, and the input pipeline's own images/s beside it.

For each arch (resnet50, efficientnet_b0, vit_b_16) and mode (fp32, bf16 autocast,
bf16 + channels_last, and torch.compile with --compile), both loops train the same model
(runtime.model.build of the plan), fed the same batches (runtime.data.TrainBatches over a
generated ImageFolder of random JPEGs), with the same param groups, optimizer, OneCycleLR
scheduler and autocast dtype. Rounds alternate runtime / hand in one process; the time per
step is the median interval between optimizer steps, stamped by the same optimizer
step-pre-hook in both loops (set-up, warm-up and the phase-end evaluation do not count).

FLOP/s: forward FLOPs per image from torch.utils.flop_counter on one image, times 3 for
a full fine-tuning step (forward + backward), times images/s; next to the device's peak
where it is known (CUDA devices in PEAK_TFLOPS; "n/a" on a CPU).

Data: images/s of TrainBatches.loader alone (decode + augment + collate, the recipe's
workers), to see whether the input pipeline or the training step limits.

    python benchmarks/throughput.py --device cpu --batch 8 --steps 6 --rounds 2    # CPU, small
    python benchmarks/throughput.py --device cuda --batch 64 --steps 60 --compile    # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

# Dense peak TFLOP/s by (device name fragment, precision), from the vendors' data sheets.
PEAK_TFLOPS = {
    ("H100", "bf16"): 989.0, ("H100", "fp32"): 67.0,
    ("H200", "bf16"): 989.0, ("H200", "fp32"): 67.0,
    ("A100", "bf16"): 312.0, ("A100", "fp32"): 19.5,
}
MODES = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False),
         "bf16+cl": ("bf16", True, False), "compile": ("bf16", True, True)}

RECIPE = """
name = "throughput"
seed = 0
[model]
arch = "{arch}"
weights = "none"
num_classes = 10
[data]
train = "data/train"
val = "data/val"
image_size = 224
batch_size = {batch}
workers = {workers}
augment = [{{ op = "RandomResizedCrop", size = 224 }}, {{ op = "RandomHorizontalFlip" }}]
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
lr = {{ head = 0.01, backbone = "head / 10" }}
scheduler = {{ type = "OneCycleLR" }}
[run]
device = "{device}"
precision = "{precision}"
channels_last = {channels_last}
compile = {compile}
deterministic = false
eval_every = "100000 steps"
checkpoint_every = "100000 steps"
"""


def make_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 20)):
        for c in range(10):
            folder = root / "data" / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(max(2, count // 10)):
                Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def stamp(stamps: list[float]) -> Any:
    return lambda *_: stamps.append(time.perf_counter())


def run_runtime(plan: Any, root: Path) -> list[float]:
    import ftcompile.runtime.loop

    stamps: list[float] = []
    original = ftcompile.runtime.loop.build_optimizer

    def with_hook(*a: Any, **k: Any) -> torch.optim.Optimizer:
        opt = original(*a, **k)
        opt.register_step_pre_hook(stamp(stamps))
        return opt

    ftcompile.runtime.loop.build_optimizer = with_hook
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ftcompile.runtime.loop.train(plan, Path(tempfile.mkdtemp(dir=root)), root)
    finally:
        ftcompile.runtime.loop.build_optimizer = original
    return stamps


def run_hand(plan: Any, root: Path) -> list[float]:
    """A plain PyTorch loop over the same batches, groups, optimizer and scheduler."""
    from ftcompile.runtime.data import TrainBatches, build_datasets
    from ftcompile.runtime.model import build

    torch.manual_seed(plan.seed)
    run, data = plan.run, plan.data
    device = torch.device("cuda" if run["device"] == "cuda" else "cpu")
    train_ds, _, _ = build_datasets(data, root, data["mean"], data["std"])
    batches = TrainBatches(train_ds, data, plan.seed, None)
    model = build(plan.model, root).to(device)
    if run["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    params = dict(model.named_parameters())
    lrs = plan.phases[0].lr
    groups = [{"params": [params[n] for n in pg.params], "lr": lrs[pg.group]["peak"],
               **({} if pg.decay else {"weight_decay": 0.0})} for pg in plan.param_groups]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    stamps: list[float] = []
    opt.register_step_pre_hook(stamp(stamps))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=plan.total_steps)
    net = torch.compile(model) if run["compile"] else model
    dtype = {"bf16": torch.bfloat16}.get(run["precision"])
    loss_fn = torch.nn.CrossEntropyLoss()
    step, spe = 0, data["steps_per_epoch"]
    model.train()
    while step < plan.total_steps:
        for x, y in batches.loader(step // spe):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if run["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss.item()  # the runtime logs every step's loss; so does a typical hand loop
            step += 1
            if step == plan.total_steps:
                break
    return stamps


def per_step(stamps: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))  # the first step warms up


def forward_flops(arch: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from ftcompile.arch import build_model

    model = build_model(arch, 10, None, device="cpu").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    return float(counter.get_total_flops())


def data_rate(plan: Any, root: Path, batches_n: int) -> float:
    from ftcompile.runtime.data import TrainBatches, build_datasets

    data = plan.data
    train_ds, _, _ = build_datasets(data, root, data["mean"], data["std"])
    loader = TrainBatches(train_ds, data, plan.seed, None).loader(0)
    start, seen = time.perf_counter(), 0
    for i, (x, _) in enumerate(loader):
        seen += len(x)
        if i + 1 == batches_n:
            break
    return seen / (time.perf_counter() - start)


def peak(device: str, precision: str) -> str:
    if device != "cuda":
        return "n/a"
    name = torch.cuda.get_device_name(0)
    for (frag, prec), tf in PEAK_TFLOPS.items():
        if frag in name and prec == ("bf16" if precision == "bf16" else "fp32"):
            return f"{tf:.0f}"
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", nargs="+", default=["resnet50", "efficientnet_b0", "vit_b_16"])
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16+cl"], choices=list(MODES))
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on a CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    modes = args.modes + (["compile"] if args.compile else [])
    from ftcompile.compiler import compile_recipe

    print(f"torch {torch.__version__}, {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else f", {torch.get_num_threads()} threads")
          + f", batch {args.batch}, 224px, {args.steps} steps x {args.rounds} alternating rounds")
    print(f"{'arch':<16} {'mode':<8} {'runtime img/s':>13} {'hand img/s':>10} {'ratio':>6} {'TFLOP/s':>8} {'peak':>5} {'data img/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root, n=max(4 * args.batch, 80))
        for arch in args.arch:
            flops = forward_flops(arch)
            for mode in modes:
                precision, cl, comp = MODES[mode]
                path = root / f"{arch}-{mode}.toml"
                path.write_text(RECIPE.format(arch=arch, batch=args.batch, workers=args.workers, steps=args.steps,
                                              device=args.device, precision=precision, channels_last=str(cl).lower(),
                                              compile=str(comp).lower()))
                plan = compile_recipe(path)
                times: dict[str, list[float]] = {"runtime": [], "hand": []}
                for _ in range(args.rounds):
                    times["runtime"].append(per_step(run_runtime(plan, root)))
                    times["hand"].append(per_step(run_hand(plan, root)))
                rt, hd = (statistics.median(times[k]) for k in ("runtime", "hand"))
                rate = args.batch / rt
                tflops = 3 * flops * rate / 1e12
                print(f"{arch:<16} {mode:<8} {rate:>13.1f} {args.batch / hd:>10.1f} {rt / hd:>6.3f} {tflops:>8.3f} "
                      f"{peak(args.device, precision):>5} {data_rate(plan, root, 4):>10.1f}", flush=True)
    print("ratio = runtime time per step / hand-written loop time per step (target <= 1.03 on CPU)")


if __name__ == "__main__":
    main()
