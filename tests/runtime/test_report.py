"""`ftcompile report`, curves.png and the report line at the end of `ftcompile run`."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import pytest
from ftcompile.runtime.report import SECTIONS
from PIL import Image
from runtime_helpers import cli

pytestmark = pytest.mark.slow


def test_run_ends_with_curves_and_report_command(used_run: tuple[Path, str]) -> None:
    run_dir, printed = used_run
    with Image.open(run_dir / "curves.png") as im:
        assert im.size[0] > 300
    assert f"report: ftcompile report {run_dir}" in printed
    assert printed.strip().splitlines()[-1] == str(run_dir)


def test_report_sections_and_images(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = used_run
    # A second run directory to overlay: a copy of the first (same plan, same curves).
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other)
    out = tmp_path / "report.html"
    r = cli(capsys, "report", run_dir, other, "-o", out)
    assert r.rc == 0, r.err
    text = out.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in text, section
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text  # no network
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 5  # curves, LR x2, confusion x2
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            assert im.size[0] > 100
    for phase in ("warm", "full"):
        assert phase in text
    assert "finished" in text and "torch" in text


def test_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "report", tmp_path)
    assert r.rc == 2 and "not a run directory" in r.err and not (tmp_path / "report.html").exists()
