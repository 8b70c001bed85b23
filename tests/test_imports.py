"""The project's modules import one way: no cycles, module-level or inside functions.

A cycle makes a newcomer read two modules to understand either; the pipeline is assembled
in `ftcompile/compiler.py` (compile) and `runtime/rundir.py` (run) so that no stage imports
the stage that calls it (STYLE.md habit 14). Commands that only read files (`runs`, `diff`
of plan files and run directories) never import torch (STYLE.md habit 19).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    """runtime/ installs as ftcompile.runtime; name every file by its installed name."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "runtime":
        parts.insert(0, "ftcompile")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [*ROOT.joinpath("ftcompile").rglob("*.py"), *ROOT.joinpath("runtime").rglob("*.py")]
    return {module_name(f): f for f in files}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `path` imports anywhere in its body (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            # `from ftcompile import arch` names the module ftcompile.arch; a parent package
            # that the importer lives in is not an edge.
            if target in known and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    modules = project_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in imports_of(name, path, set(modules)))
    return graph


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert graph.has_edge("ftcompile.cli", "ftcompile.runtime.rundir")  # a lazy import in cmd_run
    assert graph.has_edge("ftcompile.runtime.rundir", "ftcompile.runtime.loop")


def test_no_import_cycles() -> None:
    cycles = [" -> ".join([*c, c[0]]) for c in nx.simple_cycles(import_graph())]
    assert not cycles, "import cycles: " + "; ".join(sorted(cycles)[:5])


def test_compile_stages_never_import_the_runtime() -> None:
    graph = import_graph()
    for name in graph:
        if name.startswith("ftcompile.") and not name.startswith("ftcompile.runtime") and name != "ftcompile.cli":
            runtime = [t for t in graph.successors(name) if t.startswith("ftcompile.runtime")]
            assert not runtime, f"{name} imports {runtime}: only the CLI's run commands call the runtime"


# ---------------------------------------------------------------- the runtime reads the plan only

RECIPE_LANGUAGE = ("ftcompile.schema", "ftcompile.load", "ftcompile.compiler")
# Justified exceptions, module -> {recipe-language module: why}.
# provenance records the recipe's files (its `extends` chain, with --set merged) in env.json:
# it reads the recipe *file* with the loader, never the schema or the compiler. rundir writes
# env.json (and cost -> calibrate -> provenance); evaluate, export and report open runs
# through rundir.
PROVENANCE = {"ftcompile.load": "provenance reads the recipe files"}
RECIPE_LANGUAGE_EXCEPTIONS = {
    f"ftcompile.runtime.{m}": PROVENANCE for m in ("cost", "rundir", "evaluate", "export", "report")
}
# One fresh interpreter; the third-party libraries are imported once, then each runtime
# module is imported in a forked child of its own, so what it pulls in is its own.
IMPORTED_BY = """
import json, multiprocessing, sys
import numpy, pydantic, torch, torchvision

def imported(name):
    __import__(name)
    return [m for m in {watch!r} if m in sys.modules]

with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
    print(json.dumps(dict(zip({names!r}, pool.map(imported, {names!r}, chunksize=1)))))
"""


def test_the_runtime_reaches_the_recipe_language_only_through_the_plan() -> None:
    """No runtime module imports ftcompile.schema / load / compiler (issue 18 §3): the CLI
    compiles, the runtime gets a Plan (and plain data, e.g. lr-find's paste-in line)."""
    names = sorted(f"ftcompile.runtime.{p.stem}" for p in (ROOT / "runtime").glob("*.py") if p.stem != "__init__")
    script = IMPORTED_BY.format(watch=RECIPE_LANGUAGE, names=names)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert sorted(found) == names
    wrong = {m: [r for r in got if r not in RECIPE_LANGUAGE_EXCEPTIONS.get(m, {})] for m, got in found.items()}
    assert not any(wrong.values()), {m: got for m, got in wrong.items() if got}
    for m, allowed in RECIPE_LANGUAGE_EXCEPTIONS.items():  # an exception no longer needed is dropped
        assert set(allowed) <= set(found[m]), f"{m} no longer imports {set(allowed) - set(found[m])}: drop it"


# ---------------------------------------------------------------- commands that only read files

READS_ONLY = """
import sys
from ftcompile.cli import main
rc = main({argv!r})
assert rc in (0, 1), rc
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
assert not loaded, "torch was imported: " + ", ".join(loaded[:5])
print("ok")
"""


def read_only(argv: list[str], cwd: Path) -> str:
    """`ftcompile ARGV` in a fresh process that fails if torch was imported; its output."""
    proc = subprocess.run(
        [sys.executable, "-c", READS_ONLY.format(argv=argv)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("ok")
    return proc.stdout


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/quickstart/1-* and 2-*: the quickstart's plan and the same with seed = 1, each a
    finished run as far as the readers go (plan.json, env.json, summary.json written by the
    runtime's own writers; nothing trained)."""
    from ftcompile.runtime.status import RunStatus

    from ftcompile.compiler import compile_checked
    from ftcompile.options import CompileOptions

    root = tmp_path_factory.mktemp("reads")
    for n, overrides in ((1, ()), (2, ("seed=1",))):
        plan = compile_checked(ROOT / "recipes" / "quickstart.toml", CompileOptions(overrides=overrides)).plan
        run_dir = root / "runs" / "quickstart" / f"{n}-{plan.hash[:8]}"
        run_dir.mkdir(parents=True)
        (run_dir / "plan.json").write_text(plan.to_json() + "\n")
        (run_dir / "env.json").write_text(json.dumps({"data_root": str(root)}))
        RunStatus(run_dir, plan).write("finished")
    return root


def test_runs_does_not_import_torch(two_runs: Path) -> None:
    out = read_only(["runs", "runs"], two_runs)
    assert out.count("finished") == 2 and "quickstart" in out


def test_diff_of_plan_files_and_run_directories_does_not_import_torch(two_runs: Path) -> None:
    a, b = sorted((two_runs / "runs" / "quickstart").iterdir())
    for old, new in ((a, b), (a / "plan.json", b / "plan.json")):
        out = read_only(["diff", str(old), str(new)], two_runs)
        assert "seed: 0 -> 1" in out
    assert "the plans are equal" in read_only(["diff", str(a), str(a / "plan.json")], two_runs)
