"""Head-only epochs with and without the feature cache, side by side in one process.

A head-only phase (bn = "frozen", no augmentation) of E epochs is run with the cache on
(the compiler's default for such a phase) and off (`cache_features = false`), for E = 1
and E = 1 + K (K larger with the cache, whose epochs are short). The difference of the two runs' wall times is the cost of K epochs after
the first, which is what the cache is for; the time spent computing the features (once,
at the phase start) is taken out of both cached runs so that its noise does not swamp
the short cached epochs. Prints seconds per later epoch and the speed-up factor.

    python benchmarks/feature_cache.py                  # resnet18, digits at 64 px, CPU
    python benchmarks/feature_cache.py --arch resnet50 --size 96 --extra 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
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


def timed_run(root: Path, arch: str, size: int, epochs: int, cache: bool) -> float:
    """Wall time of a run, less the time spent computing features (timed separately)."""
    from ftcompile.compiler import compile_recipe
    from ftcompile.runtime import features
    from ftcompile.runtime.loop import train

    spent = [0.0]
    build = features.FeatureCache.build

    def timed_build(*a, **k):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return build(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    features.FeatureCache.build = staticmethod(timed_build)  # type: ignore[method-assign]

    name = f"{arch}-{epochs}-{cache}"
    recipe = root / f"{name}.toml"
    recipe.write_text(RECIPE.format(arch=arch, size=size, epochs=epochs, cache=str(cache).lower()))
    plan = compile_recipe(recipe)
    assert plan.phases[0].cache["on"] == cache, plan.phases[0].cache
    (root / name).mkdir()
    start = time.perf_counter()
    try:
        train(plan, root / name, root)
    finally:
        features.FeatureCache.build = build  # type: ignore[method-assign]
    return time.perf_counter() - start - spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--extra", type=int, default=3, help="epochs after the first measured without the cache")
    parser.add_argument("--extra-cached", type=int, default=40, help="... with the cache (they are fast: take many)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        times = {}
        extra = {False: args.extra, True: args.extra_cached}
        for cache in (False, True):  # each pair of runs back to back
            for epochs in (1, 1 + extra[cache]):
                times[cache, epochs] = timed_run(root, args.arch, args.size, epochs, cache)
    per = {c: (times[c, 1 + extra[c]] - times[c, 1]) / extra[c] for c in (False, True)}
    print(f"{args.arch}, digits (1437 train images) at {args.size}px, batch 64, head-only phase, CPU")
    print(f"  run of 1 epoch:          uncached {times[False, 1]:.2f} s   cached {times[True, 1]:.2f} s (+ features, not counted)")
    print(f"  run of 1 + extra epochs: uncached ({1 + extra[False]}) {times[False, 1 + extra[False]]:.2f} s   "
          f"cached ({1 + extra[True]}) {times[True, 1 + extra[True]]:.2f} s")
    print(f"  per epoch after the 1st: uncached {per[False]:.3f} s   cached {per[True]:.3f} s   speed-up x{per[False] / per[True]:.1f}")


if __name__ == "__main__":
    main()
