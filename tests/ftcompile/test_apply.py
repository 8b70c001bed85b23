"""`apply.GroupView` stands in for an optimizer in front of torch's schedulers without calling
`Optimizer.__init__` (which would copy the param groups), so it fills the attributes that
`__init__` sets itself. These tests fail, naming the attribute, on a torch version whose
Optimizer or LRScheduler needs one the view does not have.
"""

from __future__ import annotations

import pytest
import torch

from ftcompile.apply import Executor, GroupView
from ftcompile.plan import SchedulerStart
from ftcompile.torch_args import LENGTH_ARGS, MOMENTUM_FIELD, momentum_field, optimizer_class


def real_optimizer() -> torch.optim.Optimizer:
    params = [torch.zeros(1, requires_grad=True) for _ in range(3)]
    return torch.optim.SGD([{"params": [p]} for p in params], lr=0.1, momentum=0.9)


def test_the_view_has_every_attribute_optimizer_init_sets() -> None:
    opt = real_optimizer()
    view = GroupView(opt, [0, 2])
    missing = sorted(set(vars(opt)) - set(vars(view)))
    assert not missing, (
        f"torch {torch.__version__}: Optimizer.__init__ sets {missing}, which GroupView does not; "
        "add them in ftcompile/apply.py GroupView.__init__"
    )


def test_the_view_shares_the_real_groups() -> None:
    opt = real_optimizer()
    view = GroupView(opt, [0, 2])
    assert view.param_groups[0] is opt.param_groups[0] and view.param_groups[1] is opt.param_groups[2]
    assert view.state is opt.state


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "OneCycleLR", "args": {"max_lr": 0.1, "total_steps": 10}},
        {"type": "CyclicLR", "args": {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}},
        {"type": "CosineAnnealingWarmRestarts", "args": {"T_0": 3}},
        {"type": "StepLR", "args": {"step_size": 2}},
        {"type": "LinearLR", "args": {"total_iters": 4}},
    ],
    ids=lambda s: s["type"],
)
def test_schedulers_step_over_a_view_and_write_into_the_real_groups(spec: dict) -> None:
    opt = real_optimizer()
    ex = Executor(opt, ["a", "b", "c"])
    ex.start_scheduler(SchedulerStart(spec["type"], ("a", "c"), spec["args"], end=100))
    for step in range(1, 6):
        opt.step()
        ex.after_step(step)
    # The groups the scheduler drives moved together; the other one kept its lr.
    assert opt.param_groups[0]["lr"] == opt.param_groups[2]["lr"]
    assert opt.param_groups[1]["lr"] == 0.1


def test_the_momentum_table_matches_every_torch_optimizer() -> None:
    import inspect

    classes = [
        n
        for n, c in vars(torch.optim).items()
        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer"
    ]
    for name in classes:
        params = inspect.signature(optimizer_class(name).__init__).parameters
        found = "momentum" if "momentum" in params else "betas" if "betas" in params else None
        assert momentum_field(name) == found, name
        assert name not in MOMENTUM_FIELD or MOMENTUM_FIELD[name] == found, name


def test_length_arguments_exist_in_their_schedulers() -> None:
    import inspect

    for sched, arg in LENGTH_ARGS.items():
        assert arg in inspect.signature(getattr(torch.optim.lr_scheduler, sched).__init__).parameters, (sched, arg)
