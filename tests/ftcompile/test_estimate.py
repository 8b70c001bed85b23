"""`plan --estimate`: memory and FLOPs of each phase from a fake-tensor step, against real
CPU steps; the device profile of `calibrate`; warnings where a phase may not fit.

The reference setting is the issue's: resnet18 at 64 px, batch 16, in a head-only, a
layer4 and a full phase. Times are never asserted here (benchmarks/estimate.py prints them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ftcompile import calibrate, estimate
from ftcompile.cli import main
from ftcompile.compiler import CompileOptions, compile_checked
from ftcompile.memory import parse_size
from ftcompile.plan import Plan

REPO = Path(__file__).resolve().parents[2]

THREE_PHASES = """\
name = "r18-three"
seed = 0
[model]
arch = "resnet18"
num_classes = 10
[data]
builtin = "digits"
image_size = {image_size}
batch_size = {batch}
[optimizer]
type = "{optimizer}"
{optimizer_args}
[groups]
early = ["stem", "stage1", "stage2", "stage3"]
layer4 = ["layer4"]
head = ["head"]
[phases.head]
train = ["head"]
steps = 3
lr = {{ head = 0.1 }}
[phases.layer4]
after = ["head"]
train = ["head", "layer4"]
steps = 3
lr = {{ head = 0.01, layer4 = "head / 10" }}
[phases.full]
after = ["layer4"]
train = ["early", "layer4", "head"]
steps = 3
lr = {{ head = 0.01, layer4 = "head / 10", early = "layer4 / 10" }}
[run]
device = "cpu"
{run}
"""


def three_phases(
    image_size: int = 64,
    batch: int = 16,
    optimizer: str = "SGD",
    optimizer_args: str = "momentum = 0.9\nweight_decay = 1e-4",
    run: str = "",
) -> str:
    return THREE_PHASES.format(
        image_size=image_size, batch=batch, optimizer=optimizer, optimizer_args=optimizer_args, run=run
    )


def compiled(write: Callable[..., Path], text: str) -> Plan:
    return compile_checked(write(text), CompileOptions()).plan


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, estimate.Estimate]:
    path = tmp_path_factory.mktemp("r18") / "r.toml"
    path.write_text(three_phases())
    plan = compile_checked(path, CompileOptions()).plan
    return plan, estimate.estimate(plan)


def test_memory_within_15_percent_of_a_real_cpu_step(r18: tuple[Plan, estimate.Estimate]) -> None:
    """Activations + gradients + optimizer state (the step peak holds the activations and
    gradients alive at its worst moment) against one real step, counted by live storages."""
    torch.manual_seed(0)
    plan, est = r18
    real = estimate.ModelSteps(plan, device="cpu")
    for (ph, _, setup), cost in zip(estimate.setups(plan), est.phases, strict=False):
        measured = calibrate.measure(real, setup, steps=1)
        predicted = cost.state + cost.step_peak
        actual = measured.state + measured.step_peak
        assert 0.85 <= predicted / actual <= 1.15, (ph.name, predicted, actual)
        assert cost.grads == measured.grads  # 4 bytes per trained parameter, exactly
        assert 0.85 <= max(cost.activations, 1) / max(measured.activations, 1) <= 1.15, ph.name
        # SGD with momentum: one fp32 buffer per parameter trained so far (the table in torch_args).
        assert cost.state == measured.state
    by_name = {p.phase: p for p in est.phases}
    # Activations grow as more of the network trains; the head alone keeps almost none.
    assert by_name["head"].activations < by_name["layer4"].activations < by_name["full"].activations
    assert by_name["head"].activations < 100_000


def test_flops_equal_flop_counter_mode_over_a_real_step(r18: tuple[Plan, estimate.Estimate]) -> None:
    plan, est = r18
    real = estimate.ModelSteps(plan, device="cpu")
    for (ph, _, setup), cost in zip(estimate.setups(plan), est.phases, strict=False):
        net = real.prepare(setup)
        x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
        with FlopCounterMode(display=False) as fwd:
            loss = torch.nn.functional.cross_entropy(net(x), y)
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        assert (cost.fwd_flops, cost.bwd_flops) == (fwd.get_total_flops(), bwd.get_total_flops()), ph.name
    head = est.phases[0]
    # Only the head's Linear has a backward: its weight gradient, 2 * 16 * 512 * 10 FLOPs.
    assert head.bwd_flops == 2 * 16 * 512 * 10
    assert head.bwd_flops < 0.001 * head.fwd_flops
    assert est.phases[1].bwd_flops < est.phases[2].bwd_flops < 2.5 * est.phases[2].fwd_flops
    # The run: every step's forward and backward, plus each phase's evaluation over the val set.
    assert est.flops == sum(p.flops for p in est.phases)
    assert all(p.flops == p.steps * (p.fwd_flops + p.bwd_flops) + p.other_flops for p in est.phases)


def test_grouped_convolution_backward_counts_each_group_once() -> None:
    """A depthwise convolution's backward is two convolutions the size of its forward
    (grad_input and grad_weight); torch's own formula counts the weight gradient C times."""
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    with estimate.flop_counter() as fwd:
        out = conv(x)
    with estimate.flop_counter() as bwd:
        out.sum().backward()
    forward = 2 * 2 * 16 * 16 * 8 * 3 * 3  # 2 FLOPs per multiply-add, one 3x3 filter per channel and pixel
    assert fwd.get_total_flops() == forward
    assert bwd.get_total_flops() == 2 * forward
    # groups = 1: exactly torch's count.
    dense = torch.nn.Conv2d(8, 8, 3, padding=1)
    with estimate.flop_counter() as ours, FlopCounterMode(display=False) as theirs:
        dense(x).sum().backward()
    assert ours.get_total_flops() == theirs.get_total_flops()


