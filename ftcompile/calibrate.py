"""Device profiles: what a device achieves, so that `plan --estimate` turns FLOPs into seconds.

`ftcompile calibrate [R]` times a few real training steps of the recipe's model (random
weights, synthetic images) in each of its phases' setups, or of a standard resnet18 without
a recipe, and stores the achieved rates: forward and backward FLOP/s and the optimizer's
parameters/s. A step is predicted as fwd/rate_f + bwd/rate_b + trained/rate_opt; the spread
of the calibration's own predictions against its measurements (at least +-30%) makes the
range shown.

A profile is one JSON file per (device, device name, torch version, precision) in the
user's cache folder, `$XDG_CACHE_HOME/ftcompile/profiles/` (default `~/.cache/...`); each
calibration adds an entry (model, image size, batch), and an estimate uses the entry of the
same model and nearest step size (the newest of equals). `ftcompile run` adds an entry from
its own steps when a profile was used (source "run <dir>"), so estimates follow what runs
achieve.

Only the functions that measure import torch (inside them): finding a profile is cheap.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ftcompile import outputs, provenance

FORMAT = 1
# On a CPU a calibration step does at most about this much work (its batch is cut to fit),
# so `calibrate` of a resnet50 recipe takes tens of seconds, not minutes.
CPU_STEP_FLOPS = 40e9
MIN_SPREAD = (0.7, 1.3)

# The model `calibrate` times without a recipe: two phases, head alone and everything.
STANDARD = """\
name = "calibrate-standard"
[model]
arch = "resnet18"
num_classes = 10
[data]
builtin = "digits"
image_size = {image_size}
batch_size = {batch_size}
[optimizer]
type = "SGD"
momentum = 0.9
[groups]
body = ["backbone"]
head = ["head"]
[phases.head]
train = ["head"]
steps = 10
lr = {{ head = 0.1 }}
[phases.full]
after = ["head"]
train = ["body", "head"]
steps = 10
lr = {{ head = 0.01, body = 0.001 }}
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ftcompile" / "profiles"


def device_name(device: str) -> str:
    if device == "cuda":
        import torch  # start-up time: finding a profile (plan --estimate) needs no torch

        return torch.cuda.get_device_name(0)
    return provenance.cpu_model() or "cpu"


def torch_version() -> str:
    return version("torch")


def profile_path(device: str, name: str, torch: str, precision: str) -> Path:
    slug = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")[:60]
    return cache_dir() / f"{device}-{slug}-torch{torch}-{precision}.json"


@dataclass(frozen=True)
class Rates:
    """One calibration: what the device achieved, and where it was measured."""

    fwd_flops_per_s: float
    bwd_flops_per_s: float
    opt_params_per_s: float
    spread: tuple[float, float]
    model: str
    image_size: int
    batch_size: int
    date: str
    source: str  # "calibrate" | "run <dir>"
    path: str = ""
    device: str = ""

    def step_seconds(self, fwd: float, bwd: float, trained: int) -> float:
        return fwd / self.fwd_flops_per_s + bwd / self.bwd_flops_per_s + trained / self.opt_params_per_s

    def forward_seconds(self, flops: float) -> float:
        return flops / self.fwd_flops_per_s

    def describe(self) -> str:
        return (
            f"{self.device}, {self.source} of {self.model} at {self.image_size} px batch {self.batch_size} "
            f"on {self.date[:10]} ({self.path})"
        )


