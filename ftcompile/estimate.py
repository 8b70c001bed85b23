"""Cost before running (`ftcompile plan --estimate`): memory, FLOPs and time of every phase.

The plan knows which groups train in each phase (and in each trial alternative), so one
training step of each is run on fake tensors: `FakeTensorMode` gives every tensor its shape,
dtype and storage size but no data, so a ResNet-50 step at batch 64 costs about a second on
a CPU and no memory, needs no weights and no images. The model is torchvision's own (built
on the meta device, then made fake), so every family's real forward code runs. During that
step:

- **FLOPs**: `torch.utils.flop_counter.FlopCounterMode`, once around the forward and once
  around the backward. It counts the backward autograd really runs: a frozen layer whose
  input needs no gradient has no backward at all, so a head-only phase's backward is the
  head's (DeepSpeed's profiler assumes backward = 2 x forward, 2-3x too much here). One
  formula is corrected (`flop_counter`): torch counts a grouped convolution's weight
  gradient `groups` times, which made depthwise networks' backward 8-40x their forward.
- **Activations kept for backward**: `torch.autograd.graph.saved_tensors_hooks` sees exactly
  the tensors autograd saves; the sum of their unique storages (parameters excluded) is the
  memory the trained part keeps from the forward to the backward.
- **Step peak**: `LiveTensors`, a `TorchDispatchMode` that counts every storage an op
  creates and lets a weakref finalizer take it off when it is freed, gives the most bytes
  alive at once: batch, activations, gradients of the trained groups and the transients of
  the layer being computed. The runtime measures a real step with the same class
  (`runtime/cost.py`), so the estimate and the run count the same thing.

Why not `torch.distributed._tools.MemTracker`, which does the same with fake tensors and
per-module detail: it registers a gradient hook on every parameter, which fails on frozen
ones, and a fine-tuning phase is mostly frozen parameters; it lives in a private namespace
that needs a torch built with torch.distributed; and per-module detail is not asked for.
Our count is the sixty lines below, and a test holds it within 15% of a real CPU step.

The rest is arithmetic over the plan: parameters and buffers always, optimizer state from
the table in `torch_args` (kept for every group that has trained so far), an EMA copy, the
in-memory copies that trials and `restore_best` keep, the feature cache. Time divides FLOPs
by the rates a device profile measured (`ftcompile calibrate`, `ftcompile/calibrate.py`).

This module imports torch and torchvision at the top: it is imported only when an estimate
is asked for (`plan --estimate`, `check --estimate` / `--device-memory`, the end of a run),
so plain `ftcompile plan` does not pay for it.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ftcompile import arch as archs
from ftcompile.memory import machine_memory
from ftcompile.plan import Op, PhasePlan, Plan
from ftcompile.torch_args import optimizer_class, state_tensors

# Estimates are shown as ranges. Memory: the fake step counts tensors exactly as a real one
# (held to 15% by a test); a GPU adds allocator rounding and cuDNN workspaces, hence the
# upper margin. Time: the default spread when a profile records none.
MEMORY_RANGE = (0.95, 1.15)
TIME_RANGE = (0.7, 1.3)


# ---------------------------------------------------------------- counting live tensors


class LiveTensors(TorchDispatchMode):
    """Bytes of tensor storages created inside the mode and still alive: now and at most.

    Each storage an op outputs is counted once (by its StorageImpl, so views and in-place
    ops add nothing) and taken off by a weakref finalizer when torch frees it. Storages that
    exist before (parameters, buffers, optimizer state) are not counted: pass them in `skip`
    or simply create them outside the mode. Works the same on real and fake tensors.
    """

    def __init__(self, skip: set[int] | None = None) -> None:
        super().__init__()
        self.skip = skip or set()
        self.live = 0
        self.peak = 0
        self._counted: dict[int, int] = {}

    def _freed(self, key: int) -> None:
        self.live -= self._counted.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self._counted or key in self.skip:
                    continue
                nbytes = storage.nbytes()
                self._counted[key] = nbytes
                self.live += nbytes
                weakref.finalize(storage, self._freed, key)
        self.peak = max(self.peak, self.live)
        return out


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def tensor_bytes(*objs: Any) -> int:
    """Bytes of the unique storages of every tensor in `objs` (modules, dicts, lists, tensors)."""
    seen: dict[int, int] = {}
    for t in tensors_in(objs):
        seen.setdefault(storage_key(t), t.untyped_storage().nbytes())
    return sum(seen.values())


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
        if obj.grad is not None:
            yield obj.grad
    elif isinstance(obj, nn.Module):
        yield from tensors_in(list(obj.parameters()) + list(obj.buffers()))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from tensors_in(vars(obj))


@contextlib.contextmanager
def saved_for_backward(skip: set[int]) -> Iterator[dict[int, int]]:
    """Storages autograd saves for the backward (those in `skip` left out): {key: bytes}."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in skip:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


