"""torchvision's pretrained weights on a machine that may have no network.

torchvision loads `weights = "IMAGENET1K_V2"` from torch's hub cache,
`$TORCH_HOME/hub/checkpoints/<file name of the URL>`, and downloads the file there when it is
absent. Where nothing can be downloaded (a cluster node, an air-gapped machine, a CI runner)
the user must put the file there themselves, so every message names the file, the folder,
the URL it comes from and the hash it must have: torch's convention puts the first hex
digits of the file's sha256 in its name (`resnet50-11ad3fa6.pth`), and torch checks them
after a download.

`check` warns when a recipe's weights are absent (an error with `--require-data`), `run`
fetches or fails before it makes a run directory, and `ftcompile weights NAME` prints all of
it and downloads with a progress bar. FTCOMPILE_NO_DOWNLOAD=1 forbids downloads (the run then
fails with the message), for machines where a download must not be tried.

Compile-side: the URL comes from the recorded torchvision table, the cache folder from
torch's own rule (`torch.hub.get_dir`) without importing torch; torch is imported only to
download.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.plan import ModelSpec

NO_DOWNLOAD_ENV = "FTCOMPILE_NO_DOWNLOAD"
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub.HASH_REGEX: the sha256 prefix in a file name
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a network that drops packets fails, not hangs


def hub_dir() -> Path:
    """torch.hub.get_dir(): $TORCH_HOME/hub, TORCH_HOME defaulting to $XDG_CACHE_HOME/torch
    (~/.cache/torch). Once torch is imported, torch itself is asked (torch.hub.set_dir)."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


@dataclass(frozen=True)
class HubWeights:
    """One torchvision weights member and where torch keeps its file."""

    arch: str
    name: str  # as the recipe gives it: a member name or "DEFAULT"
    url: str

    @property
    def file(self) -> Path:
        return hub_dir() / "checkpoints" / self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str | None:
        """The leading hex digits of the file's sha256, from its name (None: the name has none)."""
        match = HASH_IN_NAME.search(self.file.name)
        return match.group(1) if match and match.group(1) else None

    @property
    def label(self) -> str:
        return f"{self.arch} {self.name}"

    def present(self) -> bool:
        return self.file.is_file()

    def where_to_put_it(self) -> str:
        """The lines that say what to download and where to put it."""
        digest = f" (its sha256 starts with {self.hash_prefix})" if self.hash_prefix else ""
        return (
            f"download {self.url}{digest} and put it in {self.file.parent}/ as {self.file.name} "
            "(that folder is $TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch)"
        )

    def short_note(self) -> str:
        """One line: absent, and the command that fetches it or says where it goes."""
        return (
            f"{self.label} not in torch's hub cache ({self.file}); "
            f"`ftcompile weights {self.arch}.{self.name}` downloads it or says where to put it"
        )

    def missing(self) -> RecipeError:
        return RecipeError(
            f"the pretrained weights {self.label} are not in torch's hub cache: {self.file} is missing",
            key="model.weights",
            suggestion=f"{self.where_to_put_it()}; where the network is reachable, "
            f"`ftcompile weights {self.arch}.{self.name}` downloads it",
        )


def locate(arch: str, name: str) -> HubWeights:
    """The hub file of `model.weights = name` for `arch` (a name the compiler accepted)."""
    from ftcompile import arch as archs  # imports torch: hub_dir and of_model serve the compiler without it

    return HubWeights(arch, name, archs.weights_url(arch, name))


def of_model(model: ModelSpec) -> HubWeights | None:
    """The hub weights a plan's model starts from, or None (a file, an upstream run, none)."""
    if model.weights.kind != "torchvision" or model.weights.value is None:
        return None
    return locate(model.arch, model.weights.value)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(weights: HubWeights, progress: bool = True) -> None:
    """torch.hub.download_url_to_file into the cache, checking the hash prefix of the name;
    any failure (no network, timeout, a wrong hash) is the `missing` message with its cause."""
    if os.getenv(NO_DOWNLOAD_ENV, "") not in ("", "0"):
        err = weights.missing()
        err.message += f" ({NO_DOWNLOAD_ENV} is set: no download was tried)"
        raise err

    import torch  # only to download: torch's downloader checks the hash and writes atomically

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        weights.file.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {weights.url} to {weights.file}", file=sys.stderr, flush=True)
        torch.hub.download_url_to_file(weights.url, str(weights.file), weights.hash_prefix, progress=progress)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:  # no network, timeout, hash mismatch
        err = weights.missing()
        err.message += f"; the download failed ({type(exc).__name__}: {exc})"
        raise err from None
    finally:
        socket.setdefaulttimeout(previous)


def ensure(weights: HubWeights, progress: bool = False) -> None:
    """The file is in the cache afterwards, or a RecipeError says which file and where."""
    if not weights.present():
        download(weights, progress=progress)


# ---------------------------------------------------------------- `ftcompile weights NAME`


def parse_name(text: str) -> tuple[str, str]:
    """`resnet50`, `resnet50.IMAGENET1K_V2`, `resnet50:IMAGENET1K_V2` or torchvision's own
    `ResNet50_Weights.IMAGENET1K_V2` -> (arch, weights name); the arch alone means DEFAULT."""
    from ftcompile import arch as archs  # imports torch: hub_dir and of_model serve the compiler without it

    head, _, member = text.replace(":", ".").partition(".")
    arch = head
    if head.endswith("_Weights"):  # torchvision's enum name: ResNet50_Weights -> resnet50
        wanted = head[: -len("_Weights")].lower().replace("_", "")
        arch = next((a for a in archs.arches() if a.replace("_", "") == wanted), head)
    try:
        valid = archs.valid_weights(arch)
    except RecipeError as err:
        raise RecipeError(
            f"{text!r}: {err.message}",
            key="NAME",
            suggestion="ARCH or ARCH.WEIGHTS, e.g. resnet50.IMAGENET1K_V2, or a recipe .toml",
        ) from None
    name = member or "DEFAULT"
    if name not in valid:
        raise RecipeError(
            f"{arch} has no weights {name!r}",
            key="NAME",
            suggestion=did_you_mean(name, valid) or f"{arch} has: {', '.join(valid)}",
        )
    return arch, name


def describe(weights: HubWeights) -> list[str]:
    """What `ftcompile weights` prints: the file, the folder, the URL, the hash, and whether
    the cached file is there (and matches its hash prefix)."""
    lines = [
        f"weights  {weights.label}",
        f"url      {weights.url}",
        f"file     {weights.file}",
        f"sha256   {weights.hash_prefix or '(no hash in the file name)'}...",
    ]
    if not weights.present():
        lines.append("status   missing")
        return lines
    size = weights.file.stat().st_size
    if weights.hash_prefix:
        ok = file_sha256(weights.file).startswith(weights.hash_prefix)
        verdict = "its sha256 matches" if ok else "its sha256 does NOT match: a partial or different file; delete it"
    else:
        verdict = "no hash to check"
    lines.append(f"status   present, {size / 2**20:.1f} MiB, {verdict}")
    return lines