def load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def find(
    device: str, precision: str, arch: str | None = None, image_size: int | None = None, batch_size: int | None = None
) -> Rates | None:
    """The profile entry an estimate uses: this device, torch and precision; among the
    entries of `arch` (else all), the one nearest in images x pixels per step, the newest of
    equals. A cuda device that is not visible here (planning on a laptop) takes the newest
    cuda profile of this torch and precision."""
    if device == "cuda":
        import torch  # start-up time: finding a profile (plan --estimate) needs no torch

        if torch.cuda.is_available():
            paths = [profile_path(device, device_name(device), torch_version(), precision)]
        else:
            paths = sorted(
                cache_dir().glob(f"cuda-*-torch{torch_version()}-{precision}.json"),
                key=lambda p: p.stat().st_mtime,
                reverse=True,
            )[:1]
    else:
        paths = [profile_path(device, device_name(device), torch_version(), precision)]
    for path in paths:
        data = load(path)
        if not data or not data.get("entries"):
            continue
        entries = data["entries"]
        same = [e for e in entries if e["model"] == arch] or entries
        entry = min(reversed(same), key=lambda e: _distance(e, image_size, batch_size))
        label = f"{data['device']} {data['device_name']!r}, torch {data['torch']}, {data['precision']}"
        return Rates(**{**entry, "spread": tuple(entry["spread"]), "path": str(path), "device": label})
    return None


def _distance(entry: dict[str, Any], image_size: int | None, batch_size: int | None) -> float:
    """How far an entry's step size (batch x pixels) is from the one asked about (log scale)."""
    if not image_size or not batch_size:
        return 0.0
    return abs(math.log((entry["image_size"] ** 2 * entry["batch_size"]) / (image_size**2 * batch_size)))


def store(device: str, precision: str, rates: Rates, keep: int = 20) -> Path:
    """Add an entry to the device's profile (the last `keep` entries stay)."""
    path = profile_path(device, device_name(device), torch_version(), precision)
    data = load(path) or {
        "format": FORMAT,
        "device": device,
        "device_name": device_name(device),
        "torch": torch_version(),
        "precision": precision,
        "entries": [],
    }
    entry = {k: v for k, v in asdict(rates).items() if k not in ("path", "device")}
    data["entries"] = [*data["entries"], entry][-keep:]
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """Real steps of one setup: seconds of each part (the fastest of the timed steps), and tensor bytes."""

    fwd_s: float
    bwd_s: float
    opt_s: float
    step_peak: int  # most bytes alive at once beyond parameters, buffers and optimizer state
    state: int  # optimizer state after the steps
    activations: int  # saved for backward (parameters excluded)
    grads: int

    @property
    def step_s(self) -> float:
        return self.fwd_s + self.bwd_s + self.opt_s