# ---------------------------------------------------------------- counting FLOPs


def _conv_backward_flop(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    groups: int,
    output_mask: list[bool],
    out_shape: list[Any],
    **kwargs: Any,
) -> int:
    """torch's formula for aten.convolution_backward, with the weight gradient divided by
    `groups`: torch (2.14 included) computes it as a convolution of transposed shapes, which
    lose the group division, so a depthwise convolution's weight gradient counted C times
    (EfficientNet's backward came out 40x its forward, ConvNeXt's 8x; pytorch/pytorch#183405)."""

    def t(shape: list[int]) -> list[int]:
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input: a transposed convolution of grad_out with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # grad_weight: a convolution of the input with grad_out, per group
        a, b = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(t(a), t(b), t(out_shape[1]), transposed=False) // groups
    return flops


def flop_counter() -> Any:
    """FlopCounterMode as autograd runs the step, grouped convolutions' backward corrected."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


# ---------------------------------------------------------------- one step


@dataclass(frozen=True)
class StepSetup:
    """What one training step of a phase depends on."""

    train: frozenset[str]  # recipe groups with requires_grad
    frozen_bn: frozenset[str]  # groups whose BatchNorm stays in eval mode
    batch: int  # images per micro-batch
    micro_batches: int  # run.accumulate
    image_size: int
    precision: str
    channels_last: bool
    cached: str | None  # head module trained on cached features, or None


@dataclass(frozen=True)
class StepRecord:
    """What `ModelSteps.run_step` saw of one step."""

    fwd_s: float
    bwd_s: float
    opt_s: float
    fwd_flops: int
    bwd_flops: int
    activations: int  # bytes saved for the backward of the last micro-batch (parameters excluded)
    grads: int  # bytes of gradients before the optimizer step

    @property
    def seconds(self) -> float:
        return self.fwd_s + self.bwd_s + self.opt_s


@dataclass(frozen=True)
class StepCost:
    """One optimizer step of a setup, counted on fake tensors."""

    activations: int  # bytes saved for the backward (parameters excluded), one micro-batch
    step_peak: int  # most bytes alive at once beyond parameters, buffers and optimizer state
    grads: int  # bytes of the trained groups' gradients
    fwd_flops: int  # all micro-batches
    bwd_flops: int


def autocast(precision: str) -> Any:
    """The runtime's autocast, on the CPU device type: fake tensors are CPU tensors here,
    and CPU autocast lowers the same ops (conv, linear, matmul) as CUDA's."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


