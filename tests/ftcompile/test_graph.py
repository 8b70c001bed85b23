"""Stage 3, graph: phase order from `after` edges, declaration order breaking ties."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.graph import PhaseGraph, phase_order

Writer = Callable[..., Path]


def test_no_edges_keeps_declaration_order() -> None:
    assert phase_order({"c": [], "a": [], "b": []}) == ["c", "a", "b"]


def test_edges_win_then_declaration_order() -> None:
    # c must wait for a; once a is done, c (declared first) comes before b
    assert phase_order({"c": ["a"], "a": [], "b": []}) == ["a", "c", "b"]
    # a chain declared backwards runs forwards
    assert phase_order({"three": ["two"], "two": ["one"], "one": []}) == ["one", "two", "three"]


def test_diamond() -> None:
    after = {"warm": [], "left": ["warm"], "right": ["warm"], "join": ["left", "right"], "side": []}
    # warm and side have no dependencies: warm is declared first; then left, right (declaration
    # order), join after both; side, declared last, is free from the start but comes after
    # every phase declared before it that is ready
    assert phase_order(after) == ["warm", "left", "right", "join", "side"]


def test_phase_graph_runs_after() -> None:
    graph = PhaseGraph()
    for name in ("finetune", "warmup"):
        graph.add_phase(name)
    graph.runs_after("finetune", "warmup")
    assert graph.order() == ["warmup", "finetune"]


@pytest.mark.parametrize(
    ("after", "cycle"),
    [
        ({"a": ["b"], "b": ["a"]}, "a -> b -> a"),
        ({"a": ["c"], "b": ["a"], "c": ["b"]}, "a -> b -> c -> a"),
        ({"x": [], "a": ["a"]}, "a -> a"),
    ],
)
def test_cycle_is_reported_as_a_path(after: dict[str, list[str]], cycle: str) -> None:
    with pytest.raises(RecipeError) as info:
        phase_order(after)
    assert info.value.message.endswith("form a cycle: " + cycle)
    first = cycle.split(" -> ")[0]
    assert info.value.key == f"phases.{first}.after"
    assert info.value.suggestion


def test_unknown_after_suggests_the_nearest_phase() -> None:
    with pytest.raises(RecipeError) as info:
        phase_order({"warmup": [], "full": ["warmpu"]})
    assert info.value.key == "phases.full.after[0]"
    assert "unknown phase 'warmpu'" in info.value.message
    assert info.value.suggestion == "did you mean 'warmup'?"


def test_unknown_after_without_a_near_name_lists_the_phases() -> None:
    with pytest.raises(RecipeError) as info:
        phase_order({"warmup": [], "full": ["zzz"]})
    assert info.value.suggestion == "phases are: warmup, full"


BASE = """\
name = "base"

[model]
arch = "resnet18"
num_classes = 10

[data]
builtin = "digits"
batch_size = 64

[groups]
late = ["layer4"]
head = ["head"]

[phases.warmup]
train = ["head"]
steps = 3
lr = 0.1

[phases.full]
after = ["warmup"]
train = ["rest", "late", "head"]
steps = 3
lr = 0.01
"""

# Adds a phase between the two and re-points full's after edge at it (arrays are replaced).
CHILD = """\
extends = "base.toml"
name = "child"

[phases.late]
after = ["warmup"]
train = ["late", "head"]
steps = 2
lr = 0.03

[phases.full]
after = ["late"]
"""


def test_child_recipe_adds_a_phase_and_repoints_after(write: Writer) -> None:
    base = compile_recipe(write(BASE, "base.toml"))
    assert [p.name for p in base.phases] == ["warmup", "full"]
    child = compile_recipe(write(CHILD, "child.toml"))
    # declared order in the merged recipe is warmup, full, late; the edges put late first
    assert [(p.name, p.begin, p.end) for p in child.phases] == [("warmup", 0, 3), ("late", 3, 5), ("full", 5, 8)]
    assert child.phases[2].after == ("late",)


def test_cycle_in_a_recipe_names_the_file_and_line(write: Writer, tiny: str) -> None:
    text = tiny.replace("[phases.warmup]\n", '[phases.warmup]\nafter = ["full"]\n')
    path = write(text)
    with pytest.raises(RecipeError) as info:
        compile_recipe(path)
    err = info.value
    assert "warmup -> full -> warmup" in err.message
    assert err.file == str(path)
    assert err.line == text.splitlines().index('after = ["full"]') + 1