def test_peak_adds_up_and_is_a_range(r18: tuple[Plan, estimate.Estimate]) -> None:
    _, est = r18
    for p in est.phases:
        assert p.peak == p.params + p.buffers + p.ema + p.copies + p.state + p.step_peak + p.cache
        assert p.peak_range[0] < p.peak < p.peak_range[1]
        assert p.step_peak >= p.grads + p.activations // 2


def test_adam_keeps_two_buffers_and_state_outlives_the_phase(write: Callable[..., Path]) -> None:
    plan = compiled(
        write, three_phases(image_size=32, batch=4, optimizer="AdamW", optimizer_args="weight_decay = 0.05")
    )
    est = estimate.estimate(plan)
    numel = {p.phase: p.trainable for p in est.phases}
    # exp_avg and exp_avg_sq per trained parameter (4 bytes each), for every group trained so far.
    assert [p.state for p in est.phases] == [8 * numel["head"], 8 * numel["layer4"], 8 * numel["full"]]


def test_accumulate_same_flops_less_memory(write: Callable[..., Path]) -> None:
    one = estimate.estimate(compiled(write, three_phases(image_size=32, batch=8)))
    four = estimate.estimate(compiled(write, three_phases(image_size=32, batch=8, run="accumulate = 4")))
    for a, b in zip(one.phases, four.phases, strict=False):
        assert (a.fwd_flops, a.bwd_flops) == (b.fwd_flops, b.bwd_flops)
    assert four.phases[2].activations < one.phases[2].activations


def test_ema_and_trials_add_their_copies(write: Callable[..., Path]) -> None:
    text = three_phases(image_size=32, batch=4, run="ema = { decay = 0.99 }").replace(
        "[run]", '[phases.full.trials]\ntrain = [["early", "layer4", "head"], ["layer4", "head"]]\n\n[run]'
    )
    est = estimate.estimate(compiled(write, text))
    rows = [(p.phase, p.trial) for p in est.phases]
    assert rows == [("head", None), ("layer4", None), ("full", 0), ("full", 1)]
    full = [p for p in est.phases if p.phase == "full"]
    assert full[0].trainable > full[1].trainable == est.phases[1].trainable  # each alternative its own trained set
    assert full[0].bwd_flops > full[1].bwd_flops == est.phases[1].bwd_flops
    model = full[0].params + full[0].buffers
    assert all(p.ema == model for p in est.phases)
    assert full[0].copies == 2 * (model + full[0].state)  # the phase-start fork and the best alternative so far
    assert est.phases[0].copies == 0
    # Every alternative runs the phase's whole window: the run's FLOPs count them all.
    assert est.flops == sum(p.flops for p in est.phases)


def test_feature_cache_phase_runs_the_head_alone(write: Callable[..., Path]) -> None:
    text = three_phases(image_size=32, batch=4).replace('train = ["head"]\n', 'train = ["head"]\nbn = "frozen"\n', 1)
    plan = compiled(write, text)
    assert plan.phases[0].cache.on
    est = estimate.estimate(plan)
    head = est.phases[0]
    assert head.fwd_flops == 2 * 4 * 512 * 10  # the Linear on cached features
    assert head.cache == 4 * 512 * (plan.data.train_size + plan.data.val_size)
    assert head.other_flops > 0  # computing the features once, and the evaluations


