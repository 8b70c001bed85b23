"""Stage 2, schema: strict keys with did-you-mean, all errors together with key path and line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcompile.errors import RecipeError, RecipeErrors, loc_to_key
from ftcompile.load import load_recipe
from ftcompile.schema import Recipe, json_schema, parse_duration, validate

Writer = Callable[..., Path]


def line_no(text: str, needle: str) -> int:
    """1-based number of the first line of `text` that contains `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def errors_of(path: Path) -> list[RecipeError]:
    with pytest.raises(RecipeError) as info:
        validate(load_recipe(path))
    err = info.value
    return list(err.errors) if isinstance(err, RecipeErrors) else [err]


def test_the_tiny_recipe_is_valid(write: Writer, tiny: str) -> None:
    recipe = validate(load_recipe(write(tiny)))
    assert isinstance(recipe, Recipe)
    assert list(recipe.phases) == ["warmup", "full"]
    assert recipe.phases["full"].lr == {"head": 0.01, "body": "head / 10"}


def test_unknown_key_is_forbidden_with_did_you_mean(write: Writer, tiny: str) -> None:
    text = tiny.replace("epochs = 1\nlr = { head = 0.1 }", "epoch = 1\nlr = { head = 0.1 }")
    [err] = errors_of(write(text))
    assert err.key == "phases.warmup.epoch"
    assert err.message == "unknown key"
    assert err.suggestion == "did you mean 'epochs'?"
    assert err.line == line_no(text, "epoch = 1")


@pytest.mark.parametrize(
    ("old", "new", "key", "wanted"),
    [
        ("[data]", "[data]\nbatchsize = 3", "data.batchsize", "'batch_size'"),
        ("seed = 0", "seed = 0\nphase = 1", "phase", "'phases'"),
        ("num_classes = 10", "num_classes = 10\nhead = { hiden = [64] }", "model.head.hiden", "'hidden'"),
        ("weight_decay = 1e-4", 'weight_decay = 1e-4\n\n[run]\ndevise = "cpu"', "run.devise", "'device'"),
    ],
    ids=["data", "top-level", "model.head", "run"],
)
def test_did_you_mean_in_every_table(write: Writer, tiny: str, old: str, new: str, key: str, wanted: str) -> None:
    text = tiny.replace(old, new, 1)
    errs = errors_of(write(text))
    [err] = [e for e in errs if e.key == key]
    assert err.message == "unknown key"
    assert wanted in (err.suggestion or "")


def test_all_errors_are_reported_together(write: Writer, tiny: str) -> None:
    text = (
        tiny.replace("lr = { head = 0.1 }", "lr = { head = -0.1 }")
        .replace("num_classes = 10", "num_classes = 1")
        .replace("batch_size = 64", 'batch_size = "big"')
        .replace('after = ["warmup"]', 'after = ["warmup"]\nepoch = 2')
    )
    path = write(text)
    with pytest.raises(RecipeErrors) as info:
        validate(load_recipe(path))
    found = {e.key: e for e in info.value.errors}
    assert set(found) == {"phases.warmup.lr.head", "model.num_classes", "data.batch_size", "phases.full.epoch"}
    assert found["phases.warmup.lr.head"].line == line_no(text, "head = -0.1")
    assert found["model.num_classes"].line == line_no(text, "num_classes = 1")
    assert found["data.batch_size"].line == line_no(text, "batch_size")
    assert found["phases.full.epoch"].line == line_no(text, "epoch = 2")
    # one printable message: one block per error, each starting with file:line: key
    message = str(info.value)
    for key, err in found.items():
        assert f"{path}:{err.line}: {key}: " in message


@pytest.mark.parametrize(
    ("old", "new", "key", "hint"),
    [
        ("lr = { head = 0.1 }", "lr = { head = -0.1 }", "phases.warmup.lr.head", "> 0"),
        ("lr = { head = 0.1 }", "lr = 0", "phases.warmup.lr", "> 0"),
        ("epochs = 1\nlr = { head = 0.1 }", "epochs = 0\nlr = { head = 0.1 }", "phases.warmup.epochs", "> 0"),
        ("epochs = 1\nlr = { head = 0.1 }", "steps = 0\nlr = { head = 0.1 }", "phases.warmup.steps", ">= 1"),
        ("num_classes = 10", "num_classes = 1", "model.num_classes", ">= 2"),
        ("batch_size = 64", 'batch_size = "big"', "data.batch_size", "whole number"),
        ("batch_size = 64", "batch_size = 6.5", "data.batch_size", "whole number"),
        ("epochs = 1\nlr = { head = 0.1 }", "epochs = inf\nlr = { head = 0.1 }", "phases.warmup.epochs", "finite"),
        ('train = ["head"]', 'train = "head"', "phases.warmup.train", "list"),
        ('train = ["head"]', "train = []", "phases.warmup.train", "at least 1"),
        ('name = "tiny"', 'name = "Tiny Recipe"', "name", "slug"),
        ('builtin = "digits"', 'builtin = "mnist"', "data.builtin", "'digits'"),
    ],
    ids=[
        "negative-lr",
        "zero-lr",
        "zero-epochs",
        "zero-steps",
        "one-class",
        "string-int",
        "float-int",
        "inf",
        "train-not-list",
        "train-empty",
        "name-slug",
        "unknown-builtin",
    ],
)
def test_wrong_type_or_range(write: Writer, tiny: str, old: str, new: str, key: str, hint: str) -> None:
    assert old in tiny
    text = tiny.replace(old, new, 1)
    [err] = errors_of(write(text))
    assert err.key == key
    assert hint in (err.suggestion or "")
    assert err.line == line_no(text, new.splitlines()[0])


def test_epochs_and_steps_together(write: Writer, tiny: str) -> None:
    text = tiny.replace("epochs = 1\nlr = { head = 0.1 }", "epochs = 1\nsteps = 10\nlr = { head = 0.1 }")
    [err] = errors_of(write(text))
    assert err.key == "phases.warmup"
    assert "exactly one of epochs" in err.message
    assert err.line == line_no(text, "[phases.warmup]")


def test_neither_epochs_nor_steps(write: Writer, tiny: str) -> None:
    [err] = errors_of(write(tiny.replace("epochs = 1\nlr = { head = 0.1 }", "lr = { head = 0.1 }")))
    assert err.key == "phases.warmup" and "exactly one of epochs" in err.message


def test_data_needs_builtin_or_train(write: Writer, tiny: str) -> None:
    text = tiny.replace('builtin = "digits"\n', "")
    [err] = errors_of(write(text))
    assert err.key == "data"
    assert "builtin" in err.message and "data.train" in err.message
    assert err.line == line_no(text, "[data]")


def test_data_with_builtin_and_train(write: Writer, tiny: str) -> None:
    [err] = errors_of(write(tiny.replace('builtin = "digits"', 'builtin = "digits"\ntrain = "x"')))
    assert err.key == "data" and "not both" in err.message


def test_missing_required_keys(write: Writer, tiny: str) -> None:
    text = tiny.replace('arch = "resnet18"\n', "")
    [err] = errors_of(write(text))
    assert err.key == "model.arch"
    assert err.message == "missing required key"
    assert err.suggestion == "add arch = ..."


def test_group_named_rest_is_reserved(write: Writer, tiny: str) -> None:
    [err] = errors_of(write(tiny.replace('body = ["backbone"]', 'rest = ["backbone"]')))
    assert err.key == "groups" and '"rest"' in err.message


def test_loc_to_key_drops_pydantic_type_tags() -> None:
    loc = ("phases", "warmup", "lr", "dict[str,union[constrained-float,str]]", "head", "constrained-float")
    assert loc_to_key(loc) == "phases.warmup.lr.head"
    assert loc_to_key(("data", "augment", 2, "op")) == "data.augment[2].op"


@pytest.mark.parametrize(
    ("value", "steps"),
    [
        # steps_per_epoch = 46 below
        ("1 epoch", 46),
        ("2 epochs", 2 * 46),
        ("0.5 epoch", 23),  # round(0.5 * 46)
        ("30 steps", 30),
        ("1 step", 1),
        (7, 7),
        ("0.001 epoch", 1),  # never less than one step
    ],
)
def test_parse_duration(value: str | int, steps: int) -> None:
    assert parse_duration(value, 46) == steps


def test_parse_duration_rejects_other_units() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("3 minutes", 46)


def test_json_schema() -> None:
    schema = json_schema()
    assert "phases" in schema["properties"] and "extends" in schema["properties"]
    assert schema["additionalProperties"] is False


# ---------------------------------------------------------------- names that become folders, on every system

RESERVED = ["con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stem=st.sampled_from(RESERVED),
    upper=st.lists(st.booleans(), min_size=4, max_size=4),
    ext=st.sampled_from(["", ".txt", ".d", ".1.x"]),
    where=st.sampled_from(["phase", "recipe"]),
)
def test_windows_device_names_are_refused(
    write: Writer, tiny: str, stem: str, upper: list[bool], ext: str, where: str
) -> None:
    """CON, nul, Aux.txt, com1.d ... name no folder on Windows: not as runs/<name>/ nor trials/<phase>/."""
    name = "".join(c.upper() if u else c for c, u in zip(stem, upper, strict=False)) + stem[len(upper) :] + ext
    if where == "recipe":
        if name != name.lower():
            return  # not a slug: refused as before
        text = tiny.replace('name = "tiny"', f'name = "{name}"')
        key, line = "name", 1
    else:
        text = tiny.replace("[phases.full]", f'[phases."{name}"]')
        key, line = f"phases.{name}", line_no(text, f'[phases."{name}"]')
    errors = errors_of(write(text))
    assert [(e.key, e.line) for e in errors] == [(key, line)]
    assert f"Windows reserves for a device ({name.split('.')[0].upper()}" in errors[0].message
    assert "com0-com9, lpt0-lpt9" in (errors[0].suggestion or "")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("a:b", "holds :, which Windows does not allow"),
        ("what?", "holds ?, which Windows does not allow"),
        ("a<b>", "holds < >, which Windows does not allow"),
        ("end.", "ends with '.' or a space"),
        ("line\nbreak", "holds a control character"),
        ("tab\there", "holds a control character"),
    ],
)
def test_phase_names_windows_cannot_hold_are_refused(write: Writer, tiny: str, name: str, words: str) -> None:
    quoted = json.dumps(name)
    text = tiny.replace("[phases.full]", f"[phases.{quoted}]")
    errors = errors_of(write(text))
    assert [e.key for e in errors] == [f"phases.{name}"] and words in errors[0].message


@pytest.mark.parametrize("name", ["console", "con-1", "com10", "lpt", "nul_", "auxiliary", "a.con"])
def test_names_that_only_look_like_devices_are_kept(write: Writer, tiny: str, name: str) -> None:
    text = tiny.replace('name = "tiny"', f'name = "{name}"').replace("[phases.full]", f'[phases."{name}"]')
    assert validate(load_recipe(write(text))).name == name


def test_a_plan_naming_a_windows_device_is_refused_on_load() -> None:
    from ftcompile.plan import check_fields

    with pytest.raises(RecipeError) as err:
        check_fields({"recipe": {"name": "nul"}, "seed": 0, "phases": []}, "plan.json")
    assert err.value.key == "recipe.name" and "Windows reserves for a device (NUL" in err.value.message
    with pytest.raises(RecipeError) as err:
        check_fields({"recipe": {"name": "ok"}, "seed": 0, "phases": [{"name": "LPT1.x"}]}, "plan.json")
    assert err.value.key == "phases[0].name" and "(LPT1" in err.value.message
