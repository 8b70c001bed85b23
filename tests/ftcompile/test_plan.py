"""Stage 5, plan: the LR trace from real schedulers, the change list, a hash that depends on
what the recipe means and nothing else, JSON round trips."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.plan import FORMAT, Change, LRWindow, Plan, WeightsSpec, as_json
from ftcompile.trace import lr_trace

Writer = Callable[..., Path]
Folders = Callable[[Path, dict[str, int]], None]
REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- the LR trace

TRACE = """\
name = "trace"

[model]
arch = "resnet18"
num_classes = 10

[data]
builtin = "digits"
batch_size = 64

[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4

[groups]
body = ["backbone"]
head = ["head"]

[phases.a]
train = ["head"]
steps = 5
lr = 0.1
scheduler = { type = "StepLR", step_size = 2, gamma = 0.5 }

[phases.b]
after = ["a"]
train = ["body", "head"]
steps = 4
lr = { head = 0.2, body = "head / 10" }
scheduler = { type = "LinearLR", start_factor = 0.5 }

[phases.c]
after = ["b"]
train = ["head"]
steps = 3
lr = 0.4
scheduler = { type = "CosineAnnealingLR" }

[phases.d]
after = ["c"]
train = ["head"]
steps = 2
lr = 0.3
"""


def linear(lr: float, t: int, total: int, start: float = 0.5) -> float:
    """LinearLR from start_factor to 1 over total_iters (= the phase length)."""
    return lr * (start + (1 - start) * min(t, total) / total)


def cosine(lr: float, t: int, total: int) -> float:
    """CosineAnnealingLR with eta_min = 0 and T_max = the phase length."""
    return lr * (1 + math.cos(math.pi * t / total)) / 2


def test_lr_trace_across_phase_boundaries(write: Writer) -> None:
    plan = compile_recipe(write(TRACE))
    rows = lr_trace(plan)
    assert plan.param_group_names == ["body", "body.no_decay", "head", "head.no_decay"]
    assert [r[0] for r in rows] == list(range(5 + 4 + 3 + 2))
    assert [r[1] for r in rows] == ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2
    body = [r[2][0] for r in rows]
    head = [r[2][2] for r in rows]
    assert all(r[2][0] == r[2][1] and r[2][2] == r[2][3] for r in rows)  # no_decay twins share the LR
    # a: StepLR, lr_t = 0.1 * 0.5 ** (t // 2); body frozen (0)
    assert head[0:5] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert body[0:5] == [0.0] * 5
    # b: a fresh LinearLR from the phase's LR (0.2), not from the 0.025 StepLR left behind
    assert head[5:9] == pytest.approx([linear(0.2, t, 4) for t in range(4)], rel=1e-12)
    assert head[5:9] == pytest.approx([0.1, 0.125, 0.15, 0.175], rel=1e-12)
    assert body[5:9] == pytest.approx([linear(0.2 / 10, t, 4) for t in range(4)], rel=1e-12)
    # c: CosineAnnealingLR from 0.4 (its base LR is this phase's LR: no stale initial_lr)
    assert head[9:12] == pytest.approx([cosine(0.4, t, 3) for t in range(3)], rel=1e-12)
    assert head[9:12] == pytest.approx([0.4, 0.3, 0.1], rel=1e-12)
    assert body[9:12] == [0.0] * 3  # frozen again
    # d: no scheduler, constant
    assert head[12:14] == [0.3, 0.3]


def test_phase_lr_summary(write: Writer) -> None:
    plan = compile_recipe(write(TRACE))
    a, b, c, d = plan.phases
    assert a.lr == {"head": LRWindow(first=0.1, peak=0.1, last=0.025)}
    assert as_json(b.lr["head"]) == pytest.approx({"first": 0.1, "peak": 0.175, "last": 0.175}, rel=1e-12)
    assert c.lr["head"].first == 0.4
    assert d.lr == {"head": LRWindow(first=0.3, peak=0.3, last=0.3)}


def test_scheduler_is_constructed_fresh_at_each_phase(write: Writer) -> None:
    # A StepLR phase after a StepLR phase: the second starts at its own LR and counts its own
    # steps (step_size counts from the phase start, not from step 0 of the run).
    text = TRACE.replace(
        '[phases.b]\nafter = ["a"]\ntrain = ["body", "head"]\nsteps = 4\nlr = { head = 0.2, body = "head / 10" }\n'
        'scheduler = { type = "LinearLR", start_factor = 0.5 }',
        '[phases.b]\nafter = ["a"]\ntrain = ["head"]\nsteps = 3\nlr = 0.2\n'
        'scheduler = { type = "StepLR", step_size = 2, gamma = 0.5 }',
    )
    rows = lr_trace(compile_recipe(write(text)))
    head = [r[2][2] for r in rows]
    assert head[5:8] == [0.2, 0.2, 0.1]  # 0.2 * 0.5 ** (t // 2)


# ---------------------------------------------------------------- the change list


def changes_at(plan: Plan, step: int) -> list[Change]:
    return [c for c in plan.changes if c.step == step]


def test_changes_at_step_zero(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    first = changes_at(plan, 0)
    assert first[0] == Change(0, "phase", "warmup")
    assert Change(0, "freeze", "body") in first
    assert Change(0, "unfreeze", "head") in first
    sets = {(c.target, c.field): c.value for c in first if c.op == "set"}
    assert sets[("body", "lr")] == sets[("body.no_decay", "lr")] == 0.0
    assert sets[("head", "lr")] == sets[("head.no_decay", "lr")] == 0.1
    assert sets[("head", "momentum")] == 0.9
    assert first[-1] == Change(0, "scheduler", "warmup", value=None)  # constant LR


def test_each_phase_start_sets_the_lr_of_trained_groups(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    spe = plan.data.steps_per_epoch
    assert spe == 23  # ceil(1442 / 64)
    full = plan.phases[1]
    assert (full.begin, full.end) == (spe, 2 * spe)
    sets = {(c.target, c.field): c.value for c in changes_at(plan, spe) if c.op == "set"}
    assert sets[("head", "lr")] == sets[("head.no_decay", "lr")] == 0.01
    assert sets[("body", "lr")] == sets[("body.no_decay", "lr")] == 0.01 / 10
    assert Change(spe, "unfreeze", "body") in plan.changes


def test_evaluate_and_checkpoint_come_before_the_next_phase(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    boundary = plan.phases[0].end
    ops = [(c.op, c.target) for c in changes_at(plan, boundary)]
    # where both fall, the checkpoint comes first: a failing evaluation must not cost the steps
    assert ops[:3] == [("checkpoint", "warmup"), ("evaluate", "warmup"), ("phase", "full")]
    assert [(c.op, c.target) for c in changes_at(plan, plan.total_steps)] == [
        ("checkpoint", "full"),
        ("evaluate", "full"),
    ]
    assert [c.step for c in plan.changes] == sorted(c.step for c in plan.changes)


def test_eval_and_checkpoint_every(write: Writer, tiny: str) -> None:
    text = tiny.replace("epochs = 1\nlr = { head = 0.01", "epochs = 3\nlr = { head = 0.01") + (
        '\n[run]\neval_every = "1 epoch"\ncheckpoint_every = "40 steps"\n'
    )
    plan = compile_recipe(write(text))
    full = plan.phases[1]
    assert (full.begin, full.end) == (23, 23 + 3 * 23)
    evals = [c.step for c in plan.changes if c.op == "evaluate" and c.target == "full"]
    ckpts = [c.step for c in plan.changes if c.op == "checkpoint" and c.target == "full"]
    assert evals == [23 + 23, 23 + 2 * 23, 23 + 3 * 23]  # every epoch and at the end
    assert ckpts == [23 + 40, 23 + 3 * 23]  # every 40 steps of the phase and at the end


def test_bn_frozen_emits_bn_changes_for_frozen_groups(write: Writer, tiny: str) -> None:
    text = tiny.replace("lr = { head = 0.1 }", 'lr = { head = 0.1 }\nbn = "frozen"')
    plan = compile_recipe(write(text))
    bn = [c for c in plan.changes if c.op == "bn"]
    # head (fc) has no BatchNorm; body's BatchNorm is frozen while body is, then trains again
    assert bn == [Change(0, "bn", "body", value="frozen"), Change(23, "bn", "body", value="train")]
    assert set(plan.run.bn_modules.values()) == {"body"}
    assert "layer4.1.bn2" in plan.run.bn_modules and "layer4.0.downsample.1" in plan.run.bn_modules


def test_reset_state_and_per_group_overrides(write: Writer, tiny: str) -> None:
    text = tiny.replace(
        'lr = { head = 0.01, body = "head / 10" }',
        'lr = { head = 0.01, body = "head / 10" }\noptimizer_state = "reset"\nweight_decay = { body = 0.0 }\nmomentum = { head = 0.5 }',
    )
    plan = compile_recipe(write(text))
    at = changes_at(plan, 23)
    assert [c.target for c in at if c.op == "reset_state"] == ["body", "body.no_decay", "head", "head.no_decay"]
    sets = {(c.target, c.field): c.value for c in at if c.op == "set"}
    assert sets[("body", "weight_decay")] == 0.0
    assert ("head", "weight_decay") not in sets  # unchanged: not set again
    assert sets[("head", "momentum")] == sets[("head.no_decay", "momentum")] == 0.5
    assert sets[("body", "momentum")] == 0.9


def test_trainable_counts(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    numel = {g.name: g.numel for g in plan.groups}
    assert numel["head"] == 512 * 10 + 10  # fc: 512 -> 10, weight and bias
    assert plan.phases[0].trainable_params == numel["head"]
    assert plan.phases[1].trainable_params == plan.model.total_params == numel["head"] + numel["body"]
    assert plan.phases[0].trainable_pct == round(100 * numel["head"] / plan.model.total_params, 2)


# ---------------------------------------------------------------- the plan as data


def test_format_and_hash(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    data = json.loads(plan.to_json())
    assert data["format"] == FORMAT == 1
    assert len(data["hash"]) == 64 and int(data["hash"], 16) >= 0
    assert {"recipe", "versions", "model", "data", "groups", "param_groups", "phases", "changes", "total_steps"} <= set(
        data
    )
    assert set(data["versions"]) == {"torch", "torchvision", "ftcompile"}
    assert data["recipe"]["file"] == "recipe.toml"


def test_round_trip(write: Writer, tiny: str) -> None:
    plan = compile_recipe(write(tiny))
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again == plan and again.hash == plan.hash
    assert again.to_json() == plan.to_json()
    assert lr_trace(again) == lr_trace(plan)


def test_a_hand_edited_plan_is_rejected(write: Writer, tiny: str) -> None:
    data = json.loads(compile_recipe(write(tiny)).to_json())
    data["phases"][0]["end"] += 1
    with pytest.raises(RecipeError) as info:
        Plan.from_dict(data, "edited.json")
    assert info.value.key == "hash" and info.value.file == "edited.json"
    assert "does not match" in info.value.message


def test_another_format_version_is_rejected(write: Writer, tiny: str, tmp_path: Path) -> None:
    data = json.loads(compile_recipe(write(tiny)).to_json())
    data["format"] = FORMAT + 1
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecipeError) as info:
        Plan.load(path)
    assert info.value.key == "format"
    assert "ftcompile plan" in (info.value.suggestion or "")


def test_not_a_plan(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("[1, 2]")
    with pytest.raises(RecipeError):
        Plan.load(path)
    path.write_text("{not json")
    with pytest.raises(RecipeError):
        Plan.load(path)


HASH_SCRIPT = "import sys; from ftcompile.compiler import compile_recipe; print(compile_recipe(sys.argv[1]).hash)"


def test_hash_is_the_same_in_processes_with_different_hash_seeds(write: Writer, tiny: str, tmp_path: Path) -> None:
    path = write(tiny)
    procs = []
    for seed in ("0", "12345"):
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", HASH_SCRIPT, str(path)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    hashes = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        hashes.append(out.strip())
    assert hashes[0] == hashes[1] == compile_recipe(path).hash


FOLDER = """\
name = "folders"

[model]
arch = "resnet18"
num_classes = "auto"

[data]
train = "data/train"
val = "data/val"
batch_size = 4

[phases.only]
train = ["head"]
steps = 3
lr = 0.1
"""


def test_hash_does_not_depend_on_where_the_recipe_lives(
    tmp_path: Path, image_folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "a"
    (here).mkdir()
    (here / "recipe.toml").write_text(FOLDER)
    image_folders(here / "data" / "train", {"cat": 5, "dog": 3})
    image_folders(here / "data" / "val", {"cat": 2, "dog": 2})
    there = tmp_path / "b" / "deeper"
    shutil.copytree(here, there)
    monkeypatch.chdir(here)
    original = compile_recipe("recipe.toml")
    assert (original.data.train_size, original.data.val_size, original.model.num_classes) == (8, 4, 2)
    monkeypatch.chdir(tmp_path / "b")
    copy = compile_recipe(Path("deeper") / "recipe.toml")
    assert copy.hash == original.hash
    assert copy.to_json() == original.to_json()


def all_strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (*all_strings(k), *all_strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in all_strings(v)]
    return []


def test_no_absolute_path_in_the_plan(tmp_path: Path, image_folders: Folders, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "base.toml").write_text(FOLDER.replace('"data/', '"../shared/data/'))
    (exp / "child.toml").write_text('extends = "base.toml"\nname = "child"\n[model]\nweights = "../w/init.pt"\n')
    image_folders(tmp_path / "shared" / "data" / "train", {"cat": 2, "dog": 2})
    image_folders(tmp_path / "shared" / "data" / "val", {"cat": 1, "dog": 1})
    monkeypatch.chdir(tmp_path)
    plan = compile_recipe(exp / "child.toml")
    text = plan.to_json()
    assert str(tmp_path) not in text and os.sep + "tmp" not in text
    strings = all_strings(json.loads(text))
    assert not [s for s in strings if os.path.isabs(s)]
    assert plan.data.train == os.path.join("..", "shared", "data", "train")
    assert plan.model.weights == WeightsSpec(kind="file", value="../w/init.pt")


def test_hash_follows_meaning_not_formatting(write: Writer, tiny: str) -> None:
    def hash_of(text: str, folder: str) -> str:
        return compile_recipe(write(text, f"{folder}/recipe.toml")).hash  # same file name each time

    base = hash_of(tiny, "base")
    # the same recipe with comments and blank lines
    commented = "# tuned on Tuesday\n\n" + tiny.replace("seed = 0", "seed = 0  # fixed").replace(
        "[data]", "\n[data]  # digits"
    )
    assert hash_of(commented, "commented") == base
    changed = {
        "lr": tiny.replace("lr = { head = 0.1 }", "lr = { head = 0.2 }"),
        "seed": tiny.replace("seed = 0", "seed = 1"),
        "batch": tiny.replace("batch_size = 64", "batch_size = 32"),
        "head32": tiny.replace("num_classes = 10", "num_classes = 10\nhead = { hidden = [32] }"),
        "head64": tiny.replace("num_classes = 10", "num_classes = 10\nhead = { hidden = [64] }"),
    }
    hashes = {what: hash_of(text, what) for what, text in changed.items()}
    assert len({base, *hashes.values()}) == 1 + len(changed)
