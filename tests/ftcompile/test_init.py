"""`ftcompile init FOLDER`: a commented recipe from generated image folders, that passes `check`
and `plan` (and runs: tests/runtime/test_init_run.py); exit 2 for folders it cannot use."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest
from PIL import Image

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import ftcompile
from ftcompile import init
from ftcompile.cli import main
from ftcompile.compiler import compile_recipe


def images(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
    """root/<class>/<i>.png, real (decodable) images."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, (17 * i % 256, 60 * c % 256, 0)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def on_a_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default model depends on the device; the tests' machine is a CPU. No cached weights."""
    monkeypatch.setattr(init, "detect_device", lambda: "cpu")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def _init(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    rc = main(["init", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_one_folder_is_split_and_the_recipe_checks_and_plans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = images(tmp_path / "flowers", {"daisy": 40, "rose": 44, "tulip": 38})
    out = tmp_path / "recipe.toml"
    rc, stdout, err = _init(capsys, data, "-o", out)
    assert rc == 0, err
    assert stdout.startswith(f"wrote {out}: resnet18 (IMAGENET1K_V1 weights), 3 classes, 103 train / 19 val images")
    assert "weights: resnet18 IMAGENET1K_V1 not in torch's hub cache" in stdout  # said now, not first at `run`
    text = out.read_text()
    recipe = tomllib.loads(text)
    # the header: what it was made from
    assert text.startswith(
        f"# Made by `ftcompile init {data}` on {datetime.date.today().isoformat()}, ftcompile {ftcompile.__version__}."
    )
    assert "# 3 classes, 122 images (103 train, 19 val)" in text and "daisy 34+6, rose 37+7, tulip 32+6" in text
    assert "median 12x10" in text
    # data: the split, paths relative to the recipe, weights' sizes
    assert recipe["data"]["train"] == "flowers" and recipe["data"]["val"] == {"split": 0.15, "seed": 0}
    assert (recipe["data"]["image_size"], recipe["data"]["val_resize"]) == (224, 256)
    assert recipe["data"]["balance"] == "none" and recipe["run"]["keep_best"] == "val_top1"
    # the schedule: head, the last two blocks one at a time with trials of the cut, then everything
    assert list(recipe["phases"]) == ["head", "stage4", "stage3", "full"]
    assert recipe["phases"]["head"]["train"] == ["head"]
    assert recipe["phases"]["stage4"]["trials"] == {"lr.stage4": ["head / 3", "head / 10", "head / 30"]}
    assert recipe["phases"]["stage3"]["trials"] == {"lr.stage3": ["head / 10", "head / 30", "head / 100"]}
    assert recipe["phases"]["full"]["lr_decay"] == 0.5
    assert recipe["phases"]["full"]["trials"]["train"] == [
        ["stage2", "stage3", "stage4", "head"],
        ["early", "stage2", "stage3", "stage4", "head"],
    ]
    assert recipe["groups"]["early"] == ["stem", "stage1"]
    # every line but the header fits 100 columns
    assert all(len(line) <= 100 for line in text.splitlines()[1:])
    assert main(["check", str(out)]) == 0
    assert main(["plan", str(out)]) == 0
    plan = compile_recipe(out)
    assert plan.data.split_files is not None and plan.data.val_size == 19


def test_train_and_val_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images(tmp_path / "data" / "train", {"a": 33, "b": 35})
    images(tmp_path / "data" / "val", {"a": 5, "b": 6})
    (tmp_path / "recipes").mkdir()
    out = tmp_path / "recipes" / "mine.toml"
    assert _init(capsys, tmp_path / "data", "-o", out)[0] == 0
    recipe = tomllib.loads(out.read_text())
    assert (recipe["data"]["train"], recipe["data"]["val"]) == ("../data/train", "../data/val")
    assert compile_recipe(out).data.val_size == 11


def test_imbalance_gets_a_weighted_sampler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = images(tmp_path / "imgs", {"common": 130, "rare": 40})
    assert _init(capsys, data, "-o", tmp_path / "r.toml")[0] == 0
    text = (tmp_path / "r.toml").read_text()
    assert tomllib.loads(text)["data"]["balance"] == "sampler"
    assert "largest class 3.2x the smallest" in text  # 110 / 34 train images
    assert main(["check", str(tmp_path / "r.toml")]) == 0


def test_model_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = images(tmp_path / "imgs", {"x": 40, "y": 40})
    rc, stdout, _ = _init(capsys, data, "--model", "efficientnet_b0", "--image-size", "64", "-o", tmp_path / "e.toml")
    assert rc == 0 and "efficientnet_b0" in stdout
    recipe = tomllib.loads((tmp_path / "e.toml").read_text())
    assert recipe["groups"]["early"] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert list(recipe["phases"]) == ["head", "stage7", "stage6", "full"]
    assert recipe["data"]["image_size"] == 64 and recipe["data"]["augment"][0]["size"] == 64
    assert main(["plan", str(tmp_path / "e.toml")]) == 0
    rc, _, err = _init(capsys, data, "--model", "resnet181", "-o", tmp_path / "f.toml")
    assert rc == 2 and "--model: unknown architecture 'resnet181'" in err and "resnet18" in err


def test_an_existing_file_is_kept_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = images(tmp_path / "imgs", {"x": 40, "y": 40})
    out = tmp_path / "r.toml"
    out.write_text("# my own recipe\n")
    rc, _, err = _init(capsys, data, "-o", out)
    assert rc == 2 and "exists; init does not replace a recipe" in err and "--force" in err
    assert out.read_text() == "# my own recipe\n"
    assert _init(capsys, data, "-o", out, "--force")[0] == 0
    assert out.read_text().startswith("# Made by")
    rc, _, err = _init(capsys, data, "-o", tmp_path / "imgs", "--force")  # a folder: never
    assert rc == 2 and "is a folder" in err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root.mkdir(), "no class folders in"),
        (lambda root: images(root.parent, {root.name: 40}).parent and None, "no class folders in"),
        (lambda root: images(root, {"only": 40}), "holds one class ('only'): a classifier needs at least 2"),
        (
            lambda root: images(root, {"a": 40, "b": 20}),
            "1 class(es) have fewer training images than one batch of 32: 'b' 17",
        ),
        (lambda root: (root / "a").mkdir(parents=True), "class folder 'a' in"),
        (lambda root: None, "not found"),
    ],
)
def test_unusable_folders_are_exit_2(tmp_path: Path, make, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    make(root)
    rc, _, err = _init(capsys, root, "-o", tmp_path / "r.toml")
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r.toml").exists()


def test_a_class_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images(tmp_path / "data", {"a": 40, "b": 40})
    (tmp_path / "data" / "c").mkdir()
    rc, _, err = _init(capsys, tmp_path / "data", "-o", tmp_path / "r.toml")
    assert rc == 2 and "class folder 'c'" in err and "holds no images" in err


def test_unreadable_images_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = images(tmp_path / "data", {"a": 40, "b": 40})
    (data / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "b" / "empty.jpg").write_bytes(b"")
    rc, _, err = _init(capsys, data, "-o", tmp_path / "r.toml")
    assert rc == 2 and "2 of 82 images cannot be read" in err
    assert str(data / "a" / "broken.png") in err and str(data / "b" / "empty.jpg") in err


def test_a_smaller_batch_lets_small_classes_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = images(tmp_path / "data", {"a": 40, "b": 20})
    rc, _, err = _init(capsys, data, "-o", tmp_path / "r.toml")
    assert rc == 2 and "--batch-size 16" in err  # the hint: the largest power of two that fits (17 images)
    assert _init(capsys, data, "-o", tmp_path / "r.toml", "--batch-size", "16")[0] == 0
    assert tomllib.loads((tmp_path / "r.toml").read_text())["data"]["batch_size"] == 16


def test_default_model_table() -> None:
    assert init.choose_model(None, 100, "cpu").arch == "resnet18"
    assert init.choose_model(None, 100, "cuda").arch == "resnet50"
    assert init.choose_model(None, 50_000, "cuda").arch == "convnext_tiny"
    m = init.choose_model("resnet50", 100, "cpu")
    assert (m.weights, m.resize, m.crop) == ("IMAGENET1K_V2", 232, 224)  # DEFAULT's member, its eval sizes


def test_slug() -> None:
    assert init.slug("My Flowers (2024)") == "my-flowers-2024"
    assert init.slug("___") == "recipe"


# ---------------------------------------------------------------- the example in docs/starting.md

DOCS = Path(__file__).resolve().parents[2] / "docs" / "starting.md"
EXAMPLE_MARK = "<!-- init example: made by tests/ftcompile/test_init.py::flowers_example, checked by the test below -->"
README = DOCS.parents[1] / "README.md"
README_MARK = (
    "<!-- init example, first lines: the start of docs/starting.md's, checked by tests/ftcompile/test_init.py -->"
)


def flowers_example(root: Path) -> Path:
    """docs/starting.md's folder: data/flowers/<class>/<i>.jpg, photos of four sizes, uneven classes."""
    import random

    rng = random.Random(0)
    for name, n in {"daisy": 120, "rose": 45, "tulip": 42}.items():
        (root / "data" / "flowers" / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = rng.choice([(500, 375), (320, 240), (640, 480), (500, 333)])
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            Image.new("RGB", size, colour).save(root / "data" / "flowers" / name / f"{i:04d}.jpg")
    return root / "data" / "flowers"


def test_the_docs_example_is_what_init_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DOCS.read_text()
    assert EXAMPLE_MARK in text
    shown = text.split(EXAMPLE_MARK, 1)[1].split("```text\n", 1)[1].split("```\n", 1)[0]
    flowers_example(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc, out, err = _init(capsys, "data/flowers")
    assert rc == 0, err
    assert err == ""
    made = f"$ ftcompile init data/flowers\n{out}$ cat recipe.toml\n{(tmp_path / 'recipe.toml').read_text()}"
    made = made.replace(str(tmp_path / "torch-home"), "~/.cache/torch")
    today = datetime.date.today().isoformat()
    date = shown.split("` on ", 1)[1].split(",", 1)[0]  # the page's date: when the example was made
    assert made.replace(f"on {today},", f"on {date},") == shown
    # The README's first screen shows init's own lines of the same example (issue 21 §5).
    readme = README.read_text().split(README_MARK, 1)[1].split("```text\n", 1)[1].split("```\n", 1)[0]
    assert readme == made.split("$ cat recipe.toml\n", 1)[0]