class ModelSteps:
    """The plan's model on fake tensors, and one step of it for any setup."""

    def __init__(self, plan: Plan, device: str = "fake") -> None:
        """device "fake": no memory; "cpu" (or "cuda"): real tensors, random weights (tests
        and `calibrate` run the same steps for real)."""
        spec = plan.model
        self.fake = None
        if device == "fake":
            from torch._subclasses.fake_tensor import FakeTensorMode  # imports torch._dynamo: only for an estimate

            # Built on the meta device (RegNet's width arithmetic needs real numbers), then fake.
            model = archs.build_model(
                spec.arch, spec.num_classes, spec.head, device="meta", builder_args=spec.builder_args
            )
            if plan.run.channels_last:  # before the fake tensors exist: they cannot be swapped later
                model.to(memory_format=torch.channels_last)
            self.fake = FakeTensorMode(allow_non_fake_inputs=True)
            with self.fake:
                model.to_empty(device="cpu")  # empty_like: keeps the memory format
        else:
            model = archs.build_model(
                spec.arch, spec.num_classes, spec.head, device=device, builder_args=spec.builder_args
            )
            if plan.run.channels_last:
                model.to(memory_format=torch.channels_last)
        self.model, self.plan, self.device = model, plan, "cpu" if device == "fake" else device
        named = dict(model.named_parameters())
        self.group_params: dict[str, list[nn.Parameter]] = {g: [] for g in {pg.group for pg in plan.param_groups}}
        for pg in plan.param_groups:
            self.group_params[pg.group].extend(named[n] for n in pg.params)
        modules = dict(model.named_modules())
        self.group_bn: dict[str, list[nn.Module]] = {}
        for mod, group in plan.run.bn_modules.items():
            self.group_bn.setdefault(group, []).append(modules[mod])
        self.param_bytes = tensor_bytes(list(model.parameters()))
        self.param_keys = {storage_key(t) for t in tensors_in(model)}
        self._optimizer: Any = None
        self.stepping = True  # False once the optimizer refused fake tensors
        self.notes: list[str] = []
        self.buffer_bytes = tensor_bytes(list(model.buffers()))
        self._head_inputs: dict[tuple[int, str], tuple[int, ...]] = {}

    def context(self) -> Any:
        return self.fake if self.fake is not None else contextlib.nullcontext()

    def numel(self, groups: Any) -> int:
        return sum(p.numel() for g in groups for p in self.group_params.get(g, []))

    def prepare(self, setup: StepSetup) -> nn.Module:
        """requires_grad, train / eval mode and memory format as the runtime sets them for the
        setup; the module that the step runs (the head alone on cached features)."""
        for group, params in self.group_params.items():
            for p in params:
                p.requires_grad_(group in setup.train)
                p.grad = None
        self.model.train()
        for group in setup.frozen_bn:
            for m in self.group_bn.get(group, []):
                m.eval()
        return self.model.get_submodule(setup.cached) if setup.cached else self.model

    def inputs(self, setup: StepSetup) -> torch.Tensor:
        """A synthetic batch (random on a real device: uninitialised memory can hold
        denormals, which slow a CPU down)."""
        make = torch.empty if self.fake is not None else torch.randn
        if setup.cached:
            shape = self.head_input(setup.image_size, setup.cached)
            return make(setup.batch, *shape, device=self.device)
        x = make(setup.batch, 3, setup.image_size, setup.image_size, device=self.device)
        return x.contiguous(memory_format=torch.channels_last) if setup.channels_last else x

    def head_input(self, image_size: int, module: str) -> tuple[int, ...]:
        """Shape of one image's input to the head module (what the feature cache stores)."""
        key = (image_size, module)
        if key not in self._head_inputs:
            box: list[torch.Size] = []
            handle = self.model.get_submodule(module).register_forward_pre_hook(lambda _m, a: box.append(a[0].shape))
            try:
                with self.context(), torch.no_grad():
                    was = self.model.training
                    self.model.eval()
                    self.model(torch.empty(1, 3, image_size, image_size, device=self.device))
                    self.model.train(was)
            finally:
                handle.remove()
            self._head_inputs[key] = tuple(box[0][1:])
        return self._head_inputs[key]

    def optimizer(self) -> Any:
        """The run's one optimizer, built as runtime/optim.py builds it: every param group of
        the plan (no-decay parts at weight_decay 0), the recipe's class and arguments."""
        if self._optimizer is None:
            named = dict(self.model.named_parameters())
            groups = [
                {"params": [named[n] for n in pg.params], **({} if pg.decay else {"weight_decay": 0.0})}
                for pg in self.plan.param_groups
            ]
            self._optimizer = optimizer_class(self.plan.optimizer.type)(groups, **self.plan.optimizer.kwargs)
        return self._optimizer

    def run_step(
        self, setup: StepSetup, net: nn.Module, flops: bool = False, sync: Callable[[], None] = lambda: None
    ) -> StepRecord:
        """One optimizer step as the runtime takes it: forward and backward of each
        micro-batch, optimizer step, gradients set to None. The forward and backward run in
        the fake mode (if any); the optimizer steps outside it, on the fake parameters,
        because optimizers read their step counters with .item(), which fake tensors refuse.
        With `flops`, the FLOPs of the forward and the backward; always the seconds of the
        three parts (meaningless on fake tensors) and the bytes saved for the backward."""

        fwd_flops = bwd_flops = activations = grads = 0
        fwd_s = bwd_s = 0.0
        skip = self.param_keys
        for _ in range(setup.micro_batches):
            sync()
            t0 = time.perf_counter()
            with self.context():
                x = self.inputs(setup)
                y = torch.zeros(setup.batch, dtype=torch.long, device=self.device)
                counter: Any = flop_counter() if flops else contextlib.nullcontext()
                with counter, saved_for_backward(skip) as saved, autocast(setup.precision):
                    loss = nn.functional.cross_entropy(net(x).float(), y)
                fwd_flops += counter.get_total_flops() if flops else 0
                activations = sum(saved.values())
                del x, y, saved
                sync()
                t1 = time.perf_counter()
                counter = flop_counter() if flops else contextlib.nullcontext()
                with counter:
                    loss.backward()
                bwd_flops += counter.get_total_flops() if flops else 0
                del loss
                sync()
            fwd_s, bwd_s = fwd_s + t1 - t0, bwd_s + time.perf_counter() - t1
        grads = tensor_bytes([p.grad for p in self.model.parameters() if p.grad is not None])
        t2 = time.perf_counter()
        if self.stepping:  # False: the optimizer refused fake tensors in make_state
            self.optimizer().step()
        self._clear_grads()  # zero_grad(set_to_none=True), as the runtime
        sync()
        return StepRecord(fwd_s, bwd_s, time.perf_counter() - t2, fwd_flops, bwd_flops, activations, grads)

    def _clear_grads(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    def state_keys(self) -> set[int]:
        """Storages of everything that lives between steps: parameters, buffers, optimizer state."""
        state = self.optimizer().state if self._optimizer is not None else {}
        return {storage_key(t) for t in tensors_in([self.model, state])}

    def make_state(self) -> None:
        """What a run's first step leaves behind, without its forward and backward: the
        optimizer's state for the parameters that train now (an optimizer step on zero
        gradients), so the step counted next is a steady-state one."""
        if not self.stepping:
            return
        with self.context():
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        try:
            self.optimizer().step()
        except Exception as exc:
            if self.fake is None:
                raise
            self.stepping = False
            self.notes.append(
                f"{self.plan.optimizer.type}.step() does not run on fake tensors "
                f"({type(exc).__name__}): its temporaries are not counted"
            )
        self._clear_grads()

    def step(self, setup: StepSetup) -> StepCost:
        """One steady-state step of a setup on fake tensors (the optimizer state of its
        groups made first, as the run's first step makes it). Two micro-batches are enough
        to see the gradients of the first alive during the second."""
        net = self.prepare(setup)
        small = replace(setup, micro_batches=min(setup.micro_batches, 2))
        self.make_state()
        live = LiveTensors(self.state_keys())
        with live:
            rec = self.run_step(small, net, flops=True)
        per_micro = setup.micro_batches / small.micro_batches
        return StepCost(
            rec.activations, live.peak, rec.grads, int(rec.fwd_flops * per_micro), int(rec.bwd_flops * per_micro)
        )

    def eval_flops(self, image_size: int, cached: str | None) -> int:
        """FLOPs of one validation image (on cached features: the head alone)."""
        with self.context(), torch.no_grad():
            self.model.eval()
            if cached:
                net, x = self.model.get_submodule(cached), torch.empty(1, *self.head_input(image_size, cached))
            else:
                net, x = self.model, torch.empty(1, 3, image_size, image_size, device=self.device)
            counter = flop_counter()
            with counter:
                net(x)
            self.model.train()
        return counter.get_total_flops()

    def backbone_flops(self, image_size: int, module: str) -> int:
        """FLOPs of computing one image's cached features (the forward up to the head)."""
        return self.eval_flops(image_size, None) - self.eval_flops(image_size, module)


# ---------------------------------------------------------------- the plan's phases


@dataclass(frozen=True)
class PhaseCost:
    """Estimated cost of one phase, or of one alternative of a trial phase. Bytes, FLOPs, seconds."""

    phase: str
    trial: int | None
    label: str | None
    steps: int  # with trials.prune: up to the rung where it stops in the costliest case (pruned_stops)
    evaluations: int
    batch_size: int
    image_size: int
    trainable: int  # parameters
    params: int
    buffers: int
    grads: int
    state: int
    activations: int
    ema: int
    copies: int  # in-memory copies of model and optimizer state: trial fork and best, restore_best
    cache: int  # cached features (host memory)
    step_peak: int
    peak: int
    peak_range: tuple[int, int]
    fwd_flops: int  # per optimizer step
    bwd_flops: int
    other_flops: int  # computing cached features and the phase's evaluations
    flops: int  # the whole phase (window) of this alternative, or with prune its steps up to `steps`
    step_seconds: tuple[float, float] | None = None
    seconds: tuple[float, float] | None = None


@dataclass(frozen=True)
class Estimate:
    phases: tuple[PhaseCost, ...]
    flops: int  # the run, every alternative of every trial phase included
    device: str  # cpu | cuda: what the run's device will be here
    device_memory: int | None
    device_memory_source: str
    seconds: tuple[float, float] | None = None
    profile: str | None = None  # what profile gave the times, or how to get one
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"label": "estimate", **asdict(self)}


