"""How much memory a plan's model needs before a single activation: parameters, gradients
and optimizer state, against this machine's memory.

A recipe with `num_classes = 1e9` compiles (the meta device allocates nothing) and dies at
run time asking for terabytes; `ftcompile plan` shows the estimate and says so first.
Everything is counted in fp32 (autocast keeps fp32 parameters): parameters all the time,
gradients for the largest set a phase trains, and the optimizer's state for every
parameter that ever trains (torch keeps it after a group is frozen again).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ftcompile.plan import Plan
from ftcompile.torch_args import state_tensors

FP32 = 4


@dataclass(frozen=True)
class Memory:
    params: int  # bytes
    grads: int
    state: int
    optimizer: str

    @property
    def total(self) -> int:
        return self.params + self.grads + self.state


def estimate(plan: Plan) -> Memory:
    numel = {g.name: g.numel for g in plan.groups}
    trained_ever = {g for ph in plan.phases for g in ph.train}
    most_trained = max((sum(numel[g] for g in ph.train) for ph in plan.phases), default=0)
    slots = state_tensors(plan.optimizer.type, plan.optimizer.kwargs)
    return Memory(
        params=FP32 * plan.model.total_params,
        grads=FP32 * most_trained,
        state=FP32 * slots * sum(numel[g] for g in trained_ever),
        optimizer=plan.optimizer.type,
    )


def machine_memory() -> int | None:
    """Physical memory, or the container's limit when that is lower (cgroup v2 / v1)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def describe(plan: Plan) -> str:
    m = estimate(plan)
    return (
        f"memory params {size(m.params)} + gradients {size(m.grads)} + {m.optimizer} state {size(m.state)}"
        f" = {size(m.total)} before activations"
    )


def warning(plan: Plan, available: int | None = None) -> str | None:
    """A warning when parameters, gradients and optimizer state alone exceed the machine."""
    available = machine_memory() if available is None else available
    m = estimate(plan)
    if available is None or m.total <= available:
        return None
    return (
        f"warning: parameters, gradients and optimizer state alone need {size(m.total)}, more than this "
        f"machine's {size(available)} of memory (check model.num_classes and model.head)"
    )


_UNITS = {
    "": 1,
    "B": 1,
    "K": 2**10,
    "KB": 2**10,
    "KIB": 2**10,
    "M": 2**20,
    "MB": 2**20,
    "MIB": 2**20,
    "G": 2**30,
    "GB": 2**30,
    "GIB": 2**30,
    "T": 2**40,
    "TB": 2**40,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'24GB', '24 GiB', '80G', '512MB' -> bytes. Binary units throughout: a "24 GB" GPU has
    24 GiB, which is what nvidia-smi and torch.cuda report."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 24GB, 80GiB or 512MB")
    return int(float(m.group(1)) * _UNITS[unit])
