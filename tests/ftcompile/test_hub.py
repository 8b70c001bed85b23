"""Pretrained weights without a network: which file, where, with which hash; `check` says so,
`ftcompile weights` says so and downloads. A fake weights file in a temporary TORCH_HOME
stands for the real one: no test downloads anything."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from ftcompile import hub
from ftcompile.cli import main

RESNET18 = "resnet18-f37072fd.pth"  # torchvision's file name: the sha256 starts with f37072fd

RECIPE = """\
name = "pretrained"

[model]
arch = "resnet18"
weights = "{weights}"
num_classes = 3

[data]
builtin = "digits"
classes = ["0", "1", "2"]
image_size = 16
batch_size = 16

[phases.only]
train = ["head"]
steps = 2
lr = {{ head = 0.01 }}
"""


CALLS: list[tuple[str, str, str | None, bool]] = []  # torch.hub.download_url_to_file's calls


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and a downloader that fails as without a network."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(hub.NO_DOWNLOAD_ENV, raising=False)
    CALLS.clear()

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        CALLS.append((url, dst, hash_prefix, progress))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def _recipe(tmp_path: Path, weights: str = "IMAGENET1K_V1") -> Path:
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(weights=weights))
    return path


def test_hub_dir_is_torchs_rule_without_torch(tmp_path: Path) -> None:
    code = "import sys; from ftcompile import hub; print(hub.hub_dir()); print('torch' in sys.modules)"
    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        base = {k: v for k, v in __import__("os").environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
        out = subprocess.run(
            [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True
        )
        ours, imported = out.stdout.split()
        theirs = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.hub.get_dir())"],
            env={**base, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert ours == theirs and imported == "False", env


def test_missing_names_file_folder_url_and_hash(torch_home: Path) -> None:
    cached = hub.locate("resnet18", "IMAGENET1K_V1")
    assert cached.file == torch_home / "hub" / "checkpoints" / RESNET18
    assert cached.hash_prefix == "f37072fd" and not cached.present()
    text = str(cached.missing())
    assert f"{torch_home / 'hub' / 'checkpoints' / RESNET18} is missing" in text
    assert "https://download.pytorch.org/models/" + RESNET18 in text and "sha256 starts with f37072fd" in text
    assert "ftcompile weights resnet18.IMAGENET1K_V1" in text
    # DEFAULT is the member it stands for: the same file
    assert hub.locate("resnet18", "DEFAULT").file == cached.file


def test_check_warns_and_require_data_fails(
    torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path)
    assert main(["check", str(recipe)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok ") and f"warning: {recipe}: model.weights:" in err and RESNET18 in err
    assert main(["check", "--require-data", str(recipe)]) == 2
    out, _ = capsys.readouterr()
    assert out.startswith("FAIL ") and RESNET18 in out and str(torch_home) in out
    # the file there: no warning, and no error
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / RESNET18).write_bytes(b"x")
    assert main(["check", "--require-data", str(recipe)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert CALLS == []  # check never downloads


def test_check_is_silent_for_weights_that_need_no_download(
    torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--require-data", str(_recipe(tmp_path, "none"))]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "name",
    [
        "resnet18.IMAGENET1K_V1",
        "resnet18:IMAGENET1K_V1",
        "ResNet18_Weights.IMAGENET1K_V1",
        "resnet18",
        "ResNet18_Weights.DEFAULT",
    ],
)
def test_weights_command_no_download(name: str, torch_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", name, "--no-download"]) == 1
    out = capsys.readouterr().out
    assert f"file     {torch_home / 'hub' / 'checkpoints' / RESNET18}" in out
    assert "sha256   f37072fd..." in out and "status   missing" in out and "to use it: download https://" in out
    assert CALLS == []


def test_weights_command_offline_is_exit_2_with_where_to_put_it(
    torch_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "resnet18.IMAGENET1K_V1"]) == 2
    err = capsys.readouterr().err
    assert (
        "the download failed (URLError" in err
        and f"put it in {torch_home / 'hub' / 'checkpoints'}/ as {RESNET18}" in err
    )
    ((url, dst, prefix, progress),) = CALLS
    assert url.endswith(RESNET18) and dst == str(torch_home / "hub" / "checkpoints" / RESNET18)
    assert prefix == "f37072fd" and progress is True  # torch checks the hash; a progress bar


def test_weights_command_downloads(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = b"fake weights"
    digest = hashlib.sha256(payload).hexdigest()

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        Path(dst).write_bytes(payload)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert main(["weights", "resnet18.IMAGENET1K_V1"]) == 0
    out = capsys.readouterr().out
    # the fake file's hash is not torchvision's: said, not hidden
    assert "status   present" in out and "does NOT match" in out
    assert main(["weights", "resnet18.IMAGENET1K_V1"]) == 0  # present now: nothing downloaded again
    assert not digest.startswith("f37072fd")


def test_no_download_environment(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(hub.NO_DOWNLOAD_ENV, "1")
    assert main(["weights", "resnet18"]) == 2
    assert f"{hub.NO_DOWNLOAD_ENV} is set: no download was tried" in capsys.readouterr().err
    assert CALLS == []


def test_weights_command_reads_a_recipe(torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", str(_recipe(tmp_path)), "--no-download"]) == 1
    assert "weights  resnet18 IMAGENET1K_V1" in capsys.readouterr().out
    assert main(["weights", str(_recipe(tmp_path, "none"))]) == 0
    assert "nothing to download" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, message", [("resnet99", "unknown architecture"), ("resnet18.IMAGENET1K_V9", "did you mean")]
)
def test_weights_command_bad_names(name: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", name]) == 2
    assert message in capsys.readouterr().err
