"""Counting data at compile time: ImageFolder listings, the digits split, data errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ftcompile.datasets import (
    count_data,
    digits_split,
    list_image_folder,
    validate_augment,
)
from ftcompile.errors import RecipeError


def make_folder(root: Path, counts: dict[str, int], size: int = 8) -> Path:
    """An ImageFolder with `counts[c]` tiny PNGs per class (contents are irrelevant here)."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (size, size), (i * 10 % 256, 0, 0)).save(root / name / f"{i}.png")
    return root


def folder_data(**over) -> dict:
    data = {"train": "data/train", "val": "data/val", "builtin": None, "classes": []}
    data.update(over)
    return data


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    make_folder(tmp_path / "data/train", {"cat": 3, "dog": 5, "eel": 2})
    make_folder(tmp_path / "data/val", {"cat": 1, "dog": 2, "eel": 1})
    return tmp_path


def test_count_image_folder(recipe_dir: Path) -> None:
    counts = count_data(folder_data(), recipe_dir)
    assert counts.train_size == 3 + 5 + 2
    assert counts.val_size == 1 + 2 + 1
    assert counts.class_names == ("cat", "dog", "eel")
    assert counts.class_counts == (3, 5, 2)


def test_count_image_folder_subset(recipe_dir: Path) -> None:
    # Class indices follow the sorted subset: "dog" -> 0, "eel" -> 1.
    counts = count_data(folder_data(classes=["eel", "dog"]), recipe_dir)
    assert counts.class_names == ("dog", "eel")
    assert counts.class_counts == (5, 2)
    assert (counts.train_size, counts.val_size) == (7, 3)


def test_listing_is_recursive_case_insensitive_and_sorted(tmp_path: Path) -> None:
    make_folder(tmp_path, {"b": 1, "a": 1})
    (tmp_path / "a/sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a/sub/x.PNG", format="PNG")
    (tmp_path / "a/notes.txt").write_text("not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden folders are never classes
    samples, names = list_image_folder(tmp_path, [])
    assert names == ["a", "b"]
    assert samples == [("a/0.png", 0), ("a/sub/x.PNG", 0), ("b/0.png", 1)]


def test_digits_counts() -> None:
    # load_digits() class sizes: 178 182 177 183 181 182 181 179 174 180 (sum 1797).
    # Positions p % 5 == 4 go to val: floor(c / 5) per class
    #   = 35 36 35 36 36 36 36 35 34 36 (sum 355); train = 1797 - 355 = 1442.
    counts = count_data({"builtin": "digits", "classes": []}, Path("."))
    assert counts.train_size + counts.val_size == 1797
    assert counts.val_size == 355
    assert counts.class_counts == (143, 146, 142, 147, 145, 146, 145, 144, 140, 144)
    assert counts.class_names == tuple("0123456789")


def test_digits_split_rule_and_subset() -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    train, val, names = digits_split(["9", "5", "7"])
    assert names == ["5", "7", "9"]
    # 5: 182 -> 36 val, 7: 179 -> 35 val, 9: 180 -> 36 val.
    assert len(val) == 36 + 35 + 36
    assert len(train) == 182 + 179 + 180 - len(val)
    fives = [i for i in range(len(target)) if target[i] == 5]
    assert [i for i in val if target[i] == 5] == fives[4::5]
    assert not set(train) & set(val)


def test_digits_10shot_keeps_the_validation_images_and_ten_training_images_per_class() -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    counts = count_data({"builtin": "digits-10shot", "classes": ["5", "6", "7", "8", "9"]}, Path("."))
    # val as "digits": 5..9 hold 182 181 179 174 180 images -> 36 36 35 34 36 val (177)
    assert (counts.train_size, counts.val_size, counts.class_counts) == (5 * 10, 36 + 36 + 35 + 34 + 36, (10,) * 5)
    train, val, _ = digits_split(["5", "7"], shots=10)
    assert val == digits_split(["5", "7"])[1]
    fives = [i for i in range(len(target)) if target[i] == 5]
    # the first 10 positions of the class that are not val (4 and 9 are): 0-3, 5-8, 10, 11
    assert [i for i in train if target[i] == 5] == [fives[p] for p in (0, 1, 2, 3, 5, 6, 7, 8, 10, 11)]


def test_compile_stage_imports_no_torch() -> None:
    code = "import sys, ftcompile.datasets; print('torch' in sys.modules or 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def expect_error(key: str, func, *args) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        func(*args)
    assert info.value.key == key, str(info.value)
    assert info.value.suggestion
    return info.value


def test_missing_folder(recipe_dir: Path) -> None:
    err = expect_error("data.train", count_data, folder_data(train="data/trian"), recipe_dir)
    assert str((recipe_dir / "data/trian").resolve()) in err.message
    expect_error("data.val", count_data, folder_data(val="nope"), recipe_dir)


def test_val_required_for_folder(recipe_dir: Path) -> None:
    expect_error("data.val", count_data, folder_data(val=None), recipe_dir)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "data/train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data/train/loose.png")
    make_folder(tmp_path / "data/val", {"cat": 1})
    err = expect_error("data.train", count_data, folder_data(), tmp_path)
    assert "holds images directly" in err.message


