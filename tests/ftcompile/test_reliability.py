"""Issue 12, the compiler's side: data read faithfully and once, plan.json fields that become
paths checked on load, rules the run would enforce checked by `check`, and bounds on what a
recipe can ask for (each an error message, never a MemoryError, RecursionError or hang).

Runtime failures (locks, disk, checkpoints, resume) are in tests/runtime/test_reliability_run.py.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ftcompile.runtime.data import read_rgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ftcompile import memory
from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.datasets import count_data, list_image_folder
from ftcompile.errors import RecipeError
from ftcompile.images import check_image
from ftcompile.load import MAX_EXTENDS_DEPTH, MAX_NESTING, key_lines, load_recipe
from ftcompile.lr_expr import MAX_EXPR_CHARS, MAX_EXPR_DEPTH, parse_expr
from ftcompile.plan import Plan, plan_hash
from ftcompile.resolve import MAX_CHANGES

Writer = Callable[..., Path]
Folders = Callable[[Path, dict[str, int]], None]

# A 3-class digits recipe: one head-only phase, then one that trains everything.
DIGITS = """\
name = "rel"
seed = 0

[model]
arch = "resnet18"
weights = "none"

[data]
builtin = "digits"
classes = ["0", "1", "2"]
image_size = 16
batch_size = 16

[optimizer]
type = "SGD"
momentum = 0.9

[groups]
body = ["backbone"]
head = ["head"]

[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.1 }

[phases.full]
after = ["warm"]
train = ["body", "head"]
steps = 2
lr = { head = 0.01, body = "head / 10" }

