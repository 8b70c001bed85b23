"""What torch classes mean, in one place: the compiler and the runtime read it alike.

The tables (which optimizer calls its momentum what, which scheduler arguments measure a
phase's length, which state tensors an optimizer keeps) and lookups of the torch classes by
name. Nothing of the recipe language: the checks of a recipe's optimizer and scheduler
arguments against these classes are in torch_checks.py, so the runtime (runtime/optim.py)
reads this module without reaching the recipe schema. torch is imported inside the
functions: `diff` renders a plan's memory estimate (memory.py) without importing torch.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

# Where each torch.optim class keeps its momentum: a `momentum` argument, the first of its
# `betas` (the Adam family), or nowhere (None: per-phase `momentum` overrides are an error).
# A class missing here (a newer torch) is looked up in its signature the same way.
MOMENTUM_FIELD: dict[str, str | None] = {
    "SGD": "momentum",
    "RMSprop": "momentum",
    "Muon": "momentum",
    "Adam": "betas",
    "AdamW": "betas",
    "Adamax": "betas",
    "NAdam": "betas",
    "RAdam": "betas",
    "SparseAdam": "betas",
    "ASGD": None,
    "Adadelta": None,
    "Adafactor": None,
    "Adagrad": None,
    "LBFGS": None,
    "Rprop": None,
}
# Scheduler arguments that measure the phase; they default to its length in steps.
LENGTH_ARGS = {
    "OneCycleLR": "total_steps",
    "CosineAnnealingLR": "T_max",
    "LinearLR": "total_iters",
    "ConstantLR": "total_iters",
    "PolynomialLR": "total_iters",
}
MAX_LR_DEFAULT = ("OneCycleLR", "CyclicLR")
# State tensors of a parameter's size that each torch.optim class keeps for every parameter
# that has trained (the memory estimate of `ftcompile plan`), and the arguments that add one
# when true or non-zero. A class missing here (a newer torch) is assumed to keep two, as Adam.
STATE_TENSORS: dict[str, tuple[int, dict[str, int]]] = {
    "SGD": (0, {"momentum": 1}),  # momentum_buffer
    "Adam": (2, {"amsgrad": 1}),  # exp_avg, exp_avg_sq (+ max_exp_avg_sq)
    "AdamW": (2, {"amsgrad": 1}),
    "NAdam": (2, {}),
    "RAdam": (2, {}),
    "Adamax": (2, {}),  # exp_avg, exp_inf
    "SparseAdam": (2, {}),
    "Adagrad": (1, {}),  # sum
    "Adadelta": (2, {}),  # square_avg, acc_delta
    "RMSprop": (1, {"momentum": 1, "centered": 1}),  # square_avg (+ momentum_buffer, grad_avg)
    "Rprop": (2, {}),  # prev, step_size
    "ASGD": (1, {}),  # ax
    "Adafactor": (0, {}),  # factored: a row and a column per matrix, negligible
    "LBFGS": (2, {}),  # d, prev_flat_grad; plus 2 x history_size copies (state_tensors)
    "Muon": (1, {}),  # momentum_buffer
}
# Need a callable or a metric, which a TOML recipe cannot give.
UNSUPPORTED_SCHEDULERS = {"LambdaLR", "MultiplicativeLR", "ReduceLROnPlateau", "SequentialLR", "ChainedScheduler"}


def optimizer_class(name: str) -> Any:
    return getattr(importlib.import_module("torch.optim"), name)


def scheduler_class(name: str) -> Any:
    return getattr(importlib.import_module("torch.optim.lr_scheduler"), name)


def momentum_field(opt_type: str) -> str | None:
    """ "momentum", "betas" (momentum is betas[0]) or None, from the table or the signature."""
    if opt_type in MOMENTUM_FIELD:
        return MOMENTUM_FIELD[opt_type]
    params = _init_params(optimizer_class(opt_type))
    return "momentum" if "momentum" in params else "betas" if "betas" in params else None


def base_value(opt_type: str, kwargs: dict[str, Any], name: str) -> float | None:
    """The optimizer's value of `name` (lr, weight_decay, momentum) before any phase sets it:
    the recipe's argument, else the class default; momentum reads betas[0] where that is it."""
    key = momentum_field(opt_type) if name == "momentum" else name
    if key is None:
        return None
    if key in kwargs:
        value = kwargs[key]
    else:
        params = _init_params(optimizer_class(opt_type))
        if key not in params:
            return None
        value = params[key].default
    if key == "betas" and name == "momentum":
        value = value[0]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def state_tensors(opt_type: str, kwargs: dict[str, Any]) -> int:
    """Parameter-sized state tensors the optimizer keeps per trained parameter (table above)."""
    base, extra = STATE_TENSORS.get(opt_type, (2, {}))
    params = _init_params(optimizer_class(opt_type))

    def given(arg: str) -> Any:
        return kwargs[arg] if arg in kwargs else (params[arg].default if arg in params else None)

    count = base + sum(n for arg, n in extra.items() if given(arg))
    if opt_type == "LBFGS":
        count += 2 * int(given("history_size") or 100)
    return count


def dummy_optimizer(opt_type: str, kwargs: dict[str, Any], n_groups: int) -> Any:
    """An optimizer of the recipe's class over one scalar per param group, for tracing."""
    import torch  # start-up time: diff renders a plan's memory (memory.py) without torch

    groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(n_groups)]
    with _eager_add_param_group():
        return optimizer_class(opt_type)(groups, **kwargs)


@contextlib.contextmanager
def _eager_add_param_group() -> Iterator[None]:
    """Build an optimizer without importing torch._dynamo.

    `Optimizer.add_param_group` is wrapped by torch so that torch.compile never traces it;
    the wrapper imports torch._dynamo on its first call, which takes as long as importing
    torch itself, a third of a whole `ftcompile plan`. Outside torch.compile the wrapper
    only calls the function, so the compiler's dummy optimizers call it directly (for the
    time of their construction; the runtime's real optimizer is built as torch builds it).
    """
    from torch.optim import Optimizer  # start-up time: diff renders a plan's memory (memory.py) without torch

    wrapped = Optimizer.__dict__["add_param_group"]
    Optimizer.add_param_group = inspect.unwrap(wrapped)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Optimizer.add_param_group = wrapped  # type: ignore[method-assign]


@cache
def _init_params(cls: type) -> Any:
    """inspect.signature is slow and asked once per phase; a torch class's signature is fixed."""
    return inspect.signature(getattr(cls, "__init__")).parameters  # noqa: B009 - the class's own, not an instance's


def signature_args(cls: type, skip: Sequence[str]) -> dict[str, inspect.Parameter]:
    params = _init_params(cls)
    return {
        n: p for n, p in params.items() if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
