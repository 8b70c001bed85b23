"""The docs are built, not written twice (STYLE.md, habit 20): docs/reference.md is what the
schema says, and every command output and file the pages show is what the code gives now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ftcompile.plan import Op

ROOT = Path(__file__).resolve().parent.parent


def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_generated_parts_of_the_docs_are_current() -> None:
    assert gen().stale() == [], "run: python docs/gen.py"


def test_every_change_op_is_explained() -> None:
    text = (ROOT / "docs" / "phases.md").read_text()
    assert [op.value for op in Op if f"`{op.value}`" not in text] == []


def test_readme_starts_with_the_two_commands_and_fits_a_first_screen() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2:6] == [
        "```bash",
        'pip install -e ".[test]" && ftcompile run recipes/quickstart.toml',
        "python -m pytest -q",
        "```",
    ]
    assert len(lines) <= 250