def test_empty_class(recipe_dir: Path) -> None:
    (recipe_dir / "data/train/fox").mkdir()
    (recipe_dir / "data/val/fox").mkdir()
    err = expect_error("data.train", count_data, folder_data(), recipe_dir)
    assert "'fox'" in err.message
    # Leaving the empty class out is the suggested fix, and works.
    assert count_data(folder_data(classes=["cat"]), recipe_dir).train_size == 3


def test_class_mismatch(recipe_dir: Path) -> None:
    make_folder(recipe_dir / "data/val", {"fox": 1})
    err = expect_error("data.val", count_data, folder_data(), recipe_dir)
    assert "only in val: ['fox']" in err.message


def test_unknown_class_in_subset(recipe_dir: Path) -> None:
    err = expect_error("data.classes", count_data, folder_data(classes=["dgo"]), recipe_dir)
    assert "'dog'" in err.suggestion
    expect_error("data.classes", count_data, {"builtin": "digits", "classes": ["10"]}, Path("."))


def test_unknown_augment_op() -> None:
    err = expect_error(
        "data.augment[1].op", validate_augment, [{"op": "RandomHorizontalFlip"}, {"op": "RandomResizeCrop"}]
    )
    assert "RandomResizedCrop" in err.suggestion


def test_bad_augment_kwarg() -> None:
    err = expect_error("data.augment[0].sise", validate_augment, [{"op": "RandomResizedCrop", "sise": 32}])
    assert "size, scale, ratio" in err.suggestion
    expect_error("data.augment[0]", validate_augment, [{"op": "RandomResizedCrop"}])


def test_good_augment_passes() -> None:
    validate_augment(
        [
            {"op": "RandomResizedCrop", "size": 32, "scale": [0.5, 1.0]},
            {"op": "RandomHorizontalFlip"},
            {"op": "TrivialAugmentWide"},
        ]
    )


# ---------------------------------------------------------------- class names are one printable line

LINE_BREAKERS = ["\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]


@settings(max_examples=60, deadline=None)
@given(
    before=st.text(st.characters(categories=("L", "N")), max_size=5),
    bad=st.sampled_from(LINE_BREAKERS),
    after=st.text(st.characters(categories=("L", "N")), max_size=5),
)
def test_a_class_folder_whose_name_holds_a_control_character_is_refused(before: str, bad: str, after: str) -> None:
    """eval's table and predict's lines print class names one per line: a newline broke them."""
    name = before + bad + after
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root / "data/train", {"ok": 1, name: 1})
        make_folder(root / "data/val", {"ok": 1, name: 1})
        with pytest.raises(RecipeError) as err:
            count_data(folder_data(), root)
    assert err.value.key == "data.train"
    assert repr(str(root / "data/train" / name)) in err.value.message  # the path, its newline escaped
    assert f"a control character ({bad!r})" in err.value.message


def test_check_refuses_a_class_folder_with_a_newline(
    tmp_path: Path, tiny: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ftcompile.cli import main

    make_folder(tmp_path / "data/train", {"a": 1, "b\nc": 1})
    make_folder(tmp_path / "data/val", {"a": 1, "b\nc": 1})
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        tiny.replace('builtin = "digits"', 'train = "data/train"\nval = "data/val"').replace(
            "num_classes = 10", "num_classes = 2"
        )
    )
    path = str(tmp_path / "data" / "train" / "b\nc")
    for command in ("check", "plan"):
        capsys.readouterr()
        assert main([command, str(recipe)]) == 2
        out = capsys.readouterr()
        assert f"data.train: the class folder {path!r} has a control character ('\\n')" in out.out + out.err


@pytest.mark.skipif(sys.platform != "linux", reason="a file name of bytes that are not UTF-8")
def test_a_class_folder_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "data/train", {"a": 1})
    make_folder(tmp_path / "data/val", {"a": 1})
    for split in ("train", "val"):
        os.mkdir(os.fsencode(tmp_path / "data" / split) + b"/b\xff")
        Image.new("RGB", (8, 8)).save(os.fsencode(tmp_path / "data" / split) + b"/b\xff/0.png")
    with pytest.raises(RecipeError, match="bytes that are not UTF-8"):
        count_data(folder_data(), tmp_path)


def test_names_with_spaces_and_any_script_are_classes(tmp_path: Path) -> None:
    names = {"a b": 1, "café": 1, "猫": 1, "x-y_z.1": 1}
    make_folder(tmp_path / "data/train", names)
    make_folder(tmp_path / "data/val", names)
    assert count_data(folder_data(), tmp_path).class_names == tuple(sorted(names))