def run_device(plan: Plan) -> str:
    """cpu or cuda: where `run` would train here (run.device "auto" follows torch)."""
    if plan.run.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return plan.run.device


def device_memory(device: str) -> tuple[int | None, str]:
    """The memory a phase must fit in, and what it is: the GPU's when `device` is cuda and
    one is visible, else the machine's RAM."""
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"GPU 0 ({props.name})"
    return machine_memory(), "this machine's RAM"


def setups(plan: Plan) -> list[tuple[PhasePlan, Any, StepSetup]]:
    """(phase, alternative or None, step setup) of every phase and trial alternative."""
    out = []
    for ph in plan.phases:
        data = ph.data or plan.data  # the batch and image size of the phase
        alternatives = ph.trials.alternatives if ph.trials else [None]
        for alt in alternatives:
            train = alt.train if alt is not None else ph.train
            cached = _cached(ph, alt)
            frozen_bn = (
                frozenset(g.name for g in plan.groups if g.name not in train) if ph.bn == "frozen" else frozenset()
            )
            out.append(
                (
                    ph,
                    alt,
                    StepSetup(
                        train=frozenset(train),
                        frozen_bn=frozen_bn,
                        batch=data.batch_size // plan.run.accumulate,
                        micro_batches=plan.run.accumulate,
                        image_size=data.image_size,
                        precision=plan.run.precision,
                        channels_last=plan.run.channels_last,
                        cached=cached,
                    ),
                )
            )
    return out