def test_plan_estimate_text_and_json(
    write: Callable[..., Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write(three_phases(image_size=32, batch=4))
    assert main(["plan", str(path), "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "cost estimate" in out and "not measured" in out
    assert "no device profile" in out and "ftcompile calibrate" in out
    for phase in ("head", "layer4", "full"):
        assert any(line.strip().startswith(phase) for line in out.split("cost estimate")[1].splitlines())
    assert main(["plan", str(path), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["plan", str(path), "--json", "--estimate"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["hash"] == plain["hash"]
    assert {k: v for k, v in both.items() if k != "estimate"} == plain
    cost = both["estimate"]
    assert cost["label"] == "estimate" and cost["seconds"] is None and cost["profile"] is None
    assert [p["phase"] for p in cost["phases"]] == ["head", "layer4", "full"]
    assert cost["flops"] == sum(p["flops"] for p in cost["phases"])
    # The file still loads as a plan: the estimate rides beside it, outside the hash.
    (tmp_path / "p.json").write_text(json.dumps(both))
    assert Plan.load(tmp_path / "p.json").hash == plain["hash"]


def test_calibrate_stores_a_profile_that_plan_uses(
    write: Callable[..., Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    path = write(three_phases(image_size=32, batch=4))
    assert main(["calibrate", str(path), "--steps", "1"]) == 0
    out = capsys.readouterr().out
    profiles = list((cache / "ftcompile" / "profiles").glob("cpu-*-fp32.json"))
    assert len(profiles) == 1 and f"wrote profile: {profiles[0]}" in out
    data = json.loads(profiles[0].read_text())
    assert (data["device"], data["torch"], data["precision"]) == ("cpu", calibrate.torch_version(), "fp32")
    entry = data["entries"][-1]
    assert entry["model"] == "resnet18" and entry["source"] == "calibrate"
    assert entry["fwd_flops_per_s"] > 0 and entry["bwd_flops_per_s"] > 0 and entry["opt_params_per_s"] > 0
    assert main(["plan", str(path), "--estimate"]) == 0
    out = capsys.readouterr().out
    assert f"({profiles[0]})" in out and "no device profile" not in out
    assert main(["plan", str(path), "--json", "--estimate"]) == 0
    cost = json.loads(capsys.readouterr().out)["estimate"]
    lo, hi = cost["seconds"]
    assert 0 < lo < hi and str(profiles[0]) in cost["profile"]
    for p in cost["phases"]:
        # A phase's time: its steps at the profile's rates, plus its evaluations.
        rates = calibrate.find("cpu", "fp32", "resnet18")
        assert rates is not None
        step = rates.step_seconds(p["fwd_flops"], p["bwd_flops"], p["trainable"])
        assert p["step_seconds"] == pytest.approx([step * rates.spread[0], step * rates.spread[1]])
    assert len(calibrate.load(profiles[0])["entries"]) == 1  # each calibration adds one


def test_profile_folder_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert calibrate.cache_dir() == tmp_path / "ftcompile" / "profiles"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert calibrate.cache_dir() == tmp_path / "home" / ".cache" / "ftcompile" / "profiles"


def test_check_device_memory(write: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write(three_phases(image_size=32, batch=4))
    assert main(["check", str(path), "--device-memory", "24GB"]) == 0
    out = capsys.readouterr().out
    assert "estimated peaks head" in out and "of 24.0 GiB (--device-memory)" in out
    assert main(["check", str(path), "--device-memory", "60MB"]) == 2
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "may not fit in 60.0 MiB" in captured.out
    # The warning names the phase, its peak and the cheapest changes.
    assert "phase full" in captured.err and "batch size" in captured.err and "bf16" in captured.err
    assert "phase head" not in captured.err


def test_plan_estimate_warns_against_the_machine(r18: tuple[Plan, estimate.Estimate]) -> None:
    _, est = r18
    assert estimate.warnings(est, memory=2**40) == []
    lines = estimate.warnings(est, memory=100 * 2**20, source="GPU 0 (test)")
    assert [line.split()[2] for line in lines] == ["layer4", "full"]
    assert "GPU 0 (test)" in lines[0] and "keep more groups frozen" in lines[1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24GB", 24 * 2**30),
        ("24 GiB", 24 * 2**30),
        ("80G", 80 * 2**30),
        ("512MB", 512 * 2**20),
        ("1.5TB", int(1.5 * 2**40)),
        ("1000", 1000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_bad_device_memory_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "r.toml", "--device-memory", "lots"])
    assert exc.value.code == 2 and "not a memory size" in capsys.readouterr().err


def test_plain_plan_never_imports_the_estimate(write: Callable[..., Path]) -> None:
    """The estimate's fake step (and FakeTensorMode's import) is paid only when asked for."""
    path = write(three_phases(image_size=32, batch=4))
    code = (
        "import sys; from ftcompile.cli import main; main(['plan', sys.argv[1]]); "
        "assert 'ftcompile.estimate' not in sys.modules and 'ftcompile.calibrate' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr


def test_the_docs_example_is_what_the_estimate_gives_now() -> None:
    """docs/cost-estimates.md shows a real `plan --estimate` of resnet50-gradual: its memory
    and FLOP columns are deterministic (fake tensors) and must stay what the code gives; the
    times came from that machine's profile and are not compared."""
    page = (REPO / "docs" / "cost-estimates.md").read_text()
    block = page.split("<!-- estimate example:")[1].split("```text\n", 1)[1].split("```", 1)[0]
    plan = compile_checked(
        REPO / "recipes" / "resnet50-gradual.toml", CompileOptions(dataset_size=1020, val_size=1020)
    ).plan
    now = estimate.render(estimate.estimate(plan))

    def rows(text: str) -> dict[str, list[str]]:
        return {
            line.split()[0]: line.split()[:20]
            for line in text.splitlines()
            if line.split() and line.split()[0] in ("warmup", "layer4", "layer3")
        }

    assert rows(block) == rows(now)
    assert block.split("run: ")[1].split(",")[0] == now.split("run: ")[1].split(",")[0]  # the run's TFLOP
