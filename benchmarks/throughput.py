"""Training throughput: the runtime against a hand-written loop, per model and precision,
with the achieved model FLOP/s, and the input pipeline's own images/s beside it.

For each arch (resnet50, efficientnet_b0, vit_b_16) and mode (fp32, bf16 autocast,
bf16 + channels_last, and torch.compile with --compile), both loops train the same model
(runtime.model.build of the plan), fed the same batches (runtime.data.TrainBatches over a
generated ImageFolder of random JPEGs), with the same param groups, optimizer, OneCycleLR
scheduler and autocast dtype (the hand loop is benchmarks/_common.py's, shared with
overhead.py). Rounds alternate runtime / hand in one process; the time per step is the
median step wall time, timed the same way in both loops (set-up, the warm-up step and the
phase-end evaluation do not count).

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
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import make_images, median, run_hand, run_runtime, step_seconds

# Dense peak TFLOP/s by (device name fragment, precision), from the vendors' data sheets.
PEAK_TFLOPS = {
    ("H100", "bf16"): 989.0,
    ("H100", "fp32"): 67.0,
    ("H200", "bf16"): 989.0,
    ("H200", "fp32"): 67.0,
    ("A100", "bf16"): 312.0,
    ("A100", "fp32"): 19.5,
}
MODES = {
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+cl": ("bf16", True, False),
    "compile": ("bf16", True, True),
}

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
    train_ds, _, _ = build_datasets(data, root, data.mean, data.std)
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

    print(
        f"torch {torch.__version__}, {args.device}"
        + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else f", {torch.get_num_threads()} threads")
        + f", batch {args.batch}, 224px, {args.steps} steps x {args.rounds} alternating rounds"
    )
    print(
        f"{'arch':<16} {'mode':<8} {'runtime img/s':>13} {'hand img/s':>10} {'ratio':>6} {'TFLOP/s':>8} {'peak':>5} {'data img/s':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root, 10, {"train": max(4 * args.batch, 80) // 10, "val": 2}, 256)
        for arch in args.arch:
            flops = forward_flops(arch)
            for mode in modes:
                precision, cl, comp = MODES[mode]
                path = root / f"{arch}-{mode}.toml"
                path.write_text(
                    RECIPE.format(
                        arch=arch,
                        batch=args.batch,
                        workers=args.workers,
                        steps=args.steps,
                        device=args.device,
                        precision=precision,
                        channels_last=str(cl).lower(),
                        compile=str(comp).lower(),
                    )
                )
                plan = compile_recipe(path)
                times: dict[str, list[float]] = {"runtime": [], "hand": []}
                for _ in range(args.rounds):
                    times["runtime"].append(step_seconds(run_runtime(plan, root)))
                    times["hand"].append(step_seconds(run_hand(plan, root)))
                rt, hd = (median(times[k]) for k in ("runtime", "hand"))
                rate = args.batch / rt
                tflops = 3 * flops * rate / 1e12
                print(
                    f"{arch:<16} {mode:<8} {rate:>13.1f} {args.batch / hd:>10.1f} {rt / hd:>6.3f} {tflops:>8.3f} "
                    f"{peak(args.device, precision):>5} {data_rate(plan, root, 4):>10.1f}",
                    flush=True,
                )
    print("ratio = runtime time per step / hand-written loop time per step (target <= 1.03 on CPU)")


if __name__ == "__main__":
    main()
