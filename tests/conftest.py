"""Shared fixtures: a tiny valid recipe and a helper that writes recipe files.

The tiny recipe is a resnet18 (built on the meta device by the compiler) on scikit-learn's
digits: compiling it takes milliseconds once torch is imported.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Two phases: a head-only warm-up, then everything with the backbone at a tenth of the LR.
TINY = """\
name = "tiny"
seed = 0

[model]
arch = "resnet18"
num_classes = 10

[data]
builtin = "digits"
image_size = 32
batch_size = 64

[optimizer]
type = "SGD"
momentum = 0.9
weight_decay = 1e-4

[groups]
body = ["backbone"]
head = ["head"]

[phases.warmup]
train = ["head"]
epochs = 1
lr = { head = 0.1 }

[phases.full]
after = ["warmup"]
train = ["body", "head"]
epochs = 1
lr = { head = 0.01, body = "head / 10" }
"""


def write_recipe(folder: Path, text: str, name: str = "recipe.toml") -> Path:
    """Write `text` to folder/name (creating folders) and return the path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tiny() -> str:
    """The text of the tiny valid recipe."""
    return TINY


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(text, name="recipe.toml") -> path of the recipe written under tmp_path."""

    def _write(text: str, name: str = "recipe.toml") -> Path:
        return write_recipe(tmp_path, text, name)

    return _write


def make_image_folders(root: Path, counts: dict[str, int]) -> None:
    """root/<class>/<i>.png empty files: counting never decodes an image."""
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(b"")


@pytest.fixture
def image_folders() -> Callable[[Path, dict[str, int]], None]:
    """image_folders(root, {"cat": 3, "dog": 2}) makes an ImageFolder tree of empty .png files."""
    return make_image_folders


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_is_not_ignored() -> Iterator[None]:
    """A suite started as a background job (`cmd &`, some CI runners) inherits SIGINT ignored,
    and ftcompile keeps a signal the process was started to ignore ignored. The interrupt
    tests send real SIGINTs: give this process (and, through exec, the processes it starts)
    Python's own Ctrl-C handling, as in a terminal."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
