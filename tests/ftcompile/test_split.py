"""`data.val = { split = 0.15, seed = 0 }`: a stratified split of one folder, made at compile
time, listed in the plan and covered by its hash."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.datasets import resolve_splits
from ftcompile.errors import RecipeError
from ftcompile.split import stratified, val_count

RECIPE = """\
name = "split"

[model]
arch = "resnet18"

[data]
train = "images"
val = {{ split = {split}, seed = {seed} }}
image_size = 16
batch_size = 4

[phases.only]
train = ["head"]
steps = 2
lr = {{ head = 0.01 }}
"""

COUNTS = {"ant": 20, "bee": 10, "cat": 7}


def make_image_folders(root: Path, counts: dict[str, int]) -> None:
    """root/<class>/<i>.png, empty files: listing and splitting never decode an image."""
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(b"")


def _recipe(folder: Path, split: float = 0.2, seed: int = 0, counts: dict[str, int] | None = None) -> Path:
    make_image_folders(folder / "images", counts or COUNTS)
    path = folder / "r.toml"
    path.write_text(RECIPE.format(split=split, seed=seed))
    return path


def test_val_count_is_the_nearest_whole_number_with_one_on_each_side() -> None:
    # round(n * split), at least 1 val and at least 1 train
    assert [val_count(n, 0.2) for n in (2, 3, 7, 10, 20, 22)] == [1, 1, 1, 2, 4, 4]
    assert val_count(2, 0.9) == 1 and val_count(100, 0.15) == 15 and val_count(10, 0.25) == 3  # 2.5 -> 3


def test_split_is_stratified(tmp_path: Path) -> None:
    plan = compile_recipe(_recipe(tmp_path))
    files = plan.data.split_files
    assert files is not None
    val = Counter(p.split("/")[0] for p in files["val"])
    train = Counter(p.split("/")[0] for p in files["train"])
    # 20 * 0.2 = 4, 10 * 0.2 = 2, 7 * 0.2 = 1.4 -> 1: every class in the same share
    assert val == {"ant": 4, "bee": 2, "cat": 1}
    assert train == {"ant": 16, "bee": 8, "cat": 6}
    assert (plan.data.train_size, plan.data.val_size) == (30, 7)
    assert plan.data.class_counts == [16, 8, 6]  # train images per class, after the split
    assert not set(files["train"]) & set(files["val"])


def test_split_is_deterministic_and_depends_on_the_seed_only(tmp_path: Path) -> None:
    a = compile_recipe(_recipe(tmp_path / "a"))
    b = compile_recipe(_recipe(tmp_path / "b"))  # another folder, the same names
    assert a.data.split_files == b.data.split_files and a.hash == b.hash
    other = compile_recipe(_recipe(tmp_path / "c", seed=1))
    assert other.data.split_files != a.data.split_files and other.hash != a.hash
    assert Counter(p.split("/")[0] for p in other.data.split_files["val"]) == {"ant": 4, "bee": 2, "cat": 1}


def test_the_lists_are_in_the_hash_and_an_added_image_changes_the_plan(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    before = compile_recipe(recipe)
    assert (
        "ant/0.png" in before.to_dict()["data"]["split_files"]["train"] + before.to_dict()["data"]["split_files"]["val"]
    )
    (tmp_path / "images" / "bee" / "late.png").write_bytes(b"")
    after = compile_recipe(recipe)
    assert after.hash != before.hash
    assert "bee/late.png" in after.data.split_files["train"] + after.data.split_files["val"]
    # one image more moves at most that image and one other across: the rest keep their side
    moved = set(before.data.split_files["val"]) ^ set(after.data.split_files["val"])
    assert moved <= {"bee/late.png"} | set(before.data.split_files["val"]) | set(after.data.split_files["val"])
    assert len(moved - {"bee/late.png"}) <= 1


def test_adding_an_image_keeps_the_others_side() -> None:
    samples = [(f"a/{i}.png", 0) for i in range(40)] + [(f"b/{i}.png", 1) for i in range(40)]
    _, val = stratified(samples, ["a", "b"], 0.15, 0)
    _, val2 = stratified(samples + [("b/new.png", 1)], ["a", "b"], 0.15, 0)
    assert {p for p, _ in val if p.startswith("a/")} == {p for p, _ in val2 if p.startswith("a/")}
    assert len(set(val) ^ set(val2)) <= 2


def test_recorded_lists_are_what_resolve_splits_gives(tmp_path: Path) -> None:
    """The runtime asks `resolve_splits(plan.data.sources())`: exactly the plan's lists, even
    after the folder changed."""
    recipe = _recipe(tmp_path)
    plan = compile_recipe(recipe)
    (tmp_path / "images" / "ant" / "new.png").write_bytes(b"")  # not in the plan
    splits = resolve_splits(plan.data.sources(), tmp_path)
    assert [p for p, _ in splits.train] == plan.data.split_files["train"]
    assert [p for p, _ in splits.val] == plan.data.split_files["val"]
    assert all(label == ["ant", "bee", "cat"].index(p.split("/")[0]) for p, label in splits.train + splits.val)
    assert splits.train_dir == splits.val_dir == (tmp_path / "images").resolve()


def test_a_missing_listed_file_is_named(tmp_path: Path) -> None:
    plan = compile_recipe(_recipe(tmp_path))
    gone = plan.data.split_files["val"][0]
    (tmp_path / "images" / gone).unlink()
    with pytest.raises(RecipeError, match="1 of the plan's 37 split files are not in ") as err:
        resolve_splits(plan.data.sources(), tmp_path)
    assert str(tmp_path / "images" / gone) in err.value.message


def test_a_class_of_one_image_cannot_be_split(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="class 'cat' has 1 image: a split needs at least 2"):
        compile_recipe(_recipe(tmp_path, counts={"ant": 5, "cat": 1}))


@pytest.mark.parametrize(
    "value, message",
    [
        ("{ split = 1.0 }", "less than 1"),
        ("{ split = 0 }", "greater than 0"),
        ("{ split = 0.1, seed = -1 }", "greater than or equal to 0"),
        ("{ split = 0.1, sed = 1 }", "unknown key"),
    ],
)
def test_bad_split_tables(tmp_path: Path, value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("{ split = 0.2, seed = 0 }", value))
    assert main(["check", str(recipe)]) == 2
    out = capsys.readouterr().out
    assert "data.val" in out and message in out


def test_check_without_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        RECIPE.format(split=0.2, seed=0).replace('arch = "resnet18"', 'arch = "resnet18"\nnum_classes = 3')
    )
    assert main(["check", str(recipe)]) == 0
    assert "data not found here" in capsys.readouterr().out
    assert main(["check", "--require-data", str(recipe)]) == 2


def test_plan_shows_the_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(_recipe(tmp_path))]) == 0
    assert "images | split 0.2 (seed 0)  train 30  val 7" in capsys.readouterr().out


def test_plans_without_a_split_have_no_split_files(tmp_path: Path, tiny: str) -> None:
    (tmp_path / "t.toml").write_text(tiny)
    assert "split_files" not in compile_recipe(tmp_path / "t.toml").to_dict()["data"]


def test_diff_names_the_added_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path)
    assert main(["plan", str(recipe), "-o", str(tmp_path / "before.json")]) == 0
    (tmp_path / "images" / "bee" / "late.png").write_bytes(b"")
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "before.json"), str(recipe)]) == 1
    out = capsys.readouterr().out
    side = "train" if "bee/late.png" in compile_recipe(recipe).data.split_files["train"] else "val"
    assert f'data.split_files.{side} removed -> added: [] -> ["bee/late.png"]' in out
