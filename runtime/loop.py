"""The training loop: a `Session` that carries out any window of a plan's steps.

A session is set up once from a plan (data, model, the one optimizer, the executor of
optimizer changes). `run(begin, end)` applies the plan's changes when their step comes and
trains the steps in between; `state()` / `load_state()` capture and restore everything the
next step depends on, so a window can be run again from a saved state (resume, and trials
that fork from a phase's start). `train()` at the bottom is a whole run in a few lines.

Read `Session.run` top to bottom: every decision in it comes from the plan's change list.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from ftcompile.runtime import checkpoint, distributed, retention, search
from ftcompile.runtime.best import Watch
from ftcompile.runtime.data import TrainBatches, build_datasets, cache_loader, class_weights, val_loader
from ftcompile.runtime.distributed import Dist
from ftcompile.runtime.ema import Ema
from ftcompile.runtime.features import FeatureCache
from ftcompile.runtime.logs import Logs, Progress, print_eval, truncate_logs
from ftcompile.runtime.mix import BatchMix, check_micro_batches, micro_batches
from ftcompile.runtime.model import build
from ftcompile.runtime.optim import build_optimizer
from ftcompile.runtime.runfiles import as_continued
from ftcompile.runtime.trials import Diverged, Running, TrialState, rung_count
from torch import nn

from ftcompile.apply import Executor
from ftcompile.errors import RecipeError
from ftcompile.plan import Change, DataSpec, Op, PhasePlan, Plan

# Changes that set up state (replayed on load_state); evaluate / checkpoint only happen.
REPLAYED = tuple(op for op in Op if op.replayed)  # each op declares it (plan.OP_KINDS)
# Changes at a window's end step that still belong to the window (the phase's last evaluation).
END_OF_WINDOW = (Op.EVALUATE, Op.CHECKPOINT)


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
    def of(model: nn.Module, plan: Plan) -> Trainables:
        named = dict(model.named_parameters())
        modules = dict(model.named_modules())
        params: dict[str, list[nn.Parameter]] = {}
        for pg in plan.param_groups:
            params.setdefault(pg.group, []).extend(named[n] for n in pg.params)
        bn: dict[str, list[nn.Module]] = {}
        for mod, group in plan.run.bn_modules.items():
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


@dataclass(frozen=True)
class StepInfo:
    """What a step hook is told after each optimizer step."""

    step: int  # the step just taken (0-based): the run is now at step + 1
    phase: str
    loss: float
    lrs: dict[str, float]  # param group -> the lr this step used
    images: int  # images in the global batch
    seconds: float  # wall time of the whole step: changes, data, compute, logging
    compute: float  # of which inside forward, backward and optimizer.step()


class Hooks:
    """Observe a session without changing it (tests, benchmarks); override what you need."""

    def on_start(self, session: Session) -> None:
        """The session is set up: model built, optimizer made, nothing trained yet."""

    def on_step(self, session: Session, info: StepInfo) -> None:
        """An optimizer step was taken."""

    def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
        """An evaluation finished (the record metrics.jsonl gets)."""

    def on_checkpoint(self, session: Session, step: int, state: dict[str, Any]) -> None:
        """A checkpoint of `state` is about to be written (rank 0)."""


_OBSERVERS: list[Hooks] = []


@contextlib.contextmanager
def observe(*hooks: Hooks) -> Iterator[None]:
    """Attach hooks to every session started inside the block (e.g. by the CLI)."""
    _OBSERVERS.extend(hooks)
    try:
        yield
    finally:
        for hook in hooks:
            _OBSERVERS.remove(hook)


def evaluate(
    model: nn.Module, loader: Any, device: torch.device, autocast: Any, num_classes: int, d: Dist = Dist()
) -> dict[str, float]:
    """Val loss, top-1 and, with more than 5 classes, top-5 over the whole val set (each rank
    sums its shard). With 5 classes or fewer top-5 is always 100%: not reported."""
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
    if num_classes > 5:
        out["top5"] = top5 / max(total, 1)
    return out


# Fields of a step record that differ between two runs of one plan (everything else is bitwise).
TIMING_FIELDS = ("seconds", "images_per_s")


def step_timing(images: int, seconds: float) -> dict[str, float]:
    """The step's wall time (changes due, data, forward/backward/step; not evaluations or
    checkpoints) and the images per second it makes, for metrics.jsonl's step records."""
    return {"seconds": round(seconds, 6), "images_per_s": round(images / max(seconds, 1e-9), 2)}