[run]
device = "cpu"
"""


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def rehashed(data: dict[str, Any]) -> dict[str, Any]:
    """The plan dict with a hash that matches its (edited) content, as anyone can compute."""
    return {**data, "hash": plan_hash({k: v for k, v in data.items() if k != "hash"})}


# ---------------------------------------------------------------- 1. symlink loops


def make_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # counting never decodes an image


def test_a_class_folder_that_links_back_to_itself_is_counted_once(tmp_path: Path) -> None:
    """cat/again -> cat (a loop), cat/up -> train (the loop through the root), and two links
    to one folder: each real image is listed once; os.walk(followlinks=True) alone lists
    the 3 cat images dozens of times."""
    train = tmp_path / "train"
    for i in range(3):
        make_png(train / "cat" / f"{i}.png")
    make_png(train / "dog" / "0.png")
    make_png(train / "dog" / "shared" / "s.png")
    os.symlink(train / "cat", train / "cat" / "again")
    os.symlink(train, train / "cat" / "up")
    os.symlink(train / "dog" / "shared", train / "dog" / "link1")
    os.symlink(train / "dog" / "shared", train / "dog" / "link2")
    samples, names = list_image_folder(train, [])
    assert names == ["cat", "dog"]
    # cat: its 3 images, and dog's 2 real images reached through `up` (the cat folder itself
    # is not entered again); dog: 0.png and the shared image once, by the first path in sorted
    # order (link1; link2 and shared/ are the same real folder).
    assert sorted(rel for rel, label in samples if label == 0) == [
        "cat/0.png",
        "cat/1.png",
        "cat/2.png",
        "cat/up/dog/0.png",
        "cat/up/dog/link1/s.png",
    ]
    assert sorted(rel for rel, label in samples if label == 1) == ["dog/0.png", "dog/link1/s.png"]


@st.composite
def linked_trees(draw: st.DrawFn) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """A folder tree below one class folder (parent of folder i < i; folder 0 is the class
    folder), images per folder, and symbolic links from a folder to any folder of the tree
    (itself, an ancestor, a sibling: loops included)."""
    n = draw(st.integers(1, 6))
    parents = [draw(st.integers(0, i - 1)) for i in range(1, n)]
    images = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    links = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=6))
    return parents, images, links


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(linked_trees())
def test_every_real_image_is_listed_exactly_once_whatever_the_links(
    tree: tuple[list[int], list[int], list[tuple[int, int]]],
) -> None:
    parents, images, links = tree
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train"
        folders = [train / "cls"]
        for i, parent in enumerate(parents, start=1):
            folders.append(folders[parent] / f"d{i}")
        for folder in folders:
            folder.mkdir(parents=True)
        real = set()
        for folder, count in zip(folders, images, strict=False):
            for j in range(count):
                make_png(folder / f"{j}.png")
                real.add(os.path.realpath(folder / f"{j}.png"))
        for k, (src, dst) in enumerate(links):
            os.symlink(folders[dst], folders[src] / f"link{k}")
        if not real:
            with pytest.raises(RecipeError, match="holds no images"):
                list_image_folder(train, [])
            return
        samples, _ = list_image_folder(train, [])
        listed = [os.path.realpath(train / rel) for rel, _ in samples]
        assert len(listed) == len(set(listed))  # no image twice
        assert set(listed) == real  # and none left out


# ---------------------------------------------------------------- 4. plan.json fields that become paths


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/../../b", "..", "UPPER", "x" * 129])
def test_a_rehashed_plan_naming_a_path_outside_runs_is_refused_on_load(
    write: Writer, name: str, tmp_path: Path
) -> None:
    data = json.loads(compile_recipe(write(DIGITS)).to_json())
    data["recipe"]["name"] = name
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(rehashed(data)))
    with pytest.raises(RecipeError) as info:
        Plan.load(path)
    assert info.value.key == "recipe.name" and info.value.file == str(path)
    assert "is not a slug" in info.value.message


@pytest.mark.parametrize("phase", ["../../../x", "a/b", "..", "a\\b"])
def test_a_phase_name_is_one_folder_name_in_a_recipe_and_in_a_plan(write: Writer, phase: str, tmp_path: Path) -> None:
    """A phase names trials/<phase>/ inside the run directory."""
    data = json.loads(compile_recipe(write(DIGITS)).to_json())
    data["phases"][0]["name"] = phase
    with pytest.raises(RecipeError) as info:
        Plan.from_dict(rehashed(data), "evil.json")
    assert info.value.key == "phases[0].name" and repr(phase) in info.value.message
    with pytest.raises(RecipeError) as info:
        compile_recipe(
            write(
                DIGITS.replace("[phases.warm]", f"[phases.{json.dumps(phase)}]").replace(
                    'after = ["warm"]', f"after = [{json.dumps(phase)}]"
                )
            )
        )
    assert "phase name" in str(info.value) and info.value.key == f"phases.{phase}"  # with the line of [phases."<name>"]


def test_an_upstream_plan_inside_a_plan_is_checked_too(write: Writer, tmp_path: Path) -> None:
    """weights = "up.toml" embeds the upstream plan, whose name becomes runs/<name>/ too."""
    write(DIGITS.replace('name = "rel"', 'name = "up"'), "up.toml")
    data = json.loads(compile_recipe(write(DIGITS.replace('weights = "none"', 'weights = "up.toml"'))).to_json())
    upstream = data["model"]["weights"]["plan"]
    upstream["recipe"]["name"] = "../../x"
    data["model"]["weights"]["plan"] = rehashed(upstream)
    with pytest.raises(RecipeError) as info:
        Plan.from_dict(rehashed(data), "down.json")
    assert info.value.key == "recipe.name" and "upstream plan" in str(info.value.file)


@pytest.mark.parametrize("seed", [2**32, -1, 1.5, True])
def test_a_rehashed_plan_with_a_seed_numpy_refuses_is_refused_on_load(write: Writer, seed: Any) -> None:
    data = json.loads(compile_recipe(write(DIGITS)).to_json())
    data["seed"] = seed
    with pytest.raises(RecipeError) as info:
        Plan.from_dict(rehashed(data), "p.json")
    assert info.value.key == "seed"


# ---------------------------------------------------------------- 8. what run rejects, check rejects


def test_a_seed_of_2_to_the_32_fails_check_and_run_makes_no_run_directory(
    write: Writer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = write(DIGITS)
    rc, out, _ = cli(capsys, "check", recipe, "--set", f"seed={2**32}")
    assert rc == 2 and "seed" in out and "4294967295" in out
    rc, _, err = cli(capsys, "run", recipe, "--set", f"seed={2**32}")
    assert rc == 2 and "seed" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    rc, out, _ = cli(capsys, "check", recipe, "--set", f"seed={2**32 - 1}")  # the largest numpy takes
    assert rc == 0, out


FIVE_IMAGES = """\
name = "five"

