"""Stage 1, load: TOML -> merged dict. `extends`, path rebasing, cycles, syntax errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError
from ftcompile.load import deep_merge, load_recipe

Writer = Callable[..., Path]
Folders = Callable[[Path, dict[str, int]], None]

BASE = """\
name = "base"
seed = 1

[model]
arch = "resnet18"
num_classes = 10

[data]
builtin = "digits"
batch_size = 64
augment = [{ op = "RandomHorizontalFlip" }, { op = "RandomVerticalFlip" }]

[phases.warmup]
train = ["head"]
epochs = 1
lr = { head = 0.1 }
"""

CHILD = """\
extends = "../base/base.toml"
name = "child"

[data]
batch_size = 16
augment = [{ op = "RandomRotation", degrees = 5 }]

[phases.warmup]
lr = { head = 0.05 }
"""


def test_deep_merge_merges_tables_and_replaces_everything_else() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"d": {"e": 1, "f": 2}}}
    child = {"a": {"y": [3]}, "b": {"now": "a table"}, "c": {"d": {"f": 3}}}
    merged = deep_merge(base, child)
    assert merged == {"a": {"x": 1, "y": [3]}, "b": {"now": "a table"}, "c": {"d": {"e": 1, "f": 3}}}
    assert base["a"]["y"] == [1, 2]  # inputs untouched


def test_extends_deep_merges(tmp_path: Path, write: Writer) -> None:
    write(BASE, "base/base.toml")
    child = write(CHILD, "exp/child.toml")
    data = load_recipe(child).data
    assert "extends" not in data
    assert data["name"] == "child"
    assert data["seed"] == 1  # inherited
    assert data["model"] == {"arch": "resnet18", "num_classes": 10}
    # [data] merges key by key; the augment array is replaced, not appended to
    assert data["data"]["builtin"] == "digits"
    assert data["data"]["batch_size"] == 16
    assert data["data"]["augment"] == [{"op": "RandomRotation", "degrees": 5}]
    # [phases.warmup] merges: train and epochs from the base, lr from the child
    assert data["phases"]["warmup"] == {"train": ["head"], "epochs": 1, "lr": {"head": 0.05}}


def test_extends_is_relative_to_the_recipe_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Writer
) -> None:
    write(BASE, "base/base.toml")
    child = write(CHILD, "exp/child.toml")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert load_recipe(child).data["seed"] == 1
    monkeypatch.chdir(tmp_path)
    assert load_recipe(Path("exp/child.toml")).data["seed"] == 1
    assert compile_recipe("exp/child.toml").recipe.name == "child"


def test_base_data_paths_are_rebased_onto_the_child(
    tmp_path: Path, image_folders: Folders, monkeypatch: pytest.MonkeyPatch, write: Writer
) -> None:
    base_text = BASE.replace('builtin = "digits"', 'train = "data/train"\nval = "data/val"')
    base_text = base_text.replace("num_classes = 10", 'num_classes = 2\nweights = "weights/init.pt"')
    write(base_text, "base/base.toml")
    child = write(CHILD, "exp/child.toml")
    loaded = load_recipe(child).data
    # relative to exp/: ../base/<path as written in base.toml>
    assert loaded["data"]["train"] == os.path.join("..", "base", "data", "train")
    assert loaded["data"]["val"] == os.path.join("..", "base", "data", "val")
    assert loaded["model"]["weights"] == os.path.join("..", "base", "weights", "init.pt")
    # and the data is found there, whatever the working folder
    image_folders(tmp_path / "base" / "data" / "train", {"a": 3, "b": 2})
    image_folders(tmp_path / "base" / "data" / "val", {"a": 1, "b": 1})
    monkeypatch.chdir(tmp_path / "exp")
    plan = compile_recipe(child)
    assert (plan.data.train_size, plan.data.val_size) == (3 + 2, 1 + 1)


def test_weights_names_are_not_rebased(tmp_path: Path, write: Writer) -> None:
    write(BASE.replace("num_classes = 10", 'num_classes = 10\nweights = "IMAGENET1K_V1"'), "base/base.toml")
    child = write(CHILD, "exp/child.toml")
    assert load_recipe(child).data["model"]["weights"] == "IMAGENET1K_V1"


def test_extends_cycle_names_the_chain(tmp_path: Path, write: Writer) -> None:
    write('extends = "b.toml"\nname = "a"\n', "a.toml")
    write('extends = "c.toml"\nname = "b"\n', "b.toml")
    write('extends = "a.toml"\nname = "c"\n', "c.toml")
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "a.toml")
    assert "a.toml -> b.toml -> c.toml -> a.toml" in str(info.value)
    assert info.value.key == "extends"


def test_extends_to_a_missing_file(tmp_path: Path, write: Writer) -> None:
    path = write('name = "x"\nextends = "nope.toml"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.key == "extends" and info.value.line == 2
    assert "nope.toml" in str(info.value)


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path, write: Writer) -> None:
    path = write('name = "x"\n\n[model]\narch = resnet18\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    # line 4 is `arch = resnet18`; the bare word starts at column 8
    assert info.value.line == 4
    assert "line 4, column 8" in str(info.value)
    assert str(info.value).startswith(f"{path}:4: TOML syntax error")


def test_key_lines_point_at_keys_and_tables(tmp_path: Path, tiny: str, write: Writer) -> None:
    path = write(tiny)
    loaded = load_recipe(path)
    lines = tiny.splitlines()

    def line_no(text: str) -> int:
        return next(i for i, line in enumerate(lines, start=1) if line.startswith(text))

    assert loaded.line_of("data.batch_size") == line_no("batch_size")
    assert loaded.line_of("phases.full") == line_no("[phases.full]")
    # a key inside an inline table gets the line of the inline table
    assert loaded.line_of("phases.warmup.lr.head") == line_no("lr = { head = 0.1 }")
    assert loaded.line_of("phases.full.after[0]") == line_no("after =")


def test_source_hash_ignores_comments_and_key_order(tmp_path: Path, tiny: str, write: Writer) -> None:
    a = load_recipe(write(tiny, "a.toml"))
    commented = "# a comment\n" + tiny.replace("seed = 0", "seed = 0   # the seed")
    reordered = tiny.replace('name = "tiny"\nseed = 0\n', 'seed = 0\nname = "tiny"\n')
    assert load_recipe(write(commented, "b.toml")).source_hash() == a.source_hash()
    assert load_recipe(write(reordered, "c.toml")).source_hash() == a.source_hash()
    changed = load_recipe(write(tiny.replace("seed = 0", "seed = 1"), "d.toml"))
    assert changed.source_hash() != a.source_hash()


# ---------------------------------------------------------------- a byte-order mark, extends naming a folder


BOM = "\ufeff"


def test_a_recipe_beginning_with_a_bom_compiles_as_without(tmp_path: Path, tiny: str, write: Writer) -> None:
    """Windows editors write a UTF-8 BOM; tomllib calls it "Invalid statement" at 1:1."""
    plain = compile_recipe(write(tiny, "plain/r.toml"))
    bommed = tmp_path / "bom" / "r.toml"  # the same file name: the plan records it
    bommed.parent.mkdir()
    bommed.write_bytes((BOM + tiny).encode("utf-8"))
    assert bommed.read_bytes().startswith(b"\xef\xbb\xbf")
    assert compile_recipe(bommed).hash == plain.hash
    assert load_recipe(bommed).line_of("data.batch_size") == load_recipe(tmp_path / "plain/r.toml").line_of(
        "data.batch_size"
    )


def test_a_base_recipe_beginning_with_a_bom_is_extended(tmp_path: Path, tiny: str, write: Writer) -> None:
    from ftcompile.provenance import recipe_files

    (tmp_path / "base.toml").write_bytes((BOM + tiny).encode("utf-8"))
    child = tmp_path / "child.toml"
    child.write_bytes((BOM + 'extends = "base.toml"\nseed = 5\n').encode("utf-8"))
    loaded = load_recipe(child)
    assert loaded.data["seed"] == 5 and loaded.data["name"] == "tiny"
    # env.json's provenance follows the same chain (it read the child as not TOML and stopped)
    assert recipe_files(child) == [child.resolve(), (tmp_path / "base.toml").resolve()]


def test_extends_naming_a_folder_says_it_is_a_folder(tmp_path: Path, write: Writer) -> None:
    (tmp_path / "bases").mkdir()
    path = write('name = "x"\nextends = "bases"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.key == "extends" and info.value.line == 2
    assert "is a folder, not a recipe file" in info.value.message and "not found" not in info.value.message
    assert 'extends = "base.toml"' in (info.value.suggestion or "")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_extends_naming_a_fifo_says_it_is_not_a_file(tmp_path: Path, write: Writer) -> None:
    os.mkfifo(tmp_path / "pipe.toml")
    with pytest.raises(RecipeError, match="is not a regular file"):
        load_recipe(write('name = "x"\nextends = "pipe.toml"\n'))


def test_a_recipe_path_naming_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path)
    assert info.value.message == "is a folder, not a recipe file" and info.value.file == str(tmp_path)