def _autocast(precision: str, device: torch.device) -> Any:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return lambda: torch.autocast(device.type, enabled=False)
    return lambda: torch.autocast(device.type, dtype=dtype)


class Session:
    """One run's model, optimizer, data and position in the plan.

    With several processes (`d.world > 1`) every rank holds a session; rank 0 alone writes
    logs and checkpoints. All ranks draw the same random numbers (same seed, same ops), so
    rank 0's RNG state in a checkpoint is every rank's.
    """

    def __init__(
        self,
        plan: Plan,
        root: Path,
        run_dir: Path | None = None,
        d: Dist = Dist(),
        upstream: Path | None = None,
        hooks: Sequence[Hooks] = (),
    ) -> None:
        self.plan, self.run_dir, self.d, self.root = plan, run_dir, d, root
        self.hooks = [*hooks, *_OBSERVERS]
        # What the eval lines add after the phase, when it alone would mislead (lr-find's
        # evaluation of a state it loaded); a trial's alternative is named by the trials.
        self.eval_note: str | None = None
        seed_everything(plan.seed, plan.run.deterministic)
        self.device = distributed.device_for(d, plan.run.device)
        # In this order: the model's initial weights are drawn after the data's set-up.
        self._setup_data()
        self._setup_model(upstream)
        self._setup_position()
        for hook in self.hooks:
            hook.on_start(self)

    def _setup_data(self) -> None:
        """The same sample lists the compiler counted, checked against the plan."""
        data, d = self.plan.data, self.d
        self.train_ds, val_ds, _ = build_datasets(data, self.root, data.mean, data.std)
        if len(self.train_ds) != data.train_size or len(val_ds) != data.val_size:
            raise RecipeError(
                f"the data changed since the plan was made: train {len(self.train_ds)} / val {len(val_ds)} images, "
                f"plan counted {data.train_size} / {data.val_size}",
                key="data.train",
                suggestion="compile the recipe again (ftcompile run RECIPE) or restore the data",
            )
        counts = data.class_counts if data.balance == "sampler" else None
        self.batches = TrainBatches(self.train_ds, data, self.plan.seed, counts, rank=d.rank, world=d.world)
        self.val_loader = val_loader(val_ds, data, rank=d.rank, world=d.world)
        self._phase_data: dict[str, tuple[TrainBatches, Any, DataSpec]] = {}  # data_begin -> its data
        self._segment: str | None = None  # the data segment the batch iterator belongs to

    def _setup_model(self, upstream: Path | None) -> None:
        """Model, the one optimizer, and what applies the plan's changes to them."""
        plan, run, data, d = self.plan, self.plan.run, self.plan.data, self.d
        self.model = build(plan.model, self.root, upstream).to(self.device)
        if run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if run.sync_bn:  # before the DDP wrapper (one process: no-op)
            self.model = distributed.sync_batchnorm(self.model, d, self.device)
        self.ema = Ema(self.model, run.ema) if run.ema else None
        check_micro_batches(data.batch_size, run.accumulate, d.world, "data.batch_size")
        self.mixer = BatchMix(data.mix, plan.model.num_classes, plan.seed) if data.mix else None
        self.optimizer = build_optimizer(self.model, plan)
        self.executor = Executor(self.optimizer, plan.param_group_names)
        self.groups = Trainables.of(self.model, plan)
        weight = class_weights(data.class_counts).to(self.device) if data.balance == "loss" else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=data.label_smoothing)
        self.autocast = _autocast(run.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=run.precision == "fp16")

    def _setup_position(self) -> None:
        """Step 0 of the plan, and what follows from the position: features, wrapper, logs."""
        plan, d, run_dir = self.plan, self.d, self.run_dir
        self.changes: Sequence[Change] = plan.changes
        self.step, self.next_change = 0, 0
        self.phase = plan.phases[0].name
        self.wanted_features: str | None = None  # head module the plan wants cached features for
        self.features: FeatureCache | None = None
        self.net: nn.Module | None = None  # the model (or head) as trained: DDP / compile wrapped
        self._batch_iter: Iterator[Any] | None = None
        self._rewrap = True
        self.ends = {ph.end for ph in plan.phases}
        self.evals: list[dict[str, Any]] = []
        self.watch = Watch(plan, run_dir, d.main)  # stop_early, restore_best, keep_best
        self.phases = {ph.name: ph for ph in plan.phases}
        # Trials (runtime/trials.py, run by runtime/search.py): the alternative chosen per trial
        # phase so far, the one running now, and optimizer steps taken in all (alternatives go
        # back to a phase start).
        self.trials = TrialState(plan)
        self.search_backend: search.Backend | None = None  # where stretches of alternatives run (None: here)
        self.executed = 0
        has_trials = any(ph.trials for ph in plan.phases)
        self.logs = (
            Logs(
                run_dir,
                plan.param_group_names,
                enabled=d.main,
                trials=has_trials,
                ema=plan.run.ema is not None,
                rungs=rung_count(plan),
            )
            if run_dir
            else None
        )
        self.progress = Progress(plan.total_steps, enabled=d.main and sys.stderr.isatty(), world=d.world)

    # ------------------------------------------------------------ state

    def state(self, snapshot: bool = True) -> dict[str, Any]:
        """Everything the next step depends on; loads into a fresh session of the same plan.

        A snapshot holds copies; `snapshot=False` holds the live tensors (which training goes
        on changing): enough for writing a checkpoint at once, without the extra memory.
        """
        copied = copy.deepcopy if snapshot else (lambda x: x)
        return {
            "model": copied(self.model.state_dict()),
            "optimizer": copied(self.optimizer.state_dict()),
            "scheduler": copied(self.executor.scheduler.state_dict()) if self.executor.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "step": self.step,
            "next_change": self.next_change,  # changes before it are applied; data position = step
            "plan_hash": self.plan.hash,
            "logs": self.logs.sizes() if self.logs else {},
            "log_digests": self.logs.digests() if self.logs else {},  # resume checks the logs against it
            "watch": copied(self.watch.state()),
            **({"ema": copied(self.ema.state_dict())} if self.ema else {}),
            "trials": self.trials.record(),
            "executed": self.executed,
        }

    def load_state(self, state: dict[str, Any], keep_features: bool = False) -> None:
        """Go back (or forward) to `state`: replay the plan's set-up changes before it, then
        load model, optimizer, scheduler, grad scaler and RNG.

        `keep_features=True` keeps computed cached features when the state wants the same
        head module: right only when the frozen part is the one they were computed from (a
        fork from the same state, as trials do).
        """
        if state.get("plan_hash") != self.plan.hash:
            raise RecipeError("the saved state belongs to another plan", suggestion="start a new run")
        # Checkpoints of ftcompile 0.1 stored the index of their own checkpoint change.
        next_change = state["next_change"] if "next_change" in state else state["change_index"] + 1
        # Inside or after trial phases the change list holds the alternatives that ran.
        self.trials.restore(state.get("trials"))
        self.changes = self.trials.changes()
        self.executed = state.get("executed", state["step"])
        self.groups.frozen_bn.clear()
        self.executor.scheduler = None
        self.wanted_features = None
        for change in self.changes[:next_change]:
            if change.op in REPLAYED:
                self._apply(change)
        self.model.load_state_dict(state["model"])
        # A copy: torch's load_state_dict keeps the given state tensors (momentum, Adam
        # moments) as the optimizer's own, so training would change `state` in place, and a
        # trial fork loaded again would hold the last alternative's moments.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.executor.rebind()
        if self.executor.scheduler is not None:
            self.executor.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.next_change = state["step"], next_change
        self.watch.load_state(state.get("watch"))
        self.progress.at(self.step)
        if not (keep_features and self.features and self.features.module == self.wanted_features):
            self.features = None
        self._batch_iter, self._rewrap = None, True

    # ------------------------------------------------------------ the loop

    def run(self, begin: int, end: int) -> None:
        """Carry out the plan's steps `[begin, end)` from where the session is (`begin`).

        Changes at step `end` that end the window (its evaluation and checkpoint) are done
        too; the next window's set-up changes at `end` are left for it. A trial phase is run
        whole by the search (runtime/search.py), which leaves the session at its end with
        the chosen alternative's state and changes.
        """
        if begin != self.step:
            raise ValueError(f"the session is at step {self.step}, not {begin}")
        if not begin <= end <= self.plan.total_steps:
            raise ValueError(f"window [{begin}, {end}) outside the plan's [0, {self.plan.total_steps})")
        if self.trials.running is not None:
            # Loaded inside a trial phase: its search goes on from here.
            search.resume(self, self.search_backend)
        self.window(self.step, end)

    def window(self, begin: int, end: int) -> None:
        """The plan's steps `[begin, end)` from where the session is, as `run` (what a trial
        search runs an alternative's stretch with)."""
        if begin != self.step:
            raise ValueError(f"the session is at step {self.step}, not {begin}")
        while True:
            started = time.perf_counter()
            # Apply the changes due at this step (only the window's own ones at its end);
            # time spent evaluating and checkpointing is not the next step's.
            started += self._apply_due(end)
            if self.step >= end:
                return
            # A trial phase starts: the search forks, runs and judges its alternatives, and
            # leaves the session at the phase's end, following the winner.
            if self.next_change < len(self.changes) and self.changes[self.next_change].op == Op.TRIAL:
                search.run_phase(self, self.changes[self.next_change].target or "", self.search_backend)
                continue
            # Cached features and the DDP / compile wrapper follow what the changes set.
            self._prepare()
            self._train_step(started)

    def enter(self, state: dict[str, Any], chosen: dict[str, int], running: Running | None) -> None:
        """Go to `state` (a trial phase's fork, an alternative's saved state) following the
        alternatives `chosen` and `running`; the count of optimizer steps taken goes on."""
        executed = self.executed
        self.load_state(state)
        self.trials.chosen, self.trials.running = dict(chosen), running
        self.changes = self.trials.changes()
        self.executed = executed
        self.watch.last = None  # no evaluation of this alternative yet

    def last_evaluation(self) -> dict[str, Any] | None:
        """The evaluation of the model as it is (after restore_best, the one gone back to)."""
        return self.watch.last

    def apply_setup(self) -> None:
        """Apply the set-up changes due at the current step (a phase's start: freezing, LRs,
        its scheduler) without training or evaluating; for callers that drive steps
        themselves (lr-find)."""
        while self.next_change < len(self.changes) and self.changes[self.next_change].step == self.step:
            change = self.changes[self.next_change]
            if change.op in END_OF_WINDOW:
                break
            self.next_change += 1
            self._apply(change)

    def train_step(self) -> None:
        """One optimizer step at the optimizer's current LRs, applying no plan change."""
        self._prepare()
        self._train_step(time.perf_counter())

    def _apply_due(self, end: int) -> float:
        """Apply the changes due now; returns the seconds spent evaluating and checkpointing.
        (An evaluation can move the session to its phase's end: stop_early.)"""
        outside = 0.0
        while self.next_change < len(self.changes) and self.changes[self.next_change].step == self.step:
            change = self.changes[self.next_change]
            # At the window's end (or past it: stop_early jumps to its phase's end) only the
            # window's own evaluation and checkpoint; a trial phase is the search's (run()).
            if (self.step >= end and change.op not in END_OF_WINDOW) or change.op == Op.TRIAL:
                break
            self.next_change += 1
            if change.op in END_OF_WINDOW:
                began = time.perf_counter()
                self._evaluate_and_log(change) if change.op == Op.EVALUATE else self.checkpoint()
                outside += time.perf_counter() - began
            else:
                self._apply(change)
        return outside

    def _apply(self, change: Change) -> None:
        """One set-up change; freezing and the feature cache mean the wrapper must be rebuilt."""
        if change.op == Op.PHASE:
            self.phase = change.target or self.phase
        elif change.op == Op.FEATURES:
            self.wanted_features = change.value if isinstance(change.value, str) else None
        elif change.op in (Op.FREEZE, Op.UNFREEZE):
            self.groups.set_trainable(change.target or "", change.op == Op.UNFREEZE)
        elif change.op == Op.BN:
            group = change.target or ""
            (self.groups.frozen_bn.add if change.value == "frozen" else self.groups.frozen_bn.discard)(group)
        elif change.op.on_optimizer:
            self.executor.apply(change)
        self._rewrap |= change.op in (Op.FREEZE, Op.UNFREEZE, Op.FEATURES)

    def _prepare(self) -> None:
        if (self.features.module if self.features else None) != self.wanted_features:
            _, train_ds, spec = self._data_of(self.plan.phase_at(self.step))
            # Alternatives start from one state: features computed at the phase start serve all.
            self.features = self.trials.shared_features(self.step, self.wanted_features)
            if self.features is None and self.wanted_features is not None:
                self.features = FeatureCache.build(
                    self.model,
                    self.wanted_features,
                    cache_loader(train_ds, spec, self.plan.seed),
                    self.val_loader,
                    self.device,
                    self.autocast,
                    lambda: self.groups.train_mode(self.model),
                )
                self.trials.offer_features(self.step, self.features)
            self._rewrap, self._batch_iter = True, None
        if self._rewrap or self.net is None:
            # DDP registers gradient hooks for what requires grad now: rebuild when that changes.
            trained = self.model.get_submodule(self.features.module) if self.features else self.model
            self.net = distributed.wrap(trained, self.d, self.device)
            if self.plan.run.compile:
                self.net = cast(nn.Module, torch.compile(self.net))  # an OptimizedModule
            self._rewrap = False

    def _train_step(self, started: float) -> None:
        plan, step = self.plan, self.step
        # The batch of this step: a pure function of (seed, epoch, position in the epoch),
        # counted in the data segment of the phase (per-phase data overrides).
        batches, epoch, b, mixer = self._position(step)
        x, y = self._batch(batches, epoch, b)
        # Batch-level MixUp / CutMix, drawn under the step's own seed: soft targets from here.
        if mixer is not None:
            x, y = mixer(x, y, step)
        lrs = self.executor.lrs()
        self.groups.train_mode(self.model)
        compute = time.perf_counter()
        assert self.net is not None
        # Forward and backward, per micro-batch under run.accumulate (DDP all-reduces on the last).
        loss = self._forward_backward(x, y, step)
        # Clip the trainable parameters' gradients (unscaled first under fp16).
        grad_norm = self._clip_gradients()
        # Optimizer step (through the grad scaler under fp16).
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # The EMA of the weights follows the step, at its cadence.
        if self.ema is not None:
            self.ema.update(self.model, step + 1)
        value = distributed.mean(loss, self.d)
        compute = time.perf_counter() - compute
        # Log the step, then move on: the scheduler steps after the optimizer.
        named_lrs = dict(zip(plan.param_group_names, lrs, strict=False))
        images, seconds = y.shape[0] * self.d.world, time.perf_counter() - started
        trial = self.trials.k
        if self.logs:
            record = {
                "type": "step",
                "step": step,
                "phase": self.phase,
                "loss": value,
                "lr": named_lrs,
                **step_timing(images, seconds),
                **({"trial": trial} if trial is not None else {}),
            }
            if grad_norm is not None:
                record["grad_norm"] = grad_norm  # before clipping
            self.logs.record(record)
            self.logs.lrs(step, self.phase, lrs, trial)
        self.step += 1
        self.executed += 1
        self.executor.after_step(self.step)
        self.progress.update(self.step, value, max(lrs), y.shape[0])
        if not math.isfinite(value):
            raise Diverged(
                f"loss became {value} at step {self.step}", key="phases", suggestion="lower the learning rate"
            )
        info = StepInfo(step, self.phase, value, named_lrs, images, time.perf_counter() - started, compute)
        for hook in self.hooks:
            hook.on_step(self, info)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
        """Mean loss of the batch; its gradient summed over run.accumulate micro-batches,
        each loss weighted by its share so the sum is the whole batch's gradient."""
        assert self.net is not None
        parts = list(micro_batches(x, y, self.plan.run.accumulate, self.loss_fn.weight))
        no_sync = getattr(self.net, "no_sync", None)
        total = 0.0
        for i, (xi, yi, share) in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with self.autocast():
                    loss = self.loss_fn(_forward(self.net, xi, step), yi)
                self.scaler.scale(loss if len(parts) == 1 else loss * share).backward()
            total += loss.item() * share
        return total

    def _clip_gradients(self) -> float | None:
        """optimizer.clip_grad_norm / clip_grad_value over the parameters that have a
        gradient; returns the total norm before clipping (None without clipping)."""
        opt = self.plan.optimizer
        if opt.clip_grad_norm is None and opt.clip_grad_value is None:
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if opt.clip_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(params, opt.clip_grad_norm)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in params])
        if opt.clip_grad_value is not None:
            nn.utils.clip_grad_value_(params, opt.clip_grad_value)
        return float(norm)

    def _data_of(self, phase: PhasePlan) -> tuple[TrainBatches, Any, DataSpec]:
        """The train batches, dataset and data spec of a phase (its own with overrides)."""
        if phase.data is None:
            return self.batches, self.train_ds, self.plan.data
        pd = phase.data
        key = f"{pd.data_begin}"
        if key not in self._phase_data:
            spec = replace(
                self.plan.data,
                image_size=pd.image_size,
                batch_size=pd.batch_size,
                augment=pd.augment,
                mix=pd.mix,
            )
            check_micro_batches(
                spec.batch_size, self.plan.run.accumulate, self.d.world, f"phases.{phase.name}.data.batch_size"
            )
            train_ds, _, _ = build_datasets(spec, self.root, spec.mean, spec.std)
            counts = spec.class_counts if spec.balance == "sampler" else None
            batches = TrainBatches(train_ds, spec, self.plan.seed, counts, rank=self.d.rank, world=self.d.world)
            self._phase_data[key] = (batches, train_ds, spec)
        return self._phase_data[key]

    def _position(self, step: int) -> tuple[TrainBatches, int, int, BatchMix | None]:
        """Which batch step `step` trains on: (its batches, epoch, batch in the epoch, mixer)."""
        phase = self.plan.phase_at(step)
        batches, _, spec = self._data_of(phase)
        if phase.data is None:
            epoch, b = divmod(step, self.plan.data.steps_per_epoch)
            segment = "recipe"
        else:
            pd = phase.data
            epoch, b = divmod(step - pd.data_begin, pd.steps_per_epoch)
            epoch += pd.epoch_base
            segment = str(pd.data_begin)
        if segment != self._segment:
            self._segment, self._batch_iter = segment, None
        mixer = (
            self.mixer
            if phase.data is None
            else (BatchMix(spec.mix, self.plan.model.num_classes, self.plan.seed) if spec.mix else None)
        )
        return batches, epoch, b, mixer

    def _batch(self, batches: TrainBatches, epoch: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is not None:
            return self.features.batch([i for i, _ in batches.batch_items(epoch, b)], self.device)
        if self._batch_iter is None or b == 0:
            self._batch_iter = iter(batches.loader(epoch, b))
        x, y = next(self._batch_iter)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.plan.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    # ------------------------------------------------------------ evaluation and checkpoints

    def evaluate(self) -> dict[str, float]:
        """Val metrics of the model as it is now (on cached features in a cached phase)."""
        if self.features is not None:
            head = self.model.get_submodule(self.features.module)
            batches: Any = self.features.val_batches(self.plan.data.batch_size, self.device)
            return evaluate(head, batches, self.device, self.autocast, self.plan.model.num_classes, self.d)
        return evaluate(self.model, self.val_loader, self.device, self.autocast, self.plan.model.num_classes, self.d)

    def _evaluate_and_log(self, change: Change) -> None:
        rec: dict[str, Any] = {
            "type": "eval",
            "step": self.step,
            "epoch": self.step / self.plan.data.steps_per_epoch,
            "phase": change.target,
        }
        rec.update(self.evaluate())
        if not math.isfinite(rec["val_loss"]):
            raise Diverged(
                f"the validation loss is {rec['val_loss']} at step {self.step}" + _bad_parameter(self.model),
                key="phases",
                suggestion="lower the learning rate",
            )
        if self.ema is not None:  # the EMA weights on the full val set (its frozen part differs from a cache)
            ema = evaluate(
                self.ema.module, self.val_loader, self.device, self.autocast, self.plan.model.num_classes, self.d
            )
            rec.update({f"{k}_ema": v for k, v in ema.items()})
        if self.trials.k is not None:
            rec["trial"] = self.trials.k
        if self.logs:
            self.logs.record(rec)
        self.evals.append(rec)
        if self.d.main:
            print_eval(rec, self.progress, self.eval_note or self.trials.label())
        for hook in self.hooks:
            hook.on_evaluate(self, rec)
        self._metric_driven(rec)
        if self.d.enabled and self.step in self.ends:
            # All ranks must hold bitwise the same parameters at every phase end.
            digests = distributed.check_in_sync(self.model, self.d, self.step)
            if self.logs:
                self.logs.record({"type": "sync", "step": self.step, "ranks": self.d.world, "digests": digests})

    def _metric_driven(self, rec: dict[str, Any]) -> None:
        """After an evaluation: best.pt, and the phase's early stop and restore of its best."""
        phase = self.phases[rec["phase"]]
        stop = self.watch.evaluated(rec, phase, self.model, self.optimizer)
        if stop:
            best = self.watch.current
            assert best is not None
            self._log(
                {
                    "type": "stop",
                    "step": self.step,
                    "phase": phase.name,
                    "metric": best.metric,
                    "best": best.value,
                    "best_step": best.step,
                    "evaluations_without_improvement": best.bad,
                    "next_step": phase.end,
                }
            )
            self._skip_to_end(phase)
        if self.step == phase.end:
            self._restore_best(phase)
        if stop:
            self.checkpoint()  # the phase's end checkpoint, which the jump skipped

    def _skip_to_end(self, phase: PhasePlan) -> None:
        """Jump to the phase's end: its remaining changes are only evaluations and checkpoints
        (set-up changes come at phase starts), so skipping them leaves the plan's state intact;
        the batches are a function of the step, so the next phase sees its planned data."""
        while self.next_change < len(self.changes):
            c = self.changes[self.next_change]
            if c.step > phase.end or (c.step == phase.end and not (c.op in END_OF_WINDOW and c.target == phase.name)):
                break
            self.next_change += 1
        self.step, self._batch_iter = phase.end, None
        self.progress.at(self.step)

    def _restore_best(self, phase: PhasePlan) -> int | None:
        """restore_best: model and optimizer moments go back to the phase's best evaluation;
        the param groups' hyperparameters stay (the next phase sets its own). Returns the
        step of the evaluation gone back to, None when nothing was restored."""
        best = self.watch.best_state(phase, self.step)
        if best is None:
            return None
        self.model.load_state_dict(best["model"])
        current = self.optimizer.state_dict()
        self.optimizer.load_state_dict({**current, "state": copy.deepcopy(best["optimizer"])})  # see load_state
        self.executor.rebind()
        assert self.watch.current is not None
        self._log(
            {
                "type": "restore",
                "step": self.step,
                "phase": phase.name,
                "metric": self.watch.current.metric,
                "value": self.watch.current.value,
                "from_step": self.watch.current.step,
            }
        )
        return self.watch.current.step

    def _log(self, rec: dict[str, Any]) -> None:
        if self.logs:
            self.logs.record(rec)
        if self.d.main:
            self.progress.write(
                f"{rec['type']:<5} step {rec['step']:>6}  {rec['phase']}  "
                + "  ".join(f"{k} {v}" for k, v in rec.items() if k not in ("type", "step", "phase"))
            )

    def checkpoint(self) -> None:
        """Write the state to the run directory's checkpoints/ (rank 0; atomic)."""
        if self.run_dir is None:
            return
        # Every rank checks (their parameters are equal), so all stop together under DDP.
        check_finite(self.model, self.step, "the checkpoint was not written; the previous one stays")
        if not self.d.main:
            return
        state = self.state(snapshot=False)
        for hook in self.hooks:
            hook.on_checkpoint(self, self.step, state)
        checkpoint.save(self.run_dir / "checkpoints", self.step, state, keep=None, number=self.executed)
        retention.prune(self.run_dir / "checkpoints", self.plan, finished=False)

    def close(self) -> None:
        self.progress.done()
        if self.logs:
            self.logs.close()


def train(
    plan: Plan,
    run_dir: Path,
    root: Path,
    resume: dict[str, Any] | None = None,
    d: Dist = Dist(),
    upstream: Path | None = None,
    hooks: Sequence[Hooks] = (),
    backend: search.Backend | None = None,
) -> dict[str, Any]:
    """Carry out `plan` in `run_dir`; with `resume`, continue from that checkpoint. `backend`:
    where the stretches of trial alternatives run (runtime/search.py; None: here, in turn)."""
    if resume is not None and d.main:
        truncate_logs(run_dir, resume["logs"])  # what was logged after the checkpoint
    session = Session(plan, root, run_dir, d, upstream, hooks)
    if backend is not None:
        session.search_backend = backend
    try:
        if resume is not None:
            session.load_state(resume)
        session.run(session.step, plan.total_steps)
    finally:
        session.close()
    check_finite(session.model, session.step, "model.pt was not written; the last checkpoint stays")
    if d.main:
        checkpoint.atomic_save(session.model.state_dict(), run_dir / "model.pt")
        if session.ema is not None:
            checkpoint.atomic_save(session.ema.module.state_dict(), run_dir / "model_ema.pt")
        retention.prune(run_dir / "checkpoints", plan, finished=True)  # model.pt is safe first
    # Of a trial phase, the chosen alternative's evaluations.
    return {
        "evals": as_continued(session.evals, session.trials.chosen),
        "seconds": time.perf_counter() - session.progress.started,
    }


def first_non_finite(model: nn.Module) -> str | None:
    """The first parameter or floating buffer holding a nan or inf, or None."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _bad_parameter(model: nn.Module) -> str:
    name = first_non_finite(model)
    return f"; first non-finite parameter: {name}" if name else ""


def check_finite(model: nn.Module, step: int, then: str) -> None:
    """A model with a nan or inf is a diverged run, not a result: said with the step and
    the first bad parameter (a finite loss before the last update does not show it)."""
    name = first_non_finite(model)
    if name is not None:
        raise Diverged(
            f"parameter {name} is not finite after step {step}: {then}",
            key="phases",
            suggestion="lower the learning rate (or clip gradients: optimizer.clip_grad_norm)",
        )


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
