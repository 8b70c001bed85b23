"""The runtime's data: shapes, counts that match the compiler, a resumable seeded order."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from ftcompile.runtime.data import TrainBatches, build_datasets, class_weights, read_rgb, val_loader
from ftcompile.runtime.evaluate import read_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ftcompile.datasets import count_data
from ftcompile.errors import RecipeError
from ftcompile.images import check_image
from ftcompile.plan import DataSpec

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SIZE = 16
AUGMENT = [
    {"op": "RandomResizedCrop", "size": SIZE, "scale": [0.3, 1.0]},
    {"op": "RandomHorizontalFlip"},
]


def make_folder(root: Path, counts: dict[str, int]) -> None:
    """Random-noise PNGs of assorted sizes (8..32), so crops and flips change pixels."""
    g = torch.Generator().manual_seed(1)
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = 8 + (i * 5) % 25, 8 + (i * 7 + c) % 25
            pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i:03d}.png")


def recipe_data(**over) -> DataSpec:
    """The plan's data section for these folders (counted fields are not read here)."""
    data = {
        "train": "train",
        "val": "val",
        "builtin": None,
        "classes": [],
        "image_size": SIZE,
        "batch_size": 4,
        "workers": 0,
        "augment": AUGMENT,
        "balance": "none",
        "label_smoothing": 0.0,
        "drop_last": False,
        "train_size": 0,
        "val_size": 0,
        "class_names": [],
        "class_counts": [],
        "steps_per_epoch": 0,
        "mean": list(MEAN),
        "std": list(STD),
    }
    data.update(over)
    return DataSpec(**data)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    make_folder(root / "train", {"ant": 6, "bee": 5, "cow": 3})  # 14 samples
    make_folder(root / "val", {"ant": 2, "bee": 2, "cow": 1})
    return root


def batches(train_batches: TrainBatches, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in train_batches.loader(epoch, start)]


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=False):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_shapes_and_sizes_match_count(root: Path) -> None:
    data = recipe_data()
    train, val, names = build_datasets(data, root, MEAN, STD)
    counts = count_data(asdict(data), root)
    assert (len(train), len(val)) == (counts.train_size, counts.val_size) == (14, 5)
    assert names == list(counts.class_names) == ["ant", "bee", "cow"]
    for ds in (train, val):
        x, y = ds[len(ds) - 1]
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
        assert y == 2


def test_digits_datasets() -> None:
    data = recipe_data(train=None, val=None, builtin="digits", classes=["5", "6", "7", "8", "9"], image_size=12)
    train, val, names = build_datasets(data, Path("."), MEAN, STD)
    counts = count_data(asdict(data), Path("."))
    assert (len(train), len(val)) == (counts.train_size, counts.val_size)
    assert names == ["5", "6", "7", "8", "9"]
    x, y = val[0]
    assert x.shape == (3, 12, 12) and 0 <= y <= 4
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey replicated
    # Pixel range survives: 0 -> (0 - 0.5) / 0.25 = -2, 255 -> (1 - 0.5) / 0.25 = 2.
    assert x.min() >= -2 - 1e-6 and x.max() <= 2 + 1e-6


def test_resume_equals_tail_bitwise(root: Path) -> None:
    train, _, _ = build_datasets(recipe_data(), root, MEAN, STD)
    tb = TrainBatches(train, recipe_data(), seed=3, class_counts=None)
    assert tb.steps_per_epoch == 4  # ceil(14 / 4)
    full = batches(tb, epoch=2)
    assert [len(y) for _, y in full] == [4, 4, 4, 2]
    assert_same(batches(tb, epoch=2, start=2), full[2:])
    # A fresh object (a resumed process) gives the same batches too.
    again = TrainBatches(train, recipe_data(), seed=3, class_counts=None)
    assert_same(batches(again, epoch=2, start=1), full[1:])


def test_epochs_and_seeds_differ(root: Path) -> None:
    train, _, _ = build_datasets(recipe_data(), root, MEAN, STD)
    tb = TrainBatches(train, recipe_data(), seed=0, class_counts=None)
    assert not torch.equal(tb.order(0), tb.order(1))
    assert sorted(tb.order(0).tolist()) == list(range(14))
    other = TrainBatches(train, recipe_data(), seed=1, class_counts=None)
    assert not torch.equal(tb.order(0), other.order(0))


