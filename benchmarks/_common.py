"""What the benchmarks share: the hand-written loop the runtime is compared with, and the
step timing of both, taken the same way.

Both loops report a `StepInfo` per optimizer step (runtime/loop.py): `seconds` is the wall
time of the whole step (fetching the batch, applying the plan's changes, forward, backward,
optimizer step, scheduler, logging) and `compute` the part inside forward, backward and
`optimizer.step()` (+ zero_grad and reading the loss). The runtime reports it through its
step hooks; the hand loop takes the same clock readings at the same places. So
`seconds - compute` is each loop's own cost per step, and the runtime's extra cost over a
hand-written loop is the difference of the two — a figure that resolves 1% where the
ratio of wall times, on a noisy machine, cannot.
"""

from __future__ import annotations

import contextlib
import io
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ftcompile.runtime.loop import Hooks, Session, StepInfo, train

from ftcompile.plan import Plan
from ftcompile.torch_args import optimizer_class


class StepTimes(Hooks):
    """Collects the StepInfo of every step of a runtime session."""

    def __init__(self) -> None:
        self.steps: list[StepInfo] = []
        self.lrs: list[tuple[float, ...]] = []

    def on_step(self, session: Session, info: StepInfo) -> None:
        self.steps.append(info)
        self.lrs.append(tuple(info.lrs.values()))


def run_runtime(plan: Plan, root: Path, hooks: Sequence[Hooks] = ()) -> StepTimes:
    """`ftcompile run` of the plan in a temporary run directory under `root` (output hidden)."""
    times = StepTimes()
    with contextlib.redirect_stdout(io.StringIO()):
        train(plan, Path(tempfile.mkdtemp(dir=root)), root, hooks=[times, *hooks])
    return times


def run_hand(plan: Plan, root: Path) -> StepTimes:
    """The loop a person would write by hand for a one-phase OneCycleLR plan, fed exactly
    what the runtime is fed: the same model, batches, param groups, optimizer and schedule."""
    from ftcompile.runtime.data import TrainBatches, build_datasets
    from ftcompile.runtime.model import build
    from torch import nn

    assert len(plan.phases) == 1 and plan.phases[0].scheduler and plan.phases[0].scheduler.type == "OneCycleLR"
    random.seed(plan.seed), np.random.seed(plan.seed), torch.manual_seed(plan.seed)
    torch.use_deterministic_algorithms(plan.run.deterministic, warn_only=True)
    run, data, phase = plan.run, plan.data, plan.phases[0]
    device = torch.device("cuda" if run.device == "cuda" else "cpu")
    train_ds, _, _ = build_datasets(data, root, data.mean, data.std)
    batches = TrainBatches(train_ds, data, plan.seed, None)
    model = build(plan.model, root).to(device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = dict(model.named_parameters())
    max_lr = phase.scheduler.args["max_lr"]  # per group: the group's lr
    groups = [
        {
            "params": [params[n] for n in pg.params],
            "lr": max_lr[pg.group],
            **({} if pg.decay else {"weight_decay": 0.0}),
        }
        for pg in plan.param_groups
    ]
    opt = optimizer_class(plan.optimizer.type)(groups, **plan.optimizer.kwargs)
    args = {k: v for k, v in phase.scheduler.args.items() if k not in ("max_lr", "total_steps")}
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=plan.total_steps, **args
    )
    net = torch.compile(model) if run.compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision)
    loss_fn = nn.CrossEntropyLoss()
    times = StepTimes()
    step, spe = 0, data.steps_per_epoch
    while step < plan.total_steps:
        loader = iter(batches.loader(step // spe))
        for _ in range(min(spe, plan.total_steps - step)):
            started = time.perf_counter()
            x, y = next(loader)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lrs = tuple(float(g["lr"]) for g in opt.param_groups)
            model.train()
            compute = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = loss.item()
            compute = time.perf_counter() - compute
            sched.step()
            info = StepInfo(
                step,
                phase.name,
                value,
                dict(zip(plan.param_group_names, lrs, strict=False)),
                len(y),
                time.perf_counter() - started,
                compute,
            )
            times.steps.append(info)
            times.lrs.append(lrs)
            step += 1
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def step_seconds(times: StepTimes) -> float:
    """Median wall time per step; the first step (warm-up, wrapper and cache set-up) is left out."""
    return median([s.seconds for s in times.steps[1:]])


def own_seconds(times: StepTimes) -> float:
    """Median time per step outside forward, backward and optimizer.step()."""
    return median([s.seconds - s.compute for s in times.steps[1:]])


def make_images(root: Path, classes: int, per_class: dict[str, int], size: int) -> None:
    """A generated ImageFolder of random JPEGs under root/data/{train,val}/c<k>/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for c in range(classes):
            folder = root / "data" / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)