def _cached(ph: PhasePlan, alt: Any) -> str | None:
    if alt is not None:
        for c in alt.changes:
            if c.op == Op.FEATURES:
                return c.value if isinstance(c.value, str) else None
    return ph.cache.module if ph.cache.on else None


def _evaluations(plan: Plan, ph: PhasePlan, alt: Any, until: int | None = None) -> int:
    changes = alt.changes if alt is not None else plan.changes
    until = ph.end if until is None else until
    n = sum(1 for c in changes if c.op == Op.EVALUATE and c.target == ph.name and c.step <= until)
    if alt is not None and n == 0:  # the alternative's evaluations sit in the plan's list
        n = sum(1 for c in plan.changes if c.op == Op.EVALUATE and c.target == ph.name and c.step <= until)
    return n


def pruned_stops(plan: Plan, step_flops: Any) -> dict[tuple[str, int], int]:
    """With `trials.prune`, the step where each alternative stops in the costliest case: the
    alternatives with the costliest steps (`step_flops(phase, alternative)`) go on longest,
    the earlier first among equals. Which ones go on is decided by their metrics at run
    time; this bound is what the estimate counts. Alternatives of unpruned phases are absent."""
    out = {}
    for ph in plan.phases:
        t = ph.trials
        if t is None or t.prune is None:
            continue
        order = sorted(t.alternatives, key=lambda a: (-step_flops(ph, a), a.k))  # noqa: B023 (sorted here, in this iteration)
        for r, a in enumerate(order):
            out[(ph.name, a.k)] = next(
                (at for at, kept in zip(t.prune.at, t.prune.keep, strict=True) if r >= kept), ph.end
            )
    return out