def test_augmentation_is_random_but_seeded(root: Path) -> None:
    train, _, _ = build_datasets(recipe_data(batch_size=14), root, MEAN, STD)
    tb = TrainBatches(train, recipe_data(batch_size=14), seed=0, class_counts=None)
    ((x, _),) = batches(tb, 0)
    plain = torch.stack([train[i][0] for i in tb.order(0).tolist()])
    assert not torch.equal(x, plain)  # the crops really are random ...
    before = torch.get_rng_state()
    batches(tb, 0)
    assert torch.equal(before, torch.get_rng_state())  # ... and leave the caller's RNG alone


def test_workers_do_not_change_batches(root: Path) -> None:
    train, _, _ = build_datasets(recipe_data(), root, MEAN, STD)
    serial = TrainBatches(train, recipe_data(workers=0), seed=5, class_counts=None)
    parallel = TrainBatches(train, recipe_data(workers=2), seed=5, class_counts=None)
    assert_same(batches(parallel, 1), batches(serial, 1))


def test_drop_last(root: Path) -> None:
    train, _, _ = build_datasets(recipe_data(), root, MEAN, STD)
    tb = TrainBatches(train, recipe_data(drop_last=True), seed=0, class_counts=None)
    assert tb.steps_per_epoch == 3  # floor(14 / 4)
    assert [len(y) for _, y in batches(tb, 0)] == [4, 4, 4]


def test_balanced_sampler() -> None:
    # 40 "ant" vs 4 "bee" images: uniform sampling would give bee 4/44 = 9 %.
    # Weighted 1/count, each class has probability 1/2 per draw; over 25 epochs x 44 draws
    # (1100 draws, sd = sqrt(1100 / 4) = 17) we allow +-10 % of 1100 = 110, over 6 sd.
    data = recipe_data(balance="sampler")
    targets = torch.tensor([0] * 40 + [1] * 4)
    tb = TrainBatches(_Labels(targets), data, seed=0, class_counts=[40, 4])
    drawn = torch.cat([targets[tb.order(e)] for e in range(25)])
    assert abs(int((drawn == 1).sum()) - 550) <= 110
    # Without class_counts the sampler counts the targets itself: same order.
    for unknown in (None, [0, 0]):  # not counted at compile time: the targets are counted
        same = TrainBatches(_Labels(targets), data, seed=0, class_counts=unknown)
        assert same.class_counts == [40, 4] and torch.equal(same.order(3), tb.order(3))
    with pytest.raises(RecipeError):  # the data changed since the plan was made
        TrainBatches(_Labels(targets), data, seed=0, class_counts=[39, 5])


class _Labels(torch.utils.data.Dataset):
    """A dataset that is only labels: enough for the sampler."""

    def __init__(self, targets: torch.Tensor) -> None:
        self.targets = targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)


def test_class_weights() -> None:
    # n / (k * count_c) = 44 / (2 * 40) = 0.55 and 44 / (2 * 4) = 5.5.
    assert torch.allclose(class_weights([40, 4]), torch.tensor([0.55, 5.5]))


