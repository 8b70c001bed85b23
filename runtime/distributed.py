"""Several processes through torchrun + DistributedDataParallel (no home-made engine).

`torchrun --nproc_per_node=N -m ftcompile run RECIPE` (or `ftcompile run --nproc N`) starts
N copies; each reads its rank from the environment torchrun sets. The global batch is
`data.batch_size`; each rank takes a contiguous B/N slice of every global batch, so steps
per epoch are the same as with one process.

DDP registers its gradient hooks for the parameters that require grad when it is built,
so a group unfrozen later would silently miss the all-reduce and the ranks would drift
apart. The runtime therefore rebuilds the wrapper whenever the plan changes the trainable
set (and only then), and checks at every phase end that all ranks hold bitwise the same
parameters.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ftcompile.errors import RecipeError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(device: str) -> Dist:
    """Join the process group torchrun describes; a single process needs none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(d: Dist, wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            "CUDA is not available on this machine", key="run.device", suggestion='use device = "auto" or "cpu"'
        )
    if wanted != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """A fresh DDP wrapper over the parameters that require grad now."""
    if not d.enabled:
        return model

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def sync_batchnorm(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """run.sync_bn: BatchNorm -> SyncBatchNorm before the DDP wrapper (a no-op with one
    process). The parameters stay the same objects, so groups and the optimizer still hold
    them. torch synchronises statistics on GPUs only: on CPU processes it is an error here,
    not at the first batch."""
    if not d.enabled:
        return model
    if device.type == "cpu":
        raise RecipeError(
            "run.sync_bn needs GPU processes: torch's SyncBatchNorm does not run on CPU",
            key="run.sync_bn",
            suggestion='set sync_bn = false on CPU (or bn = "frozen" so that BatchNorm keeps its statistics)',
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def mean(value: float, d: Dist) -> float:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def sums(values: list[float], d: Dist) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's value on every rank (e.g. the run directory it created)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def param_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_in_sync(model: nn.Module, d: Dist, step: int) -> list[str]:
    """Every rank's parameter digest; an error when they differ (the ranks drifted apart)."""
    if not d.enabled:
        return []
    digests: list[Any] = [None] * d.world
    dist.all_gather_object(digests, param_digest(model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks drifted apart at step {step}: parameter digests {digests}")
    return digests


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """`ftcompile run --nproc N ...` = torchrun --nproc_per_node N -m ftcompile run ..."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "ftcompile",
        *argv,
    ]
    return subprocess.call(cmd)