def estimate(plan: Plan, profile: Any = None, memory: tuple[int | None, str] | None = None) -> Estimate:
    """The cost of every phase of `plan` (and of every trial alternative); `profile` is a
    calibrate.Rates (or None: FLOPs only); `memory` the device memory to compare with
    (default: this device's, `device_memory`)."""
    device = run_device(plan)
    fm = ModelSteps(plan)
    slots = state_tensors(plan.optimizer.type, plan.optimizer.kwargs)
    model = fm.param_bytes + fm.buffer_bytes
    ema = model if plan.run.ema else 0
    data = plan.data
    images = data.train_size + data.val_size
    names = [ph.name for ph in plan.phases]
    steps_cache: dict[StepSetup, StepCost] = {}
    phases = []
    every = setups(plan)
    for _, _, setup in every:
        if setup not in steps_cache:
            steps_cache[setup] = fm.step(setup)
    flops_of = {(ph.name, alt.k): steps_cache[s].fwd_flops + steps_cache[s].bwd_flops for ph, alt, s in every if alt}
    stops = pruned_stops(plan, lambda ph, a: flops_of[(ph.name, a.k)])
    for ph, alt, setup in every:
        cost = steps_cache[setup]
        stop = stops.get((ph.name, alt.k), ph.end) if alt is not None else ph.end
        # Optimizer state: every group trained now or by an earlier phase (torch keeps it).
        before = {g for earlier in plan.phases[: names.index(ph.name)] for g in earlier.train}
        state = 4 * slots * fm.numel(before | setup.train)
        copies = ((2 if ph.trials else 0) + (1 if ph.restore_best else 0)) * (model + state)
        evaluations = _evaluations(plan, ph, alt, stop)
        other = evaluations * data.val_size * fm.eval_flops(data.val_crop or setup.image_size, setup.cached)
        cache = 0
        if setup.cached:  # features of every image, computed once at the phase start
            cache = 4 * math.prod(fm.head_input(setup.image_size, setup.cached)) * images
            other += images * fm.backbone_flops(setup.image_size, setup.cached)
        peak = model + ema + copies + state + cost.step_peak + (cache if device == "cpu" else 0)
        steps = stop - ph.begin
        phases.append(
            PhaseCost(
                phase=ph.name,
                trial=alt.k if alt is not None else None,
                label=alt.label if alt is not None else None,
                steps=steps,
                evaluations=evaluations,
                batch_size=setup.batch * setup.micro_batches,
                image_size=setup.image_size,
                trainable=fm.numel(setup.train),
                params=fm.param_bytes,
                buffers=fm.buffer_bytes,
                grads=cost.grads,
                state=state,
                activations=cost.activations,
                ema=ema,
                copies=copies,
                cache=cache,
                step_peak=cost.step_peak,
                peak=peak,
                peak_range=(int(peak * MEMORY_RANGE[0]), int(peak * MEMORY_RANGE[1])),
                fwd_flops=cost.fwd_flops,
                bwd_flops=cost.bwd_flops,
                other_flops=other,
                flops=steps * (cost.fwd_flops + cost.bwd_flops) + other,
            )
        )
    memory = memory or device_memory(device)
    est = Estimate(
        phases=tuple(phases),
        flops=sum(p.flops for p in phases),
        device=device,
        device_memory=memory[0],
        device_memory_source=memory[1],
        notes=_notes(plan) + tuple(fm.notes),
    )
    if profile is None:
        return est
    timed = tuple(_timed(p, profile) for p in phases)
    seconds = (sum(p.seconds[0] for p in timed if p.seconds), sum(p.seconds[1] for p in timed if p.seconds))
    return replace(est, phases=timed, seconds=seconds, profile=profile.describe())


def _timed(p: PhaseCost, rates: Any) -> PhaseCost:
    """The phase's step and whole time: its steps at the profile's rates, its evaluations and
    cached features at the forward rate; both as the profile's spread."""
    step = rates.step_seconds(p.fwd_flops, p.bwd_flops, p.trainable)
    phase = p.steps * step + rates.forward_seconds(p.other_flops)
    lo, hi = rates.spread
    return replace(p, step_seconds=(step * lo, step * hi), seconds=(phase * lo, phase * hi))


def _notes(plan: Plan) -> tuple[str, ...]:
    notes = ["one process: under torchrun each process holds its share of the batch"]
    pruned = [ph.name for ph in plan.phases if ph.trials and ph.trials.prune]
    if pruned:
        notes.append(
            f"trials.prune ({', '.join(pruned)}): each alternative counted up to the rung where it stops if the "
            "alternatives with the costliest steps go on (the run's metrics decide which do)"
        )
    if plan.run.compile:
        notes.append("run.compile: counted as eager; torch.compile usually needs less activation memory")
    if plan.run.precision != "fp32":
        notes.append(
            f"{plan.run.precision}: counted with CPU autocast's op list (CUDA's lowers the same convolutions and matmuls)"
        )
    return tuple(notes)


