"""Applies a plan's optimizer changes: the one code path shared by `plan --trace` and the runtime.

The trace in `ftcompile plan` and the LR a real run reads from its optimizer come from the
same code acting on the same change records, which is what makes them equal step for step.
Torch schedulers are used as they are; each one is built fresh over a view of the param
groups of its phase, after the keys an earlier scheduler left in them (`initial_lr`, ...)
have been removed, so nothing leaks into a later phase and each scheduler starts exactly
as it does on a fresh optimizer (CyclicLR, for one, sets lr = base_lr before `initial_lr`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NoReturn

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ftcompile.plan import Change, Op, SchedulerStart
from ftcompile.torch_args import momentum_field, scheduler_class

# Keys a scheduler stores in param groups; cleared before the next scheduler starts.
_SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


class GroupView(Optimizer):
    """The param groups of one phase, seen as an optimizer by a torch scheduler.

    The dicts are the real optimizer's, so what the scheduler writes lands there. Only the
    real optimizer is ever stepped.
    """

    def __init__(self, optimizer: Optimizer, indices: Sequence[int]) -> None:  # noqa: D107
        # Optimizer.__init__ would copy the groups; a view must share them. So the attributes
        # it sets are set here by hand (private to torch: tests/ftcompile/test_apply.py
        # names any that a torch version adds).
        self.defaults = optimizer.defaults
        self.state = optimizer.state
        self.param_groups = [optimizer.param_groups[i] for i in indices]
        self._opt_called = True  # steps happen on the real optimizer
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        self._warned_capturable_if_run_uncaptured = True

    def step(self, closure: object = None) -> NoReturn:  # pragma: no cover - never called
        raise RuntimeError("a GroupView is never stepped")


class Executor:
    """Applies `set`, `scheduler` and `reset_state` changes (the ops whose kind is "optimizer")
    and steps the live scheduler."""

    def __init__(self, optimizer: Optimizer, param_group_names: Sequence[str]) -> None:
        self.optimizer = optimizer
        self.index = {name: i for i, name in enumerate(param_group_names)}
        self.momentum = momentum_field(type(optimizer).__name__)
        self.scheduler: LRScheduler | None = None
        self.scheduler_end = 0
        self._indices: list[int] = []
        self.handlers: dict[Op, Callable[[Change], None]] = {
            Op.SET: self._set,
            Op.SCHEDULER: self._scheduler,
            Op.RESET_STATE: self._reset_state,
        }

    def apply(self, change: Change) -> None:
        handler = self.handlers.get(change.op)
        if handler is None:
            raise ValueError(f"the executor applies optimizer changes, not {change.op}")
        handler(change)

    def _set(self, change: Change) -> None:
        target, field, value = change.target, change.field, change.value
        assert target is not None and field is not None and isinstance(value, (int, float)), change
        group = self.optimizer.param_groups[self.index[target]]
        if field == "momentum" and self.momentum == "betas":
            group["betas"] = (value, group["betas"][1])
        else:
            group[field] = value

    def _scheduler(self, change: Change) -> None:
        if change.value is None:
            self.scheduler = None
            return
        assert isinstance(change.value, SchedulerStart), change
        self.start_scheduler(change.value)

    def _reset_state(self, change: Change) -> None:
        assert change.target is not None, change
        for param in self.optimizer.param_groups[self.index[change.target]]["params"]:
            self.optimizer.state.pop(param, None)

    def start_scheduler(self, spec: SchedulerStart) -> None:
        """Build a fresh scheduler over the phase's groups, at their current lr."""
        indices = [self.index[name] for name in spec.param_groups]
        for i in indices:
            group = self.optimizer.param_groups[i]
            for key in _SCHEDULER_KEYS:
                group.pop(key, None)
        self._indices = indices
        view = GroupView(self.optimizer, indices)
        # A copy: a scheduler may keep (and change) the lists it is given; the plan's stay as written.
        self.scheduler = scheduler_class(spec.type)(view, **copy.deepcopy(dict(spec.args)))
        self.scheduler_end = spec.end

    def rebind(self) -> None:
        """After optimizer.load_state_dict (which makes new group dicts), point the view at them."""
        if self.scheduler is not None:
            view = self.scheduler.optimizer
            view.param_groups = [self.optimizer.param_groups[i] for i in self._indices]

    def after_step(self, steps_done: int) -> None:
        """Step the live scheduler after optimizer step `steps_done - 1`, within its phase."""
        if self.scheduler is not None and steps_done < self.scheduler_end:
            self.scheduler.step()

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]