def test_distributed_split(root: Path) -> None:
    data = recipe_data(batch_size=4)
    train, _, _ = build_datasets(data, root, MEAN, STD)
    single = batches(TrainBatches(train, data, seed=7, class_counts=None), 0)
    ranks = [batches(TrainBatches(train, data, seed=7, class_counts=None, rank=r, world=2), 0) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 4
    for b in range(3):  # full batches: rank 0 ++ rank 1 is the 1-process batch, bitwise
        x = torch.cat([ranks[0][b][0], ranks[1][b][0]])
        y = torch.cat([ranks[0][b][1], ranks[1][b][1]])
        assert torch.equal(x, single[b][0]) and torch.equal(y, single[b][1])
    # Last batch: 2 samples, one per rank, no padding needed (see the next test).
    x_last = torch.cat([ranks[0][3][0], ranks[1][3][0]])
    assert torch.equal(x_last, single[3][0])
    with pytest.raises(RecipeError) as info:
        TrainBatches(train, data, seed=7, class_counts=None, rank=0, world=3)
    assert info.value.key == "data.batch_size"


def test_distributed_last_batch_padding(root: Path) -> None:
    data = recipe_data(batch_size=4, augment=[])
    train, _, _ = build_datasets(data, root, MEAN, STD)
    one = TrainBatches(train, data, seed=7, class_counts=None)
    order = one.order(0).tolist()
    # 14 = 3 * 4 + 2: last global batch holds positions 12, 13; with world 4 each rank
    # takes ceil(2 / 4) = 1 position: 12, 13, then 14 -> order[0], 15 -> order[1].
    items = [TrainBatches(train, data, 7, None, rank=r, world=4).batch_items(0, 3) for r in range(4)]
    assert [i for chunk in items for i, _ in chunk] == [order[12], order[13], order[0], order[1]]


def test_val_loader_shards(root: Path) -> None:
    data = recipe_data(batch_size=2)
    _, val, _ = build_datasets(data, root, MEAN, STD)
    whole = torch.cat([y for _, y in val_loader(val, data)])
    assert whole.tolist() == [0, 0, 1, 1, 2]  # in order, no padding
    shards = [torch.cat([y for _, y in val_loader(val, data, rank=r, world=2)]) for r in (0, 1)]
    assert torch.cat(shards).tolist() == whole.tolist()  # 5 samples: 2 + 3


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image(tmp_path: Path, workers: int) -> None:
    make_folder(tmp_path / "train", {"ant": 2, "bee": 2})
    make_folder(tmp_path / "val", {"ant": 1, "bee": 1})
    (tmp_path / "train/bee/001.png").write_bytes(b"not a png")
    data = recipe_data(batch_size=4, workers=workers)
    train, _, _ = build_datasets(data, tmp_path, MEAN, STD)
    tb = TrainBatches(train, data, seed=0, class_counts=None)
    with pytest.raises(RecipeError) as info:
        batches(tb, 0)
    assert info.value.key == "data.train"
    assert "bee/001.png" in info.value.message
    assert "Traceback" not in str(info.value)


# ---------------------------------------------------------------- float (mode F) images read by their range


def write_float_tiff(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.float32), mode="F").save(path)
    with Image.open(path) as image:
        assert (image.mode, image.format) == ("F", "TIFF")
    return path


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**16), top=st.sampled_from([1.0, 255.0]))
def test_a_float_tiff_reads_by_its_range(h: int, w: int, seed: int, top: float) -> None:
    """0..1 floats were read as all black (convert("RGB") truncates each value to 0 or 1).
    0..1 is scaled by 255, 0..255 kept; both rounded: floor(v * scale + 0.5)."""
    pixels = np.random.default_rng(seed).uniform(0, top, (h, w)).astype(np.float32)
    pixels.flat[0] = top  # the range's top is in the image
    scale = 255.0 if top == 1.0 else 1.0
    expected = np.floor(pixels.astype(np.float64) * scale + 0.5).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_float_tiff(Path(tmp) / "f.tif", pixels)
        assert check_image(path) is None  # `check --verify-images` accepts it
        got = read_rgb(path)
        assert torch.equal(read_image(path), got)  # predict reads it as training and eval do
    assert tuple(got.shape) == (3, h, w) and got.dtype == torch.uint8
    assert all(np.array_equal(got[c].numpy(), expected) for c in range(3))
    assert got.max() == 255  # never black


def test_the_issues_float_tiff_is_not_black(tmp_path: Path) -> None:
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
    got = read_rgb(write_float_tiff(tmp_path / "ramp.tif", ramp))[0].numpy()
    assert np.array_equal(got, np.arange(256, dtype=np.uint8).reshape(16, 16))  # round(i / 255 * 255) = i


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (-0.5, 0.5, "values from -0.5 to 0.5"),
        (0.0, 1000.0, "values from 0 to 1000"),
        (0.0, float("nan"), "NaN or infinite"),
        (0.0, float("inf"), "NaN or infinite"),
    ],
)
def test_a_float_tiff_outside_both_ranges_is_refused_naming_the_file(
    tmp_path: Path, low: float, high: float, words: str
) -> None:
    from ftcompile.runtime.data import ImageFiles

    path = write_float_tiff(tmp_path / "odd.tif", np.array([[low, high], [0.0, 0.0]]))
    assert words in (check_image(path) or "")  # check --verify-images lists it
    files = ImageFiles(tmp_path, [("odd.tif", 0)], lambda x: x, key="data.train")
    with pytest.raises(RecipeError) as err:
        files[0]
    assert (
        err.value.key == "data.train"
        and f"cannot read image {path}" in err.value.message
        and words in err.value.message
    )
