"""`run.reproducible = "portable"`, the compiler's side: what it accepts, what the plan says,
the pinned environment, and what rerun / resume say about another machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcompile import portable
from ftcompile.cli import main
from ftcompile.compiler import compile_recipe
from ftcompile.errors import RecipeError


def _write(tmp_path: Path, tiny: str, run: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(tiny + f"\n[run]\n{run}\n")
    return path


def test_machine_is_the_default_and_keeps_the_hash(tmp_path: Path, tiny: str) -> None:
    (tmp_path / "plain.toml").write_text(tiny)
    plain = compile_recipe(tmp_path / "plain.toml")
    explicit = compile_recipe(_write(tmp_path, tiny, 'reproducible = "machine"'))
    # the same plan but for the recipe's own text (its source hash)
    assert {**explicit.to_dict(), "recipe": None} == {**plain.to_dict(), "recipe": None}
    assert "reproducible" not in plain.to_dict()["run"]


def test_portable_is_in_the_plan_and_runs_on_the_cpu(tmp_path: Path, tiny: str) -> None:
    plan = compile_recipe(_write(tmp_path, tiny, 'reproducible = "portable"'))
    assert plan.run.reproducible == "portable" and plan.to_dict()["run"]["reproducible"] == "portable"
    assert plan.run.device == "cpu"  # device "auto" means the CPU for a portable run
    (tmp_path / "plain.toml").write_text(tiny)
    assert plan.hash != compile_recipe(tmp_path / "plain.toml").hash


@pytest.mark.parametrize(
    "run, clash",
    [
        ('device = "cuda"', 'device = "cuda"'),
        ('precision = "bf16"', 'precision = "bf16"'),
        ("compile = true", "compile = true"),
        ("deterministic = false", "deterministic = false"),
    ],
)
def test_portable_refuses_what_it_cannot_pin(
    tmp_path: Path, tiny: str, run: str, clash: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _write(tmp_path, tiny, f'reproducible = "portable"\n{run}')
    assert main(["check", str(recipe)]) == 2
    out = capsys.readouterr().out
    assert 'run: reproducible = "portable" pins CPU kernels; it cannot go with ' + clash in out


def test_an_upstream_recipe_must_be_portable_too(tmp_path: Path, tiny: str) -> None:
    up = tmp_path / "up.toml"
    up.write_text(tiny.replace('name = "tiny"', 'name = "up"'))
    child = tiny.replace("num_classes = 10", 'num_classes = 10\nweights = "up.toml"')
    recipe = _write(tmp_path, child, 'reproducible = "portable"')
    with pytest.raises(RecipeError, match="the upstream recipe up.toml is not portable") as err:
        compile_recipe(recipe)
    assert err.value.key == "run.reproducible" and "in up.toml too" in (err.value.suggestion or "")
    up.write_text(up.read_text() + '\n[run]\nreproducible = "portable"\n')
    assert compile_recipe(recipe).model.weights.plan["run"]["reproducible"] == "portable"


def test_pinned_environment_overrides_the_callers() -> None:
    caller = {
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "OMP_NUM_THREADS": "8",
        "HOME": "/h",
    }
    assert not portable.pinned(caller)
    env = portable.pinned_environment(caller)
    assert portable.pinned(env) and env["HOME"] == "/h"
    assert (env["ATEN_CPU_CAPABILITY"], env["ONEDNN_MAX_CPU_ISA"], env["OMP_NUM_THREADS"]) == ("avx2", "AVX2", "1")


def test_no_restart_for_a_machine_plan_or_a_pinned_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert portable.restart_pinned("machine", ["run", "x.toml"]) is None
    for k, v in portable.PINS.items():
        monkeypatch.setenv(k, v)
    assert portable.restart_pinned("portable", ["run", "x.toml"]) is None


def test_enter_refuses_an_unpinned_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    portable.enter("machine")  # nothing to check
    with pytest.raises(RecipeError, match="ATEN_CPU_CAPABILITY=avx2"):
        portable.enter("portable")


MACHINE = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "threads": 2, "cuda": None, "cudnn": None, "gpu": None}


def test_machine_mode_says_bitwise_equality_cannot_be_expected() -> None:
    now = {**MACHINE, "cpu": "AMD EPYC", "cpu_capability": "AVX2"}
    generic = ["warning: results are bitwise equal only on the same kind of machine; here differs: ..."]
    (line,) = portable.machine_warnings("machine", {"machine": MACHINE}, now, generic)
    assert line.startswith(generic[0]) and "bitwise equality cannot be expected" in line and '"portable"' in line
    # only the CPU model differs: the generic line as it was
    assert portable.machine_warnings("machine", {"machine": MACHINE}, {**MACHINE, "cpu": "x"}, generic) == generic


def test_portable_mode_says_bitwise_equality_is_expected() -> None:
    then = {**MACHINE, "cpu_capability": "AVX2", "threads": 1}
    (line,) = portable.machine_warnings("portable", {"machine": then}, {**then, "cpu": "AMD EPYC"}, ["generic"])
    assert (
        line.startswith("note: portable run: another CPU (Intel Xeon -> AMD EPYC)") and "equality is expected" in line
    )
    assert portable.machine_warnings("portable", {"machine": then}, dict(then), ["generic"]) == []
    (line,) = portable.machine_warnings("portable", {"machine": then}, {**then, "cpu_capability": "DEFAULT"}, [])
    assert "cpu_capability 'AVX2' -> 'DEFAULT'" in line and "cannot be expected" in line