def measure(ms: Any, setup: Any, steps: int = 3, sync: Callable[[], None] = lambda: None) -> Measured:
    """Real training steps of `setup` on `ms` (estimate.ModelSteps on a real device): one to
    warm up (it creates the optimizer state, as a run's first step does), one counted by
    LiveTensors (untimed: counting slows it), then `steps` timed ones."""
    import torch  # start-up time: finding a profile (plan --estimate) needs no torch

    from ftcompile.estimate import LiveTensors, tensor_bytes  # imports torch: only measuring needs it

    net = ms.prepare(setup)
    ms.run_step(setup, net, sync=sync)  # warm-up: the optimizer state, the allocator's first blocks
    live = LiveTensors(ms.state_keys())
    with live:
        counted = ms.run_step(setup, net, sync=sync)
    state = tensor_bytes(
        [v for s in ms.optimizer().state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    )
    timed = [ms.run_step(setup, net, sync=sync) for _ in range(steps)]
    # The fastest of the timed steps, part by part: on a shared machine the median measures
    # the neighbours' load as much as the device.
    fwd, bwd, opt = (min(getattr(r, part) for r in timed) for part in ("fwd_s", "bwd_s", "opt_s"))
    return Measured(fwd, bwd, opt, live.peak, state, counted.activations, counted.grads)


def calibrate(plan: Any, device: str, steps: int = 3, say: Callable[[str], None] = print) -> Rates:
    """Time real steps of every distinct phase setup of `plan` (at most 3) on `device`."""
    import torch  # start-up time: finding a profile (plan --estimate) needs no torch

    from ftcompile.estimate import ModelSteps, setups  # imports torch: only measuring needs it

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fake = ModelSteps(plan)
    chosen = []
    for _, _, setup in setups(plan):
        setup = _no_cache(setup)
        if setup not in chosen:
            chosen.append(setup)
    chosen = _spread_out(chosen, 3)
    costs = [fake.step(s) for s in chosen]
    biggest = max(c.fwd_flops + c.bwd_flops for c in costs)
    scale = 1.0
    if device == "cpu" and biggest > CPU_STEP_FLOPS:
        scale = CPU_STEP_FLOPS / biggest

        chosen = [replace(s, batch=max(2, int(s.batch * scale))) for s in chosen]
        costs = [fake.step(s) for s in chosen]
        say(
            f"on the CPU the batch is cut to {chosen[0].batch * chosen[0].micro_batches} images so that a step "
            f"does about {CPU_STEP_FLOPS / 1e9:.0f} GFLOP (rates hardly depend on the batch)"
        )
    real = ModelSteps(plan, device=device)
    rows = []
    for setup, cost in zip(chosen, costs, strict=False):
        m = measure(real, setup, steps=steps, sync=sync)
        rows.append((setup, cost, m, real.numel(setup.train)))
        say(
            f"  {len(setup.train)} group(s) trained, batch {setup.batch * setup.micro_batches}, {setup.image_size} px: "
            f"forward {m.fwd_s * 1000:.0f} ms ({cost.fwd_flops / 1e9:.1f} GFLOP), backward {m.bwd_s * 1000:.0f} ms "
            f"({cost.bwd_flops / 1e9:.1f} GFLOP), optimizer {m.opt_s * 1000:.0f} ms"
        )
    rate_f = sum(c.fwd_flops for _, c, _, _ in rows) / sum(m.fwd_s for _, _, m, _ in rows)
    with_bwd = [(c, m) for _, c, m, _ in rows if c.bwd_flops > 0.05 * c.fwd_flops] or [(c, m) for _, c, m, _ in rows]
    rate_b = max(sum(c.bwd_flops for c, _ in with_bwd), 1) / max(sum(m.bwd_s for _, m in with_bwd), 1e-9)
    rate_o = max(sum(n for *_, n in rows), 1) / max(sum(m.opt_s for _, _, m, _ in rows), 1e-9)
    rates = Rates(
        rate_f,
        rate_b,
        rate_o,
        MIN_SPREAD,
        plan.model.arch,
        chosen[0].image_size,
        chosen[0].batch * chosen[0].micro_batches,
        now(),
        "calibrate",
    )
    ratios = [m.step_s / rates.step_seconds(c.fwd_flops, c.bwd_flops, n) for _, c, m, n in rows]
    spread = (round(min(MIN_SPREAD[0], min(ratios) * 0.9), 3), round(max(MIN_SPREAD[1], max(ratios) * 1.1), 3))
    return Rates(**{**asdict(rates), "spread": spread})


def _no_cache(setup: Any) -> Any:
    return replace(setup, cached=None)


def _spread_out(items: list[Any], n: int) -> list[Any]:
    """At most n items, the first and last kept (the fewest and the most trained)."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def from_run(
    rates: Rates,
    predicted: list[float],
    measured: list[float],
    source: str,
    model: str,
    image_size: int,
    batch_size: int,
) -> Rates | None:
    """Rates that reproduce a run's own steps: `rates` (what the estimate used) scaled by the
    median of measured / predicted step seconds over the run's phases, as a new entry
    ("run ..."), so the next estimate of this model and size starts from what runs achieve."""
    ratios = [m / p for p, m in zip(predicted, measured, strict=False) if p > 0 and m > 0]
    if not ratios:
        return None
    k = statistics.median(ratios)
    spread = (round(min(MIN_SPREAD[0], min(ratios) / k * 0.9), 3), round(max(MIN_SPREAD[1], max(ratios) / k * 1.1), 3))
    return Rates(
        rates.fwd_flops_per_s / k,
        rates.bwd_flops_per_s / k,
        rates.opt_params_per_s / k,
        spread,
        model,
        image_size,
        batch_size,
        now(),
        source,
    )
