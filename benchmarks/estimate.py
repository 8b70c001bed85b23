"""Estimate against measurement: every phase (and trial alternative) of every shipped recipe.

For each phase the fake-tensor estimate (`ftcompile/estimate.py`) is compared with real
steps of the same setup on this device (random weights, synthetic images):

- peak memory: parameters + buffers + optimizer state + the step's peak (batch,
  activations, gradients, transients). Measured on the CPU by counting live tensor
  storages during a real step (the `LiveTensors` dispatch mode, as runs do), on CUDA by
  `torch.cuda.max_memory_allocated`. EMA, trial copies and the feature cache are
  arithmetic in the estimate and are not materialised here, so they are left out of both.
- step time: predicted from a device profile made by `calibrate` on the standard model
  (resnet18 at 128 px, batch 16), so the ratio shows how well one profile carries over to
  other models; measured as the median of a few steps (forward, backward, optimizer).

On the CPU a full-size step of the big recipes takes minutes, so each setup is reduced
(CNNs to 112 px; the batch cut so that a step does about --budget GFLOP); the reduced
setup is what both sides run, and the table says so. On a GPU nothing is reduced.

Then the issue's reference (resnet18 at 64 px, batch 16; head-only, layer4 and full
phases): `calibrate` on that recipe, then fresh steps against its prediction (+-30% is the
target). Last, the wall and CPU time of `ftcompile plan recipes/resnet50-gradual.toml
--estimate` (the issue's limit: 15 s).

    python benchmarks/estimate.py                  # CPU table (reduced setups)
    python benchmarks/estimate.py --device cuda    # full setups, torch.cuda.max_memory_allocated
    python benchmarks/estimate.py --recipes quickstart resnet50-gradual
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCE = """\
name = "r18-reference"
seed = 0
[model]
arch = "resnet18"
num_classes = 10
[data]
builtin = "digits"
image_size = 64
batch_size = 16
[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4
[groups]
early = ["stem", "stage1", "stage2", "stage3"]
layer4 = ["layer4"]
head = ["head"]
[phases.head]
train = ["head"]
steps = 10
lr = { head = 0.1 }
[phases.layer4]
after = ["head"]
train = ["head", "layer4"]
steps = 10
lr = { head = 0.01, layer4 = "head / 10" }
[phases.full]
after = ["layer4"]
train = ["early", "layer4", "head"]
steps = 10
lr = { head = 0.01, layer4 = "head / 10", early = "layer4 / 10" }
"""


def gib(n: float) -> str:
    from ftcompile.estimate import gib as fmt

    return fmt(n)


def compile_plan(path: Path, device: str) -> object:
    from ftcompile.compiler import CompileOptions, compile_checked

    plan = compile_checked(path, CompileOptions(dataset_size=1020, val_size=200, nominal_data=True)).plan
    return replace(plan, run=replace(plan.run, device=device))


def reduced(ms: object, setup: object, device: str, budget: float) -> tuple[object, str]:
    """The setup to run: on the CPU, CNNs at 112 px and a batch whose step does about
    `budget` FLOPs (ViTs keep their fixed 224 px)."""
    if device != "cpu":
        return setup, ""
    note = []
    plan = ms.plan  # type: ignore[attr-defined]
    if not plan.model.arch.startswith("vit") and setup.image_size > 112 and not setup.cached:  # type: ignore[attr-defined]
        setup = replace(setup, image_size=112)
        note.append("112 px")
    probe = ms.step(replace(setup, batch=2, micro_batches=1))  # type: ignore[attr-defined]
    per_image = (probe.fwd_flops + probe.bwd_flops) / 2
    batch = max(2, min(setup.batch, int(budget / max(per_image * setup.micro_batches, 1))))  # type: ignore[attr-defined]
    if batch < setup.batch:  # type: ignore[attr-defined]
        note.append(f"batch {batch * setup.micro_batches}")  # type: ignore[attr-defined]
        setup = replace(setup, batch=batch)
    return setup, ", ".join(note)


def compare(plan: object, rates: object, device: str, budget: float, steps: int) -> list[list[str]]:
    import torch

    from ftcompile import calibrate, estimate
    from ftcompile.torch_args import state_tensors

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fake, real = estimate.ModelSteps(plan), estimate.ModelSteps(plan, device=device)
    slots = state_tensors(plan.optimizer.type, plan.optimizer.kwargs)  # type: ignore[attr-defined]
    rows: list[list[str]] = []
    phases = [ph.name for ph in plan.phases]  # type: ignore[attr-defined]
    for ph, alt, setup in estimate.setups(plan):
        # Optimizer state: every group trained by this setup or by an earlier phase.
        before = {g for earlier in plan.phases[: phases.index(ph.name)] for g in earlier.train}  # type: ignore[attr-defined]
        setup, note = reduced(fake, setup, device, budget)
        cost = fake.step(setup)
        state = 4 * slots * fake.numel(before | set(setup.train))
        model = fake.param_bytes + fake.buffer_bytes
        est_peak = model + state + cost.step_peak
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        m = calibrate.measure(real, setup, steps=steps, sync=sync)
        measured = torch.cuda.max_memory_allocated() if device == "cuda" else model + m.state + m.step_peak
        est_step = rates.step_seconds(cost.fwd_flops, cost.bwd_flops, real.numel(setup.train))  # type: ignore[attr-defined]
        name = ph.name if alt is None else f"{ph.name}/{alt.k}"
        rows.append(
            [
                plan.recipe.name,
                name,
                f"{setup.batch * setup.micro_batches}x{setup.image_size}"  # type: ignore[attr-defined]
                + (f" ({note})" if note else "")
                + (" cached" if setup.cached else ""),
                gib(est_peak),
                gib(measured),
                f"{measured / est_peak:.2f}",
                f"{est_step:.3f}",
                f"{m.step_s:.3f}",
                f"{m.step_s / est_step:.2f}",
            ]
        )
    return rows


def print_table(rows: list[list[str]], head: list[str]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip(), flush=True)


def machine(device: str) -> str:
    import torch

    from ftcompile import calibrate

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{calibrate.device_name(device)}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load average {load:.1f} at start, torch {torch.__version__}, {platform.platform()}"
    )


def estimate_speed() -> None:
    """Wall and CPU seconds of `ftcompile plan resnet50-gradual --estimate` (a new process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftcompile",
            "plan",
            str(REPO / "recipes/resnet50-gradual.toml"),
            "--dataset-size",
            "1020",
            "--val-size",
            "1020",
            "--estimate",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ftcompile",
            "plan",
            str(REPO / "recipes/resnet50-gradual.toml"),
            "--dataset-size",
            "1020",
            "--val-size",
            "1020",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    plain = time.perf_counter() - t0
    print(
        f"ftcompile plan recipes/resnet50-gradual.toml --estimate: {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"(exit {done.returncode}); plain plan {plain:.1f} s wall"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--recipes", nargs="*", help="recipe names (default: every file in recipes/)")
    parser.add_argument("--budget", type=float, default=12.0, help="GFLOP per step on the CPU (default 12)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setup (default 3)")
    parser.add_argument(
        "--reference-only", action="store_true", help="only the issue's resnet18 reference and the plan timing"
    )
    args = parser.parse_args()
    # Profiles go to a temporary cache: the benchmark never changes the user's.
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ftcompile-estimate-")
    import torch

    from ftcompile import calibrate

    print(f"device: {machine(args.device)}")
    if args.device == "cuda":
        print(f"card: {torch.cuda.get_device_name(0)}")
    work = Path(tempfile.mkdtemp())
    standard = work / "standard.toml"
    standard.write_text(calibrate.STANDARD.format(image_size=128, batch_size=16))
    std_rates = calibrate.calibrate(
        compile_plan(standard, args.device), args.device, steps=args.steps, say=lambda s: None
    )
    print(
        f"standard profile (resnet18 128 px batch 16): forward {std_rates.fwd_flops_per_s / 1e9:.1f}, backward "
        f"{std_rates.bwd_flops_per_s / 1e9:.1f} GFLOP/s, optimizer {std_rates.opt_params_per_s / 1e6:.0f} M params/s"
    )
    print(
        "memory: params + buffers + optimizer state + step peak (EMA, trial copies, feature cache left out); "
        f"measured by {'torch.cuda.max_memory_allocated' if args.device == 'cuda' else 'live tensor storages (dispatch mode)'}"
    )
    print("time: one step (forward, backward, optimizer), predicted from the standard profile\n")
    names = [] if args.reference_only else args.recipes or sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))
    head = ["recipe", "phase", "batch x px", "peak est.", "measured", "ratio", "step est. s", "measured s", "ratio"]
    rows = []
    for name in names:
        plan = compile_plan(REPO / "recipes" / f"{name}.toml", args.device)
        got = compare(plan, std_rates, args.device, args.budget * 1e9, args.steps)
        rows += got
        print(f"... {name}: {len(got)} phase(s) done", file=sys.stderr, flush=True)
    if rows:
        print_table(rows, head)

    print("\nreference (issue 20): resnet18 64 px batch 16; calibrate on this recipe, then fresh steps")
    ref = work / "reference.toml"
    ref.write_text(REFERENCE)
    plan = compile_plan(ref, args.device)
    ref_rates = calibrate.calibrate(plan, args.device, steps=args.steps, say=lambda s: None)
    print_table(compare(plan, ref_rates, args.device, 1e15, args.steps), head)
    print()
    estimate_speed()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
