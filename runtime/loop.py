"""The training loop: apply the plan's changes when their step comes, train, log.

Read `train()` top to bottom: set up, replay (on resume), then one loop over steps in which
every decision comes from the plan's change list.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ftcompile.apply import Executor
from ftcompile.errors import RecipeError
from ftcompile.plan import OPTIMIZER_OPS, Change, Plan, change_dict
from ftcompile.runtime import checkpoint, distributed
from ftcompile.runtime.distributed import Dist
from ftcompile.runtime.data import TrainBatches, build_datasets, cache_loader, class_weights, val_loader
from ftcompile.runtime.features import FeatureCache
from ftcompile.runtime.model import build
from ftcompile.runtime.optim import build_optimizer

REPLAYED = ("phase", "freeze", "unfreeze", "bn", "features", *OPTIMIZER_OPS)


def pick_device(wanted: str) -> torch.device:
    return distributed.device_for(Dist(), wanted)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


@dataclass
class Trainables:
    """Which parameters and BatchNorm layers belong to which recipe group."""

    params: dict[str, list[nn.Parameter]]
    bn: dict[str, list[nn.Module]]
    frozen_bn: set[str] = field(default_factory=set)

    @staticmethod
    def of(model: nn.Module, plan: Plan) -> "Trainables":
        named = dict(model.named_parameters())
        modules = dict(model.named_modules())
        params: dict[str, list[nn.Parameter]] = {}
        for pg in plan.param_groups:
            params.setdefault(pg.group, []).extend(named[n] for n in pg.params)
        bn: dict[str, list[nn.Module]] = {}
        for mod, group in plan.run["bn_modules"].items():
            bn.setdefault(group, []).append(modules[mod])
        return Trainables(params, bn)

    def set_trainable(self, group: str, on: bool) -> None:
        for p in self.params.get(group, []):
            p.requires_grad_(on)
            p.grad = None

    def train_mode(self, model: nn.Module) -> None:
        """model.train(), then BatchNorm of `bn = "frozen"` groups back to eval (stats kept)."""
        model.train()
        for group in self.frozen_bn:
            for m in self.bn.get(group, []):
                m.eval()


@dataclass
class Logs:
    """metrics.jsonl and lr.csv, flushed at each checkpoint so their length can be stored."""

    folder: Path
    names: list[str]
    enabled: bool = True  # only rank 0 writes

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        self.metrics = open(self.folder / "metrics.jsonl", "a", encoding="utf-8")
        new = not (self.folder / "lr.csv").exists() or (self.folder / "lr.csv").stat().st_size == 0
        self.lr = open(self.folder / "lr.csv", "a", encoding="utf-8")
        if new:
            self.lr.write(",".join(["step", "phase", *self.names]) + "\n")

    def record(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            self.metrics.write(json.dumps(rec, allow_nan=True) + "\n")

    def lrs(self, step: int, phase: str, lrs: list[float]) -> None:
        if self.enabled:
            self.lr.write(",".join([str(step), phase, *(repr(float(x)) for x in lrs)]) + "\n")

    def sizes(self) -> dict[str, int]:
        if not self.enabled:
            return {}
        self.metrics.flush()
        self.lr.flush()
        return {"metrics.jsonl": self.metrics.tell(), "lr.csv": self.lr.tell()}

    def close(self) -> None:
        if not self.enabled:
            return
        self.metrics.close()
        self.lr.close()


def truncate_logs(folder: Path, sizes: dict[str, int]) -> None:
    """Drop what an interrupted run logged after its last checkpoint."""
    for name, size in sizes.items():
        path = folder / name
        if path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(size)


def evaluate(
    model: nn.Module, loader: Any, device: torch.device, autocast: Any, num_classes: int, d: Dist = Dist()
) -> dict[str, float]:
    """Val loss, top-1 and top-5 over the whole val set (each rank sums its shard)."""
    model.eval()
    total, loss_sum, top1, top5 = 0, 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
            k = min(5, num_classes)
            best = logits.topk(k, dim=1).indices
            top1 += (best[:, 0] == y).sum().item()
            top5 += (best == y[:, None]).any(dim=1).sum().item()
            total += y.numel()
    total, loss_sum, top1, top5 = distributed.sums([total, loss_sum, top1, top5], d)
    out = {"val_loss": loss_sum / max(total, 1), "top1": top1 / max(total, 1)}
    if num_classes >= 5:
        out["top5"] = top5 / max(total, 1)
    return out


def _autocast(precision: str, device: torch.device) -> Any:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return lambda: torch.autocast(device.type, enabled=False)
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass
class Progress:
    """A progress line on a terminal, nothing otherwise; timing never enters the logs."""

    total: int
    enabled: bool = field(default_factory=lambda: sys.stderr.isatty())
    world: int = 1
    started: float = field(default_factory=time.perf_counter)
    images: int = 0

    def update(self, step: int, loss: float, lr: float, batch: int) -> None:
        self.images += batch * self.world
        if self.enabled and (step % 5 == 0 or step == self.total):
            rate = self.images / max(time.perf_counter() - self.started, 1e-9)
            bar = "#" * int(30 * step / self.total)
            print(f"\r[{bar:<30}] {step}/{self.total} loss {loss:.4f} lr {lr:.3g} {rate:.0f} img/s", end="", file=sys.stderr)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def train(
    plan: Plan, run_dir: Path, root: Path, resume: dict[str, Any] | None = None, d: Dist = Dist(),
    upstream: Path | None = None,
) -> dict[str, Any]:
    """Carry out `plan` in `run_dir`; with `resume`, continue from that checkpoint.

    With several processes (`d.world > 1`) every rank runs this function; rank 0 alone
    writes logs, checkpoints and model.pt. All ranks draw the same random numbers (same
    seed, same ops), so rank 0's RNG state in a checkpoint is every rank's.
    """
    run = plan.run
    seed_everything(plan.seed, run["deterministic"])
    device = distributed.device_for(d, run["device"])
    data = plan.data
    train_ds, val_ds, _ = build_datasets(data, root, data["mean"], data["std"])
    if len(train_ds) != data["train_size"] or len(val_ds) != data["val_size"]:
        raise RecipeError(
            f"the data changed since the plan was made: train {len(train_ds)} / val {len(val_ds)} images, "
            f"plan counted {data['train_size']} / {data['val_size']}",
            key="data.train",
            suggestion="compile the recipe again (ftcompile run RECIPE) or restore the data",
        )
    counts = data["class_counts"] if data["balance"] == "sampler" else None
    batches = TrainBatches(train_ds, data, plan.seed, counts, rank=d.rank, world=d.world)
    spe = data["steps_per_epoch"]
    vloader = val_loader(val_ds, data, rank=d.rank, world=d.world)

    model = build(plan.model, root, upstream).to(device)
    if run["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, plan)
    executor = Executor(optimizer, plan.param_group_names)
    groups = Trainables.of(model, plan)
    weight = class_weights(data["class_counts"]).to(device) if data["balance"] == "loss" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=data["label_smoothing"])
    autocast = _autocast(run["precision"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=run["precision"] == "fp16")

    wanted_cache: dict[str, str | None] = {"module": None}
    cache: FeatureCache | None = None

    def apply(change: Change) -> bool:
        """Apply one change; True when it changed what is trained (DDP must be rebuilt)."""
        if change.op == "features":
            wanted_cache["module"] = change.value
        elif change.op == "freeze":
            groups.set_trainable(change.target, False)
        elif change.op == "unfreeze":
            groups.set_trainable(change.target, True)
        elif change.op == "bn":
            (groups.frozen_bn.add if change.value == "frozen" else groups.frozen_bn.discard)(change.target)
        elif change.op in OPTIMIZER_OPS:
            executor.apply(change_dict(change))
        return change.op in ("freeze", "unfreeze", "features")

    changes = plan.changes
    step, nxt = 0, 0
    if resume is not None:
        for change in changes[: resume["change_index"] + 1]:
            if change.op in REPLAYED:
                apply(change)
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        executor.rebind()
        if executor.scheduler is not None:
            executor.scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        checkpoint.set_rng_state(resume["rng"])
        if d.main:
            truncate_logs(run_dir, resume["logs"])
        step, nxt = resume["step"], resume["change_index"] + 1

    net: nn.Module | None = None  # built below, once the changes of the first step are applied
    logs = Logs(run_dir, plan.param_group_names, enabled=d.main)
    progress = Progress(plan.total_steps, enabled=d.main and sys.stderr.isatty(), world=d.world)
    ends = {ph.end for ph in plan.phases}
    evals: list[dict[str, Any]] = []
    batch_iter = None
    phase = plan.phase_at(step).name
    try:
        while True:
            rewrap = False
            while nxt < len(changes) and changes[nxt].step == step:
                change = changes[nxt]
                if change.op == "phase":
                    phase = change.target
                elif change.op == "evaluate":
                    rec = {"type": "eval", "step": step, "epoch": step / spe, "phase": change.target}
                    if cache is not None:
                        head, val_batches = model.get_submodule(cache.module), cache.val_batches(data["batch_size"], device)
                    else:
                        head, val_batches = model, vloader
                    rec.update(evaluate(head, val_batches, device, autocast, plan.model["num_classes"], d))
                    logs.record(rec)
                    evals.append(rec)
                    if d.main:
                        _print_eval(rec, progress)
                    if d.enabled and step in ends:
                        digests = distributed.check_in_sync(model, d, step)
                        logs.record({"type": "sync", "step": step, "ranks": d.world, "digests": digests})
                elif change.op == "checkpoint":
                    if d.main:
                        state = {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": executor.scheduler.state_dict() if executor.scheduler else None,
                            "scaler": scaler.state_dict(),
                            "change_index": nxt,
                            "plan_hash": plan.hash,
                            "logs": logs.sizes(),
                        }
                        checkpoint.save(run_dir / "checkpoints", step, state)
                else:
                    rewrap |= apply(change)
                nxt += 1
            if (cache.module if cache else None) != wanted_cache["module"]:
                cache = None if wanted_cache["module"] is None else FeatureCache.build(
                    model, wanted_cache["module"], cache_loader(train_ds, data, plan.seed), vloader, device,
                    autocast, lambda: groups.train_mode(model))
                rewrap, batch_iter = True, None
            if rewrap or net is None:
                net = distributed.wrap(model.get_submodule(cache.module) if cache else model, d, device)
                if run["compile"]:
                    net = torch.compile(net)
            if step >= plan.total_steps:
                break
            epoch, b = divmod(step, spe)
            if cache is not None:
                x, y = cache.batch([i for i, _ in batches.batch_items(epoch, b)], device)
            else:
                if batch_iter is None or b == 0:
                    batch_iter = iter(batches.loader(epoch, b))
                x, y = next(batch_iter)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if run["channels_last"]:
                    x = x.contiguous(memory_format=torch.channels_last)
            lrs = executor.lrs()
            groups.train_mode(model)
            with autocast():
                loss = loss_fn(_forward(net, x, step), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            value = distributed.mean(loss.item(), d)
            logs.record({"type": "step", "step": step, "phase": phase, "loss": value,
                         "lr": dict(zip(plan.param_group_names, lrs))})
            logs.lrs(step, phase, lrs)
            step += 1
            executor.after_step(step)
            progress.update(step, value, max(lrs), y.numel())
            if not math.isfinite(value):
                raise RecipeError(f"loss became {value} at step {step}", key="phases", suggestion="lower the learning rate")
    finally:
        progress.done()
        logs.close()
    if d.main:
        checkpoint.atomic_save(model.state_dict(), run_dir / "model.pt")
    return {"evals": evals, "seconds": time.perf_counter() - progress.started}


def _forward(net: nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
    """The model's output; a batch too small for BatchNorm in train mode is a user error."""
    try:
        return net(x)
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc):
            raise
        raise RecipeError(
            f"the batch of step {step} has {len(x)} image(s), too few for BatchNorm in train mode ({exc})",
            key="data.batch_size",
            suggestion="set data.drop_last = true, or a batch_size that does not leave 1 image in an epoch's last batch",
        ) from None


def _print_eval(rec: dict[str, Any], progress: Progress) -> None:
    if progress.enabled:
        print(file=sys.stderr)
    top5 = f"  top5 {100 * rec['top5']:.2f}%" if "top5" in rec else ""
    print(f"eval  step {rec['step']:>6}  epoch {rec['epoch']:.2f}  {rec['phase']:<12} val_loss {rec['val_loss']:.4f}  "
          f"top1 {100 * rec['top1']:.2f}%{top5}", flush=True)
