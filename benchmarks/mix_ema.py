"""MixUp/CutMix + EMA against the same run without, side by side in one process.

A short quickstart-like run on the builtin digits (resnet18 from scratch, 32 px, all 10
classes): a head warm-up, then everything with OneCycleLR. The two recipes differ only in
`data.mix` and `run.ema`; both use the same seed, data order and augmentation. Prints the
final validation top-1 (raw weights, and the EMA weights where there are some) and the
wall time of each run, and their ratio.

    python benchmarks/mix_ema.py                   # 6 epochs in the main phase
    python benchmarks/mix_ema.py --epochs 12
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

RECIPE = """
name = "{name}"
seed = 0
[model]
arch = "resnet18"
weights = "none"
[data]
builtin = "digits"
image_size = 32
batch_size = 32
workers = 0
augment = [{{ op = "RandomAffine", degrees = 10, translate = [0.1, 0.1], scale = [0.9, 1.1] }}]
label_smoothing = 0.1
{mix}
[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 5e-4
[groups]
body = ["backbone"]
head = ["head"]
[phases.warmup]
train = ["head"]
epochs = 1
lr = 0.05
[phases.all]
after = ["warmup"]
train = ["body", "head"]
epochs = {epochs}
lr = 0.05
scheduler = {{ type = "OneCycleLR", pct_start = 0.2 }}
[run]
device = "cpu"
eval_every = "100 epochs"
checkpoint_every = "100 epochs"
{ema}
"""


def run(folder: Path, name: str, epochs: int, knobs: bool) -> dict[str, float]:
    from ftcompile.runtime import loop

    from ftcompile.compiler import compile_recipe

    path = folder / f"{name}.toml"
    path.write_text(
        RECIPE.format(
            name=name,
            epochs=epochs,
            mix="mix = { mixup_alpha = 0.2, cutmix_alpha = 1.0, prob = 1.0, switch_prob = 0.5 }" if knobs else "",
            ema="ema = { decay = 0.99, every = 1, warmup = true }" if knobs else "",
        )
    )
    plan = compile_recipe(path)
    run_dir = folder / name
    run_dir.mkdir()
    began = time.perf_counter()
    result = loop.train(plan, run_dir, folder)
    seconds = time.perf_counter() - began
    last = result["evals"][-1]
    return {"steps": plan.total_steps, "seconds": seconds, **{k: v for k, v in last.items() if isinstance(v, float)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the main phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain = run(folder, "plain", args.epochs, knobs=False)
        mixed = run(folder, "mix-ema", args.epochs, knobs=True)
    print(f"{'run':<10} {'steps':>5} {'top1':>7} {'top1_ema':>8} {'val_loss':>8} {'seconds':>8}")
    for name, r in (("plain", plain), ("mix+ema", mixed)):
        ema = f"{r['top1_ema']:.4f}" if "top1_ema" in r else "-"
        print(f"{name:<10} {r['steps']:>5} {r['top1']:>7.4f} {ema:>8} {r['val_loss']:>8.4f} {r['seconds']:>8.1f}")
    print(f"time ratio mix+ema / plain: {mixed['seconds'] / plain['seconds']:.2f}")


if __name__ == "__main__":
    main()