# ---------------------------------------------------------------- reading it


def warnings(est: Estimate, memory: int | None = None, source: str | None = None) -> list[str]:
    """One warning per phase (or alternative) whose estimated peak may not fit, with the
    cheapest changes that make it smaller."""
    memory = est.device_memory if memory is None else memory
    source = source or est.device_memory_source
    if memory is None:
        return []
    out = []
    for p in est.phases:
        if p.peak_range[1] <= memory:
            continue
        name = p.phase if p.trial is None else f"{p.phase} (alternative {p.trial}: {p.label})"
        verb = "does not fit" if p.peak_range[0] > memory else "may not fit"
        out.append(
            f"warning: phase {name} {verb} in {gib(memory)} ({source}): estimated peak "
            f"{gib(p.peak_range[0])}-{gib(p.peak_range[1])}, of which activations {gib(p.activations)} "
            f"and step peak {gib(p.step_peak)}; " + _cheaper(p)
        )
    return out


def _cheaper(p: PhaseCost) -> str:
    half = p.step_peak // 2
    ideas = [
        (
            f"halve the batch size ({p.batch_size} -> {max(1, p.batch_size // 2)}, or run.accumulate = 2: "
            f"saves about {gib(half)})"
        )
    ]
    ideas.append('precision = "bf16" (activations about half)')
    ideas.append("run.channels_last = true (faster convolutions, same size)")
    if p.grads + p.activations > p.step_peak // 4:
        ideas.append("keep more groups frozen (activations and gradients of the trained part only)")
    return "cheapest changes: " + "; ".join(ideas)


def gib(n: float) -> str:
    """Bytes in binary units, as GPUs and `--device-memory` count them."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _g(flops: float) -> str:
    return f"{flops / 1e9:,.1f}"


def _span(pair: tuple[float, float] | None) -> str:
    if pair is None:
        return "-"
    return f"{_duration(pair[0])}-{_duration(pair[1])}"


def _duration(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def render(est: Estimate) -> str:
    """The estimate as text: one row per phase (and alternative), then the run."""
    head = [
        "phase",
        "trainable",
        "params",
        "grads",
        "state",
        "saved",
        "step peak",
        "ema+copies",
        "peak (est.)",
        "GFLOP fwd/bwd",
        "step",
        "phase time",
    ]
    rows = [head]
    for p in est.phases:
        if p.trial == 0:  # a trial phase: its name, then one row per alternative
            rows.append([f"{p.phase} (trials)"] + [""] * (len(head) - 1))
        name = p.phase if p.trial is None else f"  {p.trial}: {p.label}"
        rows.append(
            [
                name,
                f"{p.trainable / 1e6:.2f}M",
                gib(p.params + p.buffers),
                gib(p.grads),
                gib(p.state),
                gib(p.activations),
                gib(p.step_peak),
                gib(p.ema + p.copies) + (f" +{gib(p.cache)} cache" if p.cache else ""),
                f"{gib(p.peak_range[0])}-{gib(p.peak_range[1])}",
                f"{_g(p.fwd_flops)} / {_g(p.bwd_flops)}",
                _span(p.step_seconds),
                _span(p.seconds),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["", "cost estimate (a fake-tensor step per phase; not measured; tensors on the run's device)"]
    lines += [
        "  "
        + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))).rstrip()
        for r in rows
    ]
    lines += [
        "  saved: activations kept for the backward. step peak: most bytes alive during a step beyond",
        "  the model and optimizer state (batch, activations, gradients, the layer being computed).",
        (
            f"  peak = params + state + ema/copies + step peak (+ cached features on a CPU), "
            f"{MEMORY_RANGE[0]:g}-{MEMORY_RANGE[1]:g}x."
        ),
    ]
    total = f"run: {est.flops / 1e12:,.2f} TFLOP, trials included"
    total += f"; time {_span(est.seconds)}" if est.seconds else ""
    lines.append("  " + total)
    if est.profile:
        lines.append(f"  time from the device profile {est.profile}")
    else:
        lines.append(
            "  time: no device profile for this device and precision; measure one with "
            "`ftcompile calibrate RECIPE` (a few timed steps), then plan --estimate again"
        )
    if est.device_memory:
        lines.append(f"  device memory: {gib(est.device_memory)} ({est.device_memory_source})")
    lines += [f"  note: {n}" for n in est.notes]
    return "\n".join(lines)