[model]
arch = "resnet18"
weights = "none"

[data]
train = "data/train"
val = "data/val"
image_size = {size}
batch_size = 4
drop_last = {drop_last}

[groups]
body = ["backbone"]
head = ["head"]

[phases.only]
train = [{train}]
steps = 3
lr = {{ {lr} }}
bn = "{bn}"

[run]
device = "cpu"
"""


@pytest.mark.parametrize(
    "size, drop_last, train, bn, fails",
    [
        (16, "false", '"body", "head"', "train", True),  # layer4's BatchNorm sees 1 value per channel
        (16, "true", '"body", "head"', "train", False),  # the 1-image batch is dropped
        (16, "false", '"head"', "frozen", False),  # the frozen body's BatchNorm is in eval mode
        (64, "false", '"body", "head"', "train", False),  # 2x2 values per channel at layer4: fine
    ],
)
def test_a_one_image_last_batch_under_batchnorm_fails_check_exactly_when_run_would(
    tmp_path: Path,
    image_folders: Folders,
    capsys: pytest.CaptureFixture[str],
    size: int,
    drop_last: str,
    train: str,
    bn: str,
    fails: bool,
) -> None:
    """5 images in batches of 4: every epoch ends with a 1-image batch (step 1)."""
    image_folders(tmp_path / "data/train", {"ant": 3, "bee": 2})
    image_folders(tmp_path / "data/val", {"ant": 1, "bee": 1})
    recipe = tmp_path / "r.toml"
    lr = ", ".join(f"{g.strip(chr(34))} = 0.01" for g in train.split(", "))
    recipe.write_text(FIVE_IMAGES.format(size=size, drop_last=drop_last, train=train, bn=bn, lr=lr))
    rc, out, _ = cli(capsys, "check", recipe)
    if fails:
        assert rc == 2 and "data.batch_size" in out
        assert "the batch of step 1 (phase only) has 1 image, too few for BatchNorm in train mode" in out
        assert "drop_last = true" in out and "batch_size = 5" in out
    else:
        assert rc == 0, out


@pytest.mark.parametrize("batch, fails", [(4, True), (3, False)])
def test_a_phase_with_its_own_batch_size_is_checked_for_a_one_image_batch(
    tmp_path: Path,
    image_folders: Folders,
    capsys: pytest.CaptureFixture[str],
    batch: int,
    fails: bool,
) -> None:
    """The recipe's batches (5 images in 5s) are fine; a second phase's own batch size 4
    leaves 1 image at the end of its epochs (5 in 3s: 3 + 2, fine)."""
    image_folders(tmp_path / "data/train", {"ant": 3, "bee": 2})
    image_folders(tmp_path / "data/val", {"ant": 1, "bee": 1})
    text = FIVE_IMAGES.format(
        size=16, drop_last="false", train='"body", "head"', bn="train", lr="body = 0.01, head = 0.01"
    )
    text = text.replace("batch_size = 4", "batch_size = 5").replace("steps = 3", "steps = 2")
    text = text.replace(
        "[run]",
        f"""[phases.small]
after = ["only"]
train = ["body", "head"]
steps = 4
lr = {{ body = 0.01, head = 0.01 }}
data = {{ batch_size = {batch} }}

