"""Images/s of the resnet50 recipe on synthetic data: fp32, bf16, bf16 + channels_last.

Runs the real runtime (ftcompile.compiler + runtime.loop) on a generated ImageFolder of
random JPEGs, a few hundred steps per setting, all in one process so the settings compare
side by side (the time includes building the model and data loaders, a few seconds). Needs CUDA for meaningful figures; `--device cpu --steps 4 --image-size 64`
checks that it works anywhere.

    python benchmarks/gpu_smoke.py                 # on a CUDA machine
    python benchmarks/gpu_smoke.py --device cpu --steps 4 --image-size 64 --batch 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RECIPE = """
name = "gpu-smoke"
seed = 0
[model]
arch = "resnet50"
weights = "none"
[model.head]
pool = "concat"
hidden = [512]
dropout = [0.25, 0.5]
batchnorm = true
[data]
train = "data/train"
val = "data/val"
image_size = {size}
batch_size = {batch}
workers = {workers}
augment = [{{ op = "RandomResizedCrop", size = {size}, scale = [0.5, 1.0] }}, {{ op = "RandomHorizontalFlip" }}]
[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4
[groups]
early = ["stem", "stage1", "stage2"]
layer3 = ["stage3"]
layer4 = ["layer4"]
head = ["head"]
[phases.warmup]
train = ["head"]
steps = {third}
lr = {{ head = 3e-3 }}
scheduler = {{ type = "OneCycleLR" }}
[phases.layer4]
after = ["warmup"]
train = ["head", "layer4"]
steps = {third}
lr = {{ head = 1e-3, layer4 = "head / 10" }}
[phases.all]
after = ["layer4"]
train = ["early", "layer3", "layer4", "head"]
steps = {third}
lr = {{ head = 3e-4 }}
lr_decay = 0.1
[run]
device = "{device}"
precision = "{precision}"
channels_last = {channels_last}
deterministic = false
eval_every = "100000 steps"
checkpoint_every = "100000 steps"
"""


def make_images(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", max(8, n // 8))):
        for c in range(4):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count // 4):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def run_one(root: Path, args: argparse.Namespace, precision: str, channels_last: bool) -> float:
    from ftcompile.runtime.loop import train

    from ftcompile.compiler import compile_recipe

    text = RECIPE.format(
        size=args.image_size,
        batch=args.batch,
        workers=args.workers,
        third=max(1, args.steps // 3),
        device=args.device,
        precision=precision,
        channels_last=str(channels_last).lower(),
    )
    recipe = root / f"{precision}-{channels_last}.toml"
    recipe.write_text(text)
    plan = compile_recipe(recipe)
    run_dir = root / f"run-{precision}-{channels_last}"
    run_dir.mkdir()
    started = time.perf_counter()
    train(plan, run_dir, root)
    seconds = time.perf_counter() - started
    return plan.total_steps * args.batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root, n=max(args.batch * 4, 64), size=max(args.image_size, 64) + 32)
        settings = [("fp32", False), ("bf16", False), ("bf16", True)]
        rates = {s: run_one(root, args, *s) for s in settings}
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(
        f"resnet50, {args.steps} steps (3 phases: head, +layer4, all), batch {args.batch}, {args.image_size}px, {device}"
    )
    base = rates[("fp32", False)]
    for (precision, cl), rate in rates.items():
        name = precision + (" + channels_last" if cl else "")
        print(f"  {name:<24} {rate:8.1f} images/s   x{rate / base:.2f} vs fp32")


if __name__ == "__main__":
    main()
