"""What a frozen backbone saves: time and peak memory of one training step with only the
head trainable, with layer4 (the last stage) + head, and with everything, for resnet50 and
vit_b_16. Each configuration runs in a fresh subprocess (so peak RSS is its own), and the
full step is the baseline of the ratios.

PyTorch records no autograd graph for operations whose inputs and parameters all have
requires_grad=False, so when nothing below a point trains, that part runs graph-free
without any special code: freezing (requires_grad=False, as the runtime does) is the
whole mechanism. This benchmark shows what that is worth; the feature cache
(`cache_features`) removes the frozen forward pass too.

    python benchmarks/frozen_backbone.py                      # batch 16, 224px, CPU
    python benchmarks/frozen_backbone.py --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from ftcompile.arch import build_model, aliases
arch, config, batch, size, steps, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
model = build_model(arch, 10, None, device="cpu").to(device)
names = aliases(arch, model)
stages = [k for k in names if k.startswith("stage")]
train = {"head": ["head"], "last+head": ["head", stages[-1]], "full": ["head", "backbone"]}[config]
prefixes = [p for a in train for p in names[a]]
for n, p in model.named_parameters():
    p.requires_grad_(any(n == q or n.startswith(q + ".") for q in prefixes))
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
x = torch.randn(batch, 3, size, size, device=device)
y = torch.randint(0, 10, (batch,), device=device)
loss_fn = torch.nn.CrossEntropyLoss()
def step():
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss
model.train()
step()  # warm-up
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
for _ in range(steps):
    step()
if device == "cuda":
    torch.cuda.synchronize()
seconds = (time.perf_counter() - start) / steps
peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "trainable": sum(p.numel() for p in params)}))
"""


def measure(arch: str, config: str, args: argparse.Namespace) -> dict:
    size = 224
    out = subprocess.run(
        [sys.executable, "-c", CHILD, arch, config, str(args.batch), str(size), str(args.steps), args.device],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", nargs="+", default=["resnet50", "vit_b_16"])
    args = parser.parse_args()
    what = "peak RSS of the process" if args.device == "cpu" else "torch.cuda.max_memory_allocated"
    print(f"one training step, batch {args.batch}, 224px, {args.device}, mean of {args.steps} steps; memory = {what}")
    print(f"{'arch':<10} {'trainable':<10} {'params':>10} {'s/step':>8} {'x full':>7} {'peak MB':>8} {'x full':>7}")
    for arch in args.arch:
        rows = {c: measure(arch, c, args) for c in ("full", "last+head", "head")}
        base = rows["full"]
        for config, r in rows.items():
            print(
                f"{arch:<10} {config:<10} {r['trainable']:>10,} {r['seconds']:>8.3f} {r['seconds'] / base['seconds']:>7.2f} "
                f"{r['peak'] / 2**20:>8.0f} {r['peak'] / base['peak']:>7.2f}"
            )


if __name__ == "__main__":
    main()