[run]""",
    )
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    rc, out, _ = cli(capsys, "check", recipe)
    if fails:
        assert rc == 2 and "phases.small.data.batch_size" in out, out
        assert "batches of 4" in out and "the batch of step 3 (phase small) has 1 image" in out, out
    else:
        assert rc == 0, out


# ---------------------------------------------------------------- 9. resource bounds


def test_memory_estimate_of_a_billion_classes_and_the_warning_above_the_machine(
    write: Writer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = compile_recipe(write(DIGITS))
    trained = sum(g.numel for g in plan.groups)  # phase `full` trains everything
    m = memory.estimate(plan)
    # fp32: parameters, gradients of the largest trained set, one SGD momentum buffer each
    assert (m.params, m.grads, m.state) == (4 * plan.model.total_params, 4 * trained, 4 * trained)
    assert memory.warning(plan, available=m.total) is None
    assert "more than this machine's" in (memory.warning(plan, available=m.total - 1) or "")

    monkeypatch.setattr(memory, "machine_memory", lambda: 16 * 10**9)
    rc, out, err = cli(capsys, "plan", write(DIGITS), "--set", "model.num_classes=1000000000")
    params = 512 * 10**9 + 10**9 + 11_176_512  # fc: 512 x 1e9 weights + 1e9 biases; the backbone
    assert rc == 0 and f"params {params / 1e9:.2f}G" in out
    assert f"memory params {memory.size(4 * params)}" in out
    said = " ".join((out + err).split())  # the plan output wraps at 100 columns
    assert "warning: parameters, gradients and optimizer state alone need" in said
    assert "more than this machine's 16.0 GB of memory" in said


def test_a_run_that_evaluates_and_checkpoints_every_step_of_10_million_is_refused(
    write: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(
        capsys,
        "check",
        write(DIGITS),
        "--set",
        "phases.warm.steps=9999998",
        "--set",
        'run.eval_every="1 step"',
        "--set",
        'run.checkpoint_every="1 step"',
    )
    assert rc == 2 and "run.eval_every" in out and f"more than {MAX_CHANGES:,}" in out
    assert "10,000,000 evaluations" in out


def test_a_100000_character_lr_expression_is_a_message(write: Writer, capsys: pytest.CaptureFixture[str]) -> None:
    text = DIGITS.replace('body = "head / 10"', 'body = "' + "-" * 100_000 + 'head"')
    rc, out, _ = cli(capsys, "check", write(text))
    assert rc == 2 and "phases.full.lr.body" in out
    assert f"an expression of 100004 characters is too long (at most {MAX_EXPR_CHARS})" in out


def test_an_lr_expression_nested_too_deep_is_a_message(write: Writer, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "-" * MAX_EXPR_DEPTH + "head"  # depth MAX_EXPR_DEPTH + 1, well under the length bound
    rc, out, _ = cli(capsys, "check", write(DIGITS.replace('"head / 10"', f'"{deep}"')))
    assert rc == 2 and f"nests more than {MAX_EXPR_DEPTH} operations deep" in out
    ok = "-" * (MAX_EXPR_DEPTH - 2) + "head"  # depth MAX_EXPR_DEPTH - 1, and a negative LR...
    assert parse_expr(ok) is not None  # ...parses; its value is judged later


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="-+*/()~ .0123456789eheadbody", max_size=400))
def test_any_lr_expression_text_parses_or_is_a_value_error(text: str) -> None:
    """Python's parser recurses; nothing a recipe holds may reach it unbounded."""
    try:
        parse_expr(text)
    except ValueError:
        pass


