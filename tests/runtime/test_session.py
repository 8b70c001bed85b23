"""The runtime session runs any window of a plan from a saved state, bitwise.

Running [0, k), saving `state()`, loading it into a fresh session and running [k, end) must
give exactly the model of one uninterrupted [0, end) run — inside a phase, at a phase
boundary, with and without the feature cache. A session can also go back to a state it
saved and run the window again (what trials do).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ftcompile.runtime.loop import Hooks, Session, StepInfo
from test_features import RECIPE

from ftcompile.compiler import compile_recipe
from ftcompile.plan import Plan

HEAD_STEPS = 28  # 2 epochs of ceil(431 / 32) = 14 steps: the head phase's window is [0, 28)


@pytest.fixture(scope="module", params=["cached", "uncached"])
def plan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    folder = tmp_path_factory.mktemp(request.param)
    path = folder / "r.toml"
    path.write_text(RECIPE.format(name="window", cache="" if request.param == "cached" else "cache_features = false"))
    plan = compile_recipe(path)
    assert plan.phases[0].cache.on == (request.param == "cached")
    assert (plan.phases[0].begin, plan.phases[0].end, plan.total_steps) == (0, HEAD_STEPS, HEAD_STEPS + 4)
    return plan


@pytest.fixture(scope="module")
def uninterrupted(plan: Plan) -> dict[str, torch.Tensor]:
    session = Session(plan, Path("."))
    session.run(0, plan.total_steps)
    return session.model.state_dict()


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("k", [9, HEAD_STEPS, HEAD_STEPS + 2], ids=["inside-head", "boundary", "inside-all"])
def test_window_from_a_saved_state_in_a_fresh_session(plan: Plan, uninterrupted: dict, k: int) -> None:
    first = Session(plan, Path("."))
    first.run(0, k)
    state = first.state()
    assert state["step"] == k
    second = Session(plan, Path("."))
    second.load_state(state)
    second.run(k, plan.total_steps)
    assert_bitwise(second.model.state_dict(), uninterrupted)
    assert second.step == plan.total_steps


def test_a_session_goes_back_to_a_state_and_repeats_the_window(plan: Plan, uninterrupted: dict) -> None:
    session = Session(plan, Path("."))
    session.run(0, HEAD_STEPS)
    fork = session.state()
    session.run(HEAD_STEPS, plan.total_steps)
    first = {k: v.clone() for k, v in session.model.state_dict().items()}
    session.load_state(fork, keep_features=True)
    session.run(HEAD_STEPS, plan.total_steps)
    assert_bitwise(first, uninterrupted)
    assert_bitwise(session.model.state_dict(), uninterrupted)


def test_a_window_must_start_where_the_session_is(plan: Plan) -> None:
    session = Session(plan, Path("."))
    with pytest.raises(ValueError, match="at step 0, not 3"):
        session.run(3, 5)


class Steps(Hooks):
    def __init__(self) -> None:
        self.infos: list[StepInfo] = []
        self.started = 0

    def on_start(self, session: Session) -> None:
        self.started += 1

    def on_step(self, session: Session, info: StepInfo) -> None:
        self.infos.append(info)


def test_step_hooks_see_every_step_with_its_lrs_and_timings(plan: Plan) -> None:
    hook = Steps()
    session = Session(plan, Path("."), hooks=[hook])
    session.run(0, HEAD_STEPS + 1)
    assert hook.started == 1
    assert [i.step for i in hook.infos] == list(range(HEAD_STEPS + 1))
    assert [i.phase for i in hook.infos] == ["head"] * HEAD_STEPS + ["all"]
    assert hook.infos[0].lrs["head"] == pytest.approx(0.05 / 25)  # OneCycleLR starts at max_lr / div_factor
    assert hook.infos[-1].lrs == {"body": 0.001, "body.no_decay": 0.001, "head": 0.01, "head.no_decay": 0.01}
    assert all(0 < i.compute <= i.seconds for i in hook.infos)
    # 431 train images in batches of 32: 13 full batches and one of 431 - 13 * 32 = 15 per epoch
    assert [i.images for i in hook.infos] == ([32] * 13 + [15]) * 2 + [32]
