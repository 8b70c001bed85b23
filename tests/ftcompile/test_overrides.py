"""`--set KEY=VALUE`: parsed as TOML, applied after `extends`, validated like the file (errors
name the --set and the key), recorded in the plan; and the TOML writer the run's stored
recipe.toml uses reads back equal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftcompile.cli import main
from ftcompile.compiler import CompileOptions, compile_checked, compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.load import load_overridden
from ftcompile.overrides import apply_overrides, parse_override, to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Writer = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]


def compiled(path: Path, *overrides: str):
    return compile_checked(path, CompileOptions(overrides=overrides)).plan


def test_parse_dotted_key_and_toml_value() -> None:
    o = parse_override("phases.layer4.epochs=5")
    assert (o.path, o.value) == (("phases", "layer4", "epochs"), 5)
    o = parse_override('phases.layer4.lr.layer4="head / 30"')
    assert (o.key, o.value) == ("phases.layer4.lr.layer4", "head / 30")
    o = parse_override('phases."a=b".scheduler = { type = "StepLR", step_size = 3 }')
    assert o.path == ("phases", "a=b", "scheduler") and o.value == {"type": "StepLR", "step_size": 3}
    assert parse_override("data.augment=[]").value == []


def test_a_value_replaces_a_table_and_creates_missing_ones() -> None:
    data = {"phases": {"a": {"scheduler": {"type": "OneCycleLR", "pct_start": 0.3}}}}
    out = apply_overrides(
        data,
        [parse_override('phases.a.scheduler={type="StepLR", step_size=2}'), parse_override('phases.b.train=["head"]')],
    )
    assert out["phases"]["a"]["scheduler"] == {"type": "StepLR", "step_size": 2}  # pct_start is gone
    assert out["phases"]["b"] == {"train": ["head"]}
    assert data["phases"]["a"]["scheduler"]["pct_start"] == 0.3  # the input is not changed


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("phases.warmup.epochs", ["expected KEY=VALUE"]),
        ("phases.warmup.lr.head=head / 30", ["phases.warmup.lr.head", "is not TOML", "strings need quotes"]),
        ("phases..x=1", ["is not a TOML key"]),
        ('extends="other.toml"', ["extends cannot be set"]),
    ],
)
def test_malformed_overrides(text: str, words: list[str]) -> None:
    with pytest.raises(RecipeError) as err:
        parse_override(text)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_override_changes_the_plan_and_is_recorded(write: Writer, tiny: str) -> None:
    path = write(tiny)
    base = compile_recipe(path)
    plan = compiled(path, "phases.full.epochs=2", 'phases.full.lr.body="head / 100"')
    assert plan.recipe.overrides == ("phases.full.epochs=2", 'phases.full.lr.body="head / 100"')
    assert "overrides" not in base.to_dict()["recipe"]  # a plan without --set is as before
    assert (plan.phases[1].begin, plan.phases[1].end) == (23, 69)  # 2 epochs of 23 steps
    assert plan.phases[1].lr["body"].first == pytest.approx(0.01 / 100)
    assert plan.hash != base.hash


def test_same_override_as_the_file_gives_the_same_training(write: Writer, tiny: str) -> None:
    path = write(tiny)
    edited = write(tiny.replace("epochs = 1\nlr = { head = 0.01", "epochs = 2\nlr = { head = 0.01"), "edited.toml")
    a, b = compiled(path, "phases.full.epochs=2"), compile_recipe(edited)
    assert a.to_dict()["changes"] == b.to_dict()["changes"] and a.recipe.source_hash == b.recipe.source_hash


def test_override_errors_name_the_set_and_the_key(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    path = write(tiny)
    with pytest.raises(RecipeError) as err:
        compiled(path, "phases.full.epochs=-1")
    assert str(err.value).startswith(f"{path} --set phases.full.epochs=-1: phases.full.epochs: ")
    with pytest.raises(RecipeError) as err:  # found by the resolver, not the schema
        compiled(path, 'phases.full.lr.body="head // 10"')
    assert str(err.value).startswith(f'{path} --set phases.full.lr.body="head // 10": phases.full.lr.body: ')
    with pytest.raises(RecipeError) as err:
        compiled(path, "phases.full.epoch=2")
    assert "phases.full.epoch: unknown key" in str(err.value) and "--set phases.full.epoch=2" in str(err.value)
    # an error elsewhere keeps its file and line
    with pytest.raises(RecipeError) as err:
        compiled(write(tiny.replace('body = ["backbone"]', 'body = ["nothing"]'), "b.toml"), "seed=3")
    assert str(err.value).startswith(f"{tmp_name(path, 'b.toml')}:")


def tmp_name(path: Path, name: str) -> Path:
    return path.with_name(name)


def test_cli_set_on_plan_and_check(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    path = write(tiny)
    capsys.readouterr()
    assert main(["plan", str(path), "--set", "phases.full.epochs=3", "--set", "data.batch_size=128"]) == 0
    out = capsys.readouterr().out
    # ceil(1442 / 128) = 12 steps per epoch; full: 3 epochs after 1
    assert "batch 128  steps/epoch 12" in out and "[12, 48)" in out
    assert main(["check", str(path), "--set", "phases.full.epochs=0"]) == 2
    assert "--set phases.full.epochs=0: phases.full.epochs" in capsys.readouterr().out


def test_overrides_apply_after_extends(write: Writer, tiny: str) -> None:
    write(tiny, "base.toml")
    child = write('extends = "base.toml"\nname = "child"\n[phases.full]\nepochs = 3\n', "child.toml")
    plan = compiled(child, "phases.full.epochs=4", "phases.warmup.epochs=2")
    assert [(p.begin, p.end) for p in plan.phases] == [(0, 46), (46, 138)]


def test_stored_recipe_text_reads_back_and_compiles_the_same(write: Writer, tiny: str) -> None:
    from ftcompile.provenance import stored_recipe_text

    path = write(tiny)
    overrides = ["phases.full.epochs=2", 'phases.full.scheduler={type="StepLR", step_size=5}']
    text = stored_recipe_text(path, overrides)
    assert text.startswith("# recipe.toml with --set phases.full.epochs=2 --set ")
    assert tomllib.loads(text) == load_overridden(path, overrides).data
    copy = write(text, "stored.toml")
    assert compile_recipe(copy).to_dict()["changes"] == compiled(path, *overrides).to_dict()["changes"]
    assert stored_recipe_text(path, []) == tiny  # without --set: the file itself


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_round_trip_through_the_writer(recipe: Path) -> None:
    data = load_overridden(recipe).data
    assert tomllib.loads(to_toml(data)) == data


keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, values, max_size=5))
def test_writer_round_trips_any_toml_data(data: dict) -> None:
    assert tomllib.loads(to_toml(data)) == data


def test_set_on_a_compiled_plan_is_refused(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    assert main(["plan", str(write(tiny)), "-o", str(plan_file)]) == 0
    capsys.readouterr()
    assert main(["run", str(plan_file), "--set", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "--set changes a recipe; a plan.json is already compiled" in err and "Traceback" not in err


def test_writer_quotes_a_key_ending_in_a_newline() -> None:
    # found by hypothesis: a bare-key pattern ending in "$" accepts "W\n"
    assert tomllib.loads(to_toml({"t": {"W\n": 1, "x": {"y": 2}}})) == {"t": {"W\n": 1, "x": {"y": 2}}}


# ---------------------------------------------------------------- a value is exactly one TOML value


def test_a_value_followed_by_more_toml_is_refused(capsys: pytest.CaptureFixture[str], write: Writer, tiny: str) -> None:
    """The issue's case: `1`, then `[run]\\nseed=3`, which tomllib read and ftcompile dropped."""
    path = write(tiny)
    capsys.readouterr()
    assert main(["plan", str(path), "--set", "phases.warmup.lr.head=1\n[run]\nseed=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err  # the message and its hint, each one line
    assert "--set 'phases.warmup.lr.head=1\\n[run]\\nseed=3': phases.warmup.lr.head:" in err
    assert "is one TOML value followed by more TOML (run)" in err


EXTRA_TOML = st.sampled_from(["[run]\nseed = 3", "x = 1", "[[t]]", "a.b = 2", "[phases.a]\nepochs = 2", "'q' = \"r\""])
SEPARATORS = st.sampled_from(["\n", "\r\n", "\n\n", "\n# a comment\n", " # c\n"])


@settings(max_examples=150, deadline=None)
@given(value=values, sep=SEPARATORS, extra=EXTRA_TOML)
def test_no_value_with_more_toml_after_it_is_accepted(value: object, sep: str, extra: str) -> None:
    from ftcompile.overrides import _value

    with pytest.raises(RecipeError) as err:
        parse_override(f"phases.a.lr={_value(value)}{sep}{extra}")
    assert err.value.key == "phases.a.lr"
    assert "\n" not in str(err.value).split("\n  hint:")[0]  # the --set shows its newlines escaped


@settings(max_examples=100, deadline=None)
@given(items=st.lists(scalars, max_size=4), sep=SEPARATORS)
def test_one_value_over_several_lines_is_one_value(items: list, sep: str) -> None:
    """A multi-line array or string is still exactly one value."""
    from ftcompile.overrides import _value

    raw = "[" + ("," + sep).join(_value(v) for v in items) + sep + "]"
    assert parse_override(f"phases.a.x={raw}").value == items
    assert parse_override('phases.a.x="""line 1\n[run]\nseed = 3"""').value == "line 1\n[run]\nseed = 3"


def test_a_key_over_several_lines_is_refused() -> None:
    with pytest.raises(RecipeError, match="is not a TOML key"):
        parse_override("[run]\nseed=3")  # a table header and a key: tomllib reads it as run.seed


def test_a_header_line_holding_a_newline_stays_a_comment() -> None:
    """recipe.toml's header names the --set; a multi-line string value must not become TOML."""
    text = to_toml({"a": 1}, ['r.toml with --set x="""v\n[run]\nseed = 3"""'])
    assert tomllib.loads(text) == {"a": 1}


# ---------------------------------------------------------------- blame the key that was set


def test_builder_args_the_model_cannot_build_with_blame_that_key(write: Writer, tiny: str) -> None:
    """resnet18 builds with groups = 1 only; the error named model.num_classes."""
    path = write(tiny)
    with pytest.raises(RecipeError) as err:
        compiled(path, "model.builder_args={groups=0}")
    assert err.value.key == "model.builder_args.groups"
    assert str(err.value).startswith(f"{path} --set model.builder_args={{groups=0}}: model.builder_args.groups: ")
    assert "cannot build with groups = 0" in str(err.value) and "num_classes" not in str(err.value)
    with pytest.raises(RecipeError) as err:  # of two arguments, the one that stops the build
        compiled(path, "model.builder_args={zero_init_residual=true, groups=2}")
    assert err.value.key == "model.builder_args.groups"
    inline = write(tiny.replace("num_classes = 10", "num_classes = 10\nbuilder_args = { groups = 0 }"), "inline.toml")
    with pytest.raises(RecipeError) as err:  # in the file: the file and the line of builder_args
        compiled(inline)
    assert str(err.value).startswith(f"{inline}:7: model.builder_args.groups: ")


def test_builder_args_giving_a_layer_of_no_width_are_refused(write: Writer, tiny: str) -> None:
    """resnet50 with width_per_group = 0 built (on the meta device) with 0-channel convolutions."""
    path = write(tiny.replace('arch = "resnet18"', 'arch = "resnet50"'))
    with pytest.raises(RecipeError) as err:
        compiled(path, "model.builder_args={width_per_group=0}")
    assert err.value.key == "model.builder_args.width_per_group" and "a layer of width 0" in err.value.message


def test_a_builder_that_raises_another_error_type_is_a_message(write: Writer, tiny: str) -> None:
    """vit's conv_stem_configs = [1] raised AttributeError inside torchvision: a traceback."""
    path = write(tiny.replace('arch = "resnet18"', 'arch = "vit_b_16"'))
    with pytest.raises(RecipeError) as err:
        compiled(path, "model.builder_args={conv_stem_configs=[1]}")
    assert err.value.key == "model.builder_args.conv_stem_configs"