def test_an_extends_chain_of_1200_recipes_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r0.toml").write_text(DIGITS)
    for i in range(1, 1200):
        (tmp_path / f"r{i}.toml").write_text(f'extends = "r{i - 1}.toml"\n')
    rc, out, _ = cli(capsys, "check", tmp_path / "r1199.toml")
    assert rc == 2 and f"the extends chain is longer than {MAX_EXTENDS_DEPTH} recipes" in out
    assert "RecursionError" not in out
    # a chain of MAX_EXTENDS_DEPTH recipes (the last extends MAX_EXTENDS_DEPTH - 1 others) is read
    assert load_recipe(tmp_path / f"r{MAX_EXTENDS_DEPTH - 1}.toml").data["name"] == "rel"


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 5000])
def test_values_nested_too_deep_are_a_message(write: Writer, depth: int) -> None:
    text = DIGITS.replace("[run]", "[run]\nx = " + "[" * depth + "]" * depth)
    with pytest.raises(RecipeError) as info:
        load_recipe(write(text))
    assert "nested" in info.value.message and "flatten" in (info.value.suggestion or "")


# Key-to-line lookup: linear in a line's length. Every builtin call that key_lines makes is
# counted (a profile hook sees each one): the count does not grow with the line, and none is
# a regex, so each line costs a fixed number of linear string operations.


def builtin_calls(text: str) -> list[str]:
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            calls.append(f"{getattr(arg, '__self__', None).__class__.__name__}.{arg.__name__}")

    sys.setprofile(profile)
    try:
        key_lines(text)
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize(
    "line",
    [
        lambda n: "a" * n + " = 1",  # a long key
        lambda n: 'notes = "' + "x" * n + '"',  # a long value
        lambda n: "[" + "t" * n + "]",  # a long table header
        lambda n: "# " + "=" * n,  # a long comment of '='
        lambda n: "x = [" + "1, " * (n // 3) + "]",  # a long array
    ],
)
def test_key_lookup_makes_the_same_builtin_calls_for_a_1_kb_and_a_128_kb_line(line: Callable[[int], str]) -> None:
    short, long = builtin_calls(line(1024) + "\n"), builtin_calls(line(128 * 1024) + "\n")
    assert short == long
    assert not any(c.startswith(("Pattern.", "re.", "SRE_")) for c in long), long


def test_a_128_kb_line_still_puts_errors_on_their_lines(write: Writer, capsys: pytest.CaptureFixture[str]) -> None:
    text = DIGITS.replace("seed = 0", "seed = 0\n# " + "x = y " * 22_000).replace(
        "batch_size = 16", "batch_size = 0" + " " * 131_072
    )
    rc, out, _ = cli(capsys, "check", write(text))
    line = text.splitlines().index("batch_size = 0" + " " * 131_072) + 1
    assert rc == 2 and f"recipe.toml:{line}: data.batch_size:" in out


TABLE = st.text(alphabet="abcxyz_-", min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(TABLE, st.lists(st.tuples(TABLE, st.integers(0, 300)), max_size=5, unique_by=lambda kv: kv[0])),
        min_size=1,
        max_size=5,
        unique_by=lambda t: t[0],
    )
)
def test_key_lines_finds_every_key_of_any_recipe_text(tables: list[tuple[str, list[tuple[str, int]]]]) -> None:
    """Generated text: tables of keys, values padded with spaces, comments holding '=' and
    '[': each key path maps to the line it is written on."""
    lines: list[str] = []
    expected: dict[str, int] = {}
    for table, keys in tables:
        lines += ["# a comment = [not a table]", f"[{table}]"]
        expected[table] = len(lines)
        for key, pad in keys:
            lines.append(f"{key} = 1{' ' * pad}# = x")
            expected[f"{table}.{key}"] = len(lines)
    assert key_lines("\n".join(lines) + "\n") == expected


# ---------------------------------------------------------------- 7. images read faithfully


CHANNELS = {"CMYK": 4, "LA": 2, "RGBA": 4, "RGB": 3, "L": 1, "P": 1}


