"""Write the torchvision table that `ftcompile plan` reads instead of importing torchvision.

    python -m ftcompile.tv_record            # ftcompile/tables/torchvision-<installed release>.zip

Run it once per torchvision release (after raising the version bound in pyproject.toml) and
commit the file; tests/ftcompile/test_tv_table.py then checks the table against the
installed torchvision. The zip is deterministic: the same torchvision gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torchvision

from ftcompile import arch as archs
from ftcompile import datasets, tv_table

_STAMP = (2020, 1, 1, 0, 0, 0)  # fixed member dates: regenerating gives identical bytes


def weights_record(arch: str) -> dict[str, Any]:
    """Every weights name of an arch, with the mean/std its transforms normalise with, the
    URL its file downloads from (the hub cache's file name; `check` says when it is absent)
    and its evaluation sizes (`ftcompile init` writes them)."""
    names = archs.valid_weights(arch)
    return {
        "names": names,
        "stats": {name: list(map(list, archs.weights_stats(arch, name))) for name in names},
        "urls": {name: archs.weights_url(arch, name) for name in names},
        "sizes": {name: list(archs.weights_sizes(arch, name)) for name in names},
    }


def record() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(index, {arch: model record}) of the installed torchvision, asked live."""
    names = archs.arches()
    index = {
        "torchvision": torchvision.__version__,
        "arches": names,
        "weights": {arch: weights_record(arch) for arch in names},
        "transforms": {name: datasets.signature_record(cls) for name, cls in sorted(datasets.augment_ops().items())},
        "builder_args": {arch: archs.builder_arg_names(arch) for arch in names},
        "rates": {
            arch: tv_table.rates_record(
                lambda args, a=arch: archs.torchvision_model(a, builder_args=args), archs.builder_arg_names(arch)
            )
            for arch in names
        },
    }
    models = {arch: tv_table.describe(archs.torchvision_model(arch)) for arch in names}
    return index, models


def write(path: Path, index: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    members = {"index.json": index, **{f"models/{arch}.json": rec for arch, rec in models.items()}}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, help="default: ftcompile/tables/torchvision-<release>.zip")
    args = parser.parse_args(argv)

    os.environ[tv_table.LIVE_ENV] = "1"  # ask torchvision, never an older table
    tv_table.table.cache_clear()
    archs.arches.cache_clear()
    index, models = record()
    path = args.output or tv_table.table_path(index["torchvision"])
    write(path, index, models)
    print(f"wrote {path} ({len(models)} models, {path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
