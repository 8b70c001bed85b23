"""The code review's numbers (issue 18), measured on the source, not by hand.

    python benchmarks/review_numbers.py               # the working tree
    python benchmarks/review_numbers.py --rev db155aa # any commit (read with git show)
    python benchmarks/review_numbers.py --list        # also every place counted

Prints:
- plan fields: every field of the dataclass records in ftcompile/plan.py, classified by its
  annotation: untyped (it mentions `Any`, or is a bare `dict` / `list`), a mapping with typed
  keys and values (group -> LR window, a user's builder kwargs as JSON values), or typed
  (scalars, tuples, nested records). The review counted the first two together ("dict/Any");
- string-key reads of plan data in ftcompile/ and runtime/: a subscript with a string
  constant (`x["op"]`) or a `.get("...")` whose object is a plan field that was a dict at
  the review (`ph.cache`, `ph.scheduler`, `run.ema`, `phase.data`, `change.value`, ...),
  a local name bound to one (`pd = phase.data`), or a name that held a plan dict at the
  review (`change`, `spec`, `pd`, `weights`). A heuristic: `--list` shows each place;
- the 10 longest functions of ftcompile/ and runtime/ (lines from `def` to the last line);
- imports made inside functions, with and without a reason: an import counts as "with
  reason" when its own line or the line above it carries a comment.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ftcompile", "runtime")
PLAN_FILE = "ftcompile/plan.py"

# Fields of the plan (and of the compiler's Resolved records that become it) that were dicts
# read by string key at the review (commit db155aa): reads through them are what is counted.
PLAN_DICT_FIELDS = {
    "head",
    "builder_args",
    "augment",
    "mix",
    "split_files",
    "kwargs",
    "ema",
    "values",
    "lr",
    "scheduler",
    "cache",
    "stop_early",
    "data",
    "value",
    "recipe",
    "groups",
    "versions",
    "model",
    "optimizer",
    "trials",
    "run_extra",
    "weights",
    "plan",
}
# Names that held a plan dict at the review, and the files where they did: the executor's
# change dict and scheduler spec, the mix and EMA specs, a phase's data dict, a weights dict,
# a plan.json read as a dict.
PLAN_DICT_NAMES = {
    "change": {"ftcompile/apply.py"},
    "spec": {"ftcompile/apply.py", "runtime/ema.py", "runtime/mix.py"},
    "pd": {"ftcompile/render.py", "runtime/loop.py"},
    "weights": {"ftcompile/resolve.py", "ftcompile/plan.py", "runtime/rundir.py"},
    "p": {"runtime/lr_find.py"},  # lr-find --from reads the run's plan.json as a dict
    "c": {"runtime/lr_find.py"},
}


def sources(rev: str | None) -> dict[str, str]:
    """path -> text of every .py file under the packages, at `rev` or in the working tree."""
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text() for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "--", *PACKAGES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for n in names
        if n.endswith(".py")
    }


# ---------------------------------------------------------------- plan fields


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if (isinstance(target, ast.Name) and target.id == "dataclass") or (
            isinstance(target, ast.Attribute) and target.attr == "dataclass"
        ):
            return True
    return False


def classify(annotation: str) -> str:
    """untyped: it says `Any` (or is a bare dict / list); mapping: a dict or Mapping whose keys
    and values are typed (group -> LR window, a user's builder kwargs as JSON values); typed:
    the rest (scalars, tuples, nested records)."""
    words = set(annotation.replace("[", " ").replace("]", " ").replace(",", " ").replace("|", " ").split())
    if "Any" in words or annotation.strip() in ("dict", "list", "object"):
        return "untyped"
    if words & {"dict", "Mapping", "JSONObject"}:  # JSONObject: plan.py's dict[str, JSONValue]
        return "mapping"
    return "typed"


def plan_fields(text: str) -> list[tuple[str, str, str]]:
    """(record.field, annotation, class) for every annotated field of every dataclass."""
    out = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and _is_dataclass(node):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    if "ClassVar" in ast.unparse(item.annotation):
                        continue
                    ann = ast.unparse(item.annotation)
                    out.append((f"{node.name}.{item.target.id}", ann, classify(ann)))
    return out


# ---------------------------------------------------------------- string-key reads


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _plan_dict_expr(node: ast.expr, aliases: set[str], path: str) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in PLAN_DICT_FIELDS
    if isinstance(node, ast.Name):
        return node.id in aliases or path in PLAN_DICT_NAMES.get(node.id, ())
    if isinstance(node, ast.Subscript):  # ph.scheduler["args"]["x"]: the outer read counts too
        return _string_key(node) is not None and _plan_dict_expr(node.value, aliases, path)
    if isinstance(node, ast.BoolOp):  # (ph.scheduler or {}).get("type")
        return any(_plan_dict_expr(v, aliases, path) for v in node.values)
    return False


def _element_aliases(target: ast.expr, it: ast.expr, aliases: set[str], path: str) -> set[str]:
    """Loop variables that hold plan dicts: `for g in plan.groups` (g), `for g, v in ph.lr.items()` (v)."""
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("items", "values"):
        if not _plan_dict_expr(it.func.value, aliases, path):
            return set()
        if it.func.attr == "values" and isinstance(target, ast.Name):
            return {target.id}
        if isinstance(target, ast.Tuple) and len(target.elts) == 2 and isinstance(target.elts[1], ast.Name):
            return {target.elts[1].id}
        return set()
    if isinstance(it, ast.Attribute) and it.attr in ("groups", "augment") and isinstance(target, ast.Name):
        return {target.id}  # tuples / lists of dicts
    return set()


def _scope(node: ast.AST) -> list[ast.AST]:
    """The nodes of a module or function body, not those of the functions defined in it."""
    out = []
    todo = list(ast.iter_child_nodes(node))
    while todo:
        n = todo.pop()
        out.append(n)
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(n))
    return out


def _string_key(node: ast.Subscript) -> str | None:
    s = node.slice
    return s.value if isinstance(s, ast.Constant) and isinstance(s.value, str) else None


def string_key_reads(path: str, text: str) -> list[str]:
    tree = ast.parse(text)
    found: set[tuple[int, int]] = set()
    out = []
    for fn in [tree, *_functions(tree)]:
        nodes = _scope(fn)
        aliases = set()
        for node in nodes:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if _plan_dict_expr(node.value, set(), path):
                    aliases.add(node.targets[0].id)
            elif isinstance(node, (ast.For, ast.comprehension)):
                aliases |= _element_aliases(node.target, node.iter, aliases, path)
        for node in nodes:
            hit = None
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _string_key(node) is not None:
                if _plan_dict_expr(node.value, aliases, path):
                    hit = f"[{_string_key(node)!r}]"
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and _plan_dict_expr(node.func.value, aliases, path)
            ):
                hit = f".get({node.args[0].value!r})"
            if hit and (node.lineno, node.col_offset) not in found:
                found.add((node.lineno, node.col_offset))
                out.append(f"{path}:{node.lineno}: {ast.unparse(node)[:90]}")
    return sorted(out, key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


# ---------------------------------------------------------------- functions and imports


def longest_functions(path: str, text: str) -> list[tuple[int, str]]:
    tree = ast.parse(text)
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append((child.end_lineno - child.lineno + 1, f"{path}:{child.lineno} {name}"))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _comment_lines(text: str) -> set[int]:
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            lines.add(tok.start[0])
    return lines


def function_imports(path: str, text: str) -> list[tuple[bool, str]]:
    """(has a reason, place) for each import statement inside a function."""
    tree = ast.parse(text)
    comments = _comment_lines(text)
    seen: set[int] = set()
    out = []
    for fn in _functions(tree):
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno not in seen:
                seen.add(node.lineno)
                reason = bool({node.lineno, node.lineno - 1} & comments)
                out.append((reason, f"{path}:{node.lineno}: {ast.unparse(node)}"))
    return out


# ---------------------------------------------------------------- report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", help="a git commit to measure instead of the working tree")
    ap.add_argument("--list", action="store_true", help="print every place counted")
    args = ap.parse_args()
    files = sources(args.rev)
    where = f"commit {args.rev}" if args.rev else "the working tree"
    print(f"issue 18 review numbers, {where}\n")

    pf = plan_fields(files[PLAN_FILE])
    kinds = {k: [f for f in pf if f[2] == k] for k in ("typed", "mapping", "untyped")}
    print(
        f"plan fields ({PLAN_FILE} dataclasses): {len(pf)}; dict / Any (the review's measure) "
        f"{len(kinds['mapping']) + len(kinds['untyped'])}: of which untyped (Any) {len(kinds['untyped'])}, "
        f"mappings with typed keys and values {len(kinds['mapping'])}; records and scalars {len(kinds['typed'])}"
    )
    for kind in ("untyped", "mapping"):
        for name, ann, _ in kinds[kind]:
            print(f"  {kind:<12} {name}: {ann}")

    reads = [r for path, text in files.items() for r in string_key_reads(path, text)]
    print(f"\nstring-key reads of plan data in ftcompile/ and runtime/: {len(reads)}")
    per_file: dict[str, int] = {}
    for r in reads:
        per_file[r.split(":")[0]] = per_file.get(r.split(":")[0], 0) + 1
    print("  " + ", ".join(f"{p} {n}" for p, n in sorted(per_file.items(), key=lambda x: -x[1])))
    if args.list:
        for r in reads:
            print(f"    {r}")

    fns = sorted((f for path, text in files.items() for f in longest_functions(path, text)), reverse=True)
    lengths = sorted(n for n, _ in fns)
    print(f"\nfunctions: {len(fns)}, median {lengths[len(lengths) // 2]} lines; the 10 longest:")
    for n, place in fns[:10]:
        print(f"  {n:>4}  {place}")

    imports = [i for path, text in files.items() for i in function_imports(path, text)]
    with_reason = [p for r, p in imports if r]
    without = [p for r, p in imports if not r]
    print(f"\nimports inside functions: {len(imports)}; with a reason {len(with_reason)}, without {len(without)}")
    if args.list:
        for p in without:
            print(f"    no reason: {p}")
        for p in with_reason:
            print(f"    reason:    {p}")


if __name__ == "__main__":
    main()