def image_arrays(mode: str, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return rng.integers(0, 65536, (h, w), dtype=np.uint16)
    return rng.integers(0, 256, (h, w, CHANNELS[mode]), dtype=np.uint8)


def write_image(path: Path, mode: str, pixels: np.ndarray, seed: int) -> np.ndarray:
    """Save `pixels` in `mode` (lossless formats) and return the RGB uint8 (H, W, 3) that
    reading it must give, computed here without PIL's conversions."""
    h, w = pixels.shape[:2]
    raw = pixels.astype("<u2").tobytes() if mode == "I;16" else pixels.tobytes()
    image = Image.frombytes(mode, (w, h), raw)
    if mode == "I;16":  # a 16-bit grey PNG
        grey = np.floor(pixels.astype(np.float64) / 257 + 0.5).astype(np.uint8)  # round(v / 257)
        expected = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode == "P":
        palette = np.random.default_rng(seed + 1).integers(0, 256, (256, 3), dtype=np.uint8)
        image.putpalette(palette.reshape(-1).tolist())
        expected = palette[pixels[:, :, 0]]  # each index looked up in the palette
    elif mode == "CMYK":  # TIFF keeps CMYK lossless
        c, k = pixels[:, :, :3].astype(np.float64), pixels[:, :, 3:].astype(np.float64)
        expected = np.floor((255 - c) * (255 - k) / 255 + 0.5).astype(np.uint8)  # round((255-c)(255-k)/255)
    elif mode in ("LA", "L"):
        expected = np.repeat(pixels[:, :, :1], 3, axis=2)  # grey to all three channels, alpha dropped
    else:
        expected = pixels[:, :, :3]  # RGBA: alpha dropped
    image.save(path)
    return expected


SUFFIX = {"CMYK": ".tif", "I;16": ".png", "P": ".png", "LA": ".png", "RGBA": ".png", "RGB": ".png", "L": ".png"}


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(SUFFIX)), st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**16))
def test_every_image_mode_reads_as_its_pixels(mode: str, h: int, w: int, seed: int) -> None:
    """16-bit grey scaled (not clipped to white), palette looked up, CMYK converted, alpha
    dropped: the tensor equals the pixels written out above."""
    pixels = image_arrays(mode, h, w, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{SUFFIX[mode]}"
        expected = write_image(path, mode, pixels, seed)
        assert check_image(path) is None  # `check --verify-images` accepts it
        got = read_rgb(path)
    assert got.dtype.is_floating_point is False and tuple(got.shape) == (3, h, w)
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_a_16_bit_grey_ramp_keeps_its_levels() -> None:
    """The issue's case: convert("RGB") clips 16-bit values at 255, so almost every pixel is
    white; read faithfully, a ramp over 0..65535 stays a ramp over 0..255."""
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ramp.png"
        Image.frombytes("I;16", (16, 16), ramp.astype("<u2").tobytes()).save(path)
        got = read_rgb(path)[0].numpy()
    assert np.array_equal(got, np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert (got == 255).mean() < 0.01


# EXIF orientation -> what the viewer sees, written with numpy (rows, columns):
ORIENTED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed (mirror along the main diagonal)
    6: lambda a: np.rot90(a, -1),  # stored 90 degrees off: shown rotated clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse (mirror along the other diagonal)
    8: lambda a: np.rot90(a, 1),  # shown rotated counter-clockwise
}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(ORIENTED)), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**16))
def test_the_exif_orientation_is_applied(orientation: int, h: int, w: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.png"
        image = Image.fromarray(pixels, "RGB")
        exif = image.getexif()
        exif[0x0112] = orientation  # Orientation
        image.save(path, exif=exif.tobytes())
        got = read_rgb(path).permute(1, 2, 0).numpy()
    assert np.array_equal(got, ORIENTED[orientation](pixels))


# ---------------------------------------------------------------- data counted as the plan says


def test_a_count_follows_links_once(tmp_path: Path) -> None:
    """count_data (what the plan records) agrees with the listing: links never add images."""
    for split in ("train", "val"):
        for cls in ("a", "b"):
            make_png(tmp_path / split / cls / "0.png")
        os.symlink(tmp_path / split / "a", tmp_path / split / "a" / "self")
    counts = count_data({"train": "train", "val": "val"}, tmp_path)
    assert (counts.train_size, counts.val_size, counts.class_counts) == (2, 2, (1, 1))
