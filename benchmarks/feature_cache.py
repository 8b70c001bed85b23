"""Head-only epochs with and without the feature cache, side by side in one process.

A head-only phase (bn = "frozen", no augmentation) of 1 + K epochs is run with the cache on
(the compiler's default for such a phase) and off (`cache_features = false`), K larger with
the cache, whose epochs are short. The runtime's step hooks give every step's wall time:
the epochs after the first are what the cache is for (the first computes the features).
Prints seconds per later epoch and the speed-up factor.

    python benchmarks/feature_cache.py                  # resnet18, digits at 64 px, CPU
    python benchmarks/feature_cache.py --arch resnet50 --size 96 --extra 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

RECIPE = """
name = "cache-bench"
seed = 0
[model]
arch = "{arch}"
weights = "none"
[model.head]
hidden = [128]
batchnorm = true
dropout = 0.2
[data]
builtin = "digits"
image_size = {size}
batch_size = 64
workers = 0
[optimizer]
type = "SGD"
momentum = 0.9
[groups]
body = ["backbone"]
head = ["head"]
[phases.head]
train = ["head"]
epochs = {epochs}
lr = {{ head = 0.05 }}
bn = "frozen"
cache_features = {cache}
scheduler = {{ type = "OneCycleLR" }}
[run]
device = "cpu"
eval_every = "1000 epochs"
checkpoint_every = "1000 epochs"
"""


def epoch_seconds(root: Path, arch: str, size: int, epochs: int, cache: bool) -> tuple[float, float]:
    """(first epoch, mean of the later epochs) in seconds: sums of the steps' wall times,
    reported by the runtime's step hooks (the features are computed in the first step)."""
    from _common import run_runtime

    from ftcompile.compiler import compile_recipe

    recipe = root / f"{arch}-{epochs}-{cache}.toml"
    recipe.write_text(RECIPE.format(arch=arch, size=size, epochs=epochs, cache=str(cache).lower()))
    plan = compile_recipe(recipe)
    assert plan.phases[0].cache.on == cache, plan.phases[0].cache
    spe = plan.data.steps_per_epoch
    seconds = [s.seconds for s in run_runtime(plan, root).steps]
    return sum(seconds[:spe]), sum(seconds[spe:]) / (epochs - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--extra", type=int, default=3, help="epochs after the first measured without the cache")
    parser.add_argument("--extra-cached", type=int, default=40, help="... with the cache (they are fast: take many)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extra = {False: args.extra, True: args.extra_cached}
        times = {cache: epoch_seconds(root, args.arch, args.size, 1 + extra[cache], cache) for cache in (False, True)}
    (first_u, later_u), (first_c, later_c) = times[False], times[True]
    print(f"{args.arch}, digits (1437 train images) at {args.size}px, batch 64, head-only phase, CPU")
    print(f"  first epoch:            uncached {first_u:.2f} s   cached {first_c:.2f} s (computes the features)")
    print(
        f"  per epoch after the 1st: uncached {later_u:.3f} s ({extra[False]} epochs)   "
        f"cached {later_c:.3f} s ({extra[True]} epochs)   speed-up x{later_u / later_c:.1f}"
    )


if __name__ == "__main__":
    main()
