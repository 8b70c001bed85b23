"""Stage 7: the command line. One small function per subcommand; user errors exit 2.

Nothing heavy is imported at module level: `ftcompile --help` and `ftcompile check --help`
must not import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ftcompile.errors import RecipeError

EPILOG = """examples:
  ftcompile plan recipes/quickstart.toml                 show what will happen, step by step
  ftcompile plan r.toml --trace lr.csv --plot lr.png      LR of every param group at every step
  ftcompile plan r.toml -o plan.json                      compile here, run elsewhere
  ftcompile check recipes/*.toml                          validate many recipes
  ftcompile run recipes/quickstart.toml                   compile and train
  ftcompile resume runs/quickstart/1-ab12cd34             continue after an interruption
  ftcompile rerun runs/quickstart/1-ab12cd34              repeat a run from its stored plan
"""


def _sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset-size", type=int, metavar="N", help="train images, when data.train is not on this machine")
    p.add_argument("--val-size", type=int, metavar="N", help="validation images (with --dataset-size)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftcompile",
        description="Compile a fine-tuning recipe (TOML) into an execution plan, then run it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plan", help="compile a recipe and show the plan", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="recipe .toml")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("-o", "--output", metavar="PLAN.json", help="write the plan to a file")
    p.add_argument("--trace", metavar="LR.csv", help="write the LR of every param group at every step")
    p.add_argument("--plot", metavar="LR.png", help="draw the LR curves (needs matplotlib)")
    p.add_argument("--all-changes", action="store_true", help="list every change, not only the first 200")
    _sizes(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("check", help="validate recipes; one line each", epilog="example: ftcompile check recipes/*.toml")
    p.add_argument("recipes", nargs="+", help="recipe .toml files")
    _sizes(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("schema", help="print the recipe JSON Schema", epilog="example: ftcompile schema > recipes/recipe.schema.json")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("run", help="compile (if given a recipe) and train", epilog="example: ftcompile run recipes/quickstart.toml")
    p.add_argument("source", help="recipe .toml or plan .json")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>/<n>-<hash8>)")
    p.add_argument("--data-root", metavar="DIR", help="folder that data paths are relative to (default: the recipe's folder; for a plan.json, the current folder)")
    p.add_argument("--nproc", type=int, metavar="N", help="train on N processes (GPUs) through torchrun + DDP")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a run from its newest checkpoint", epilog="example: ftcompile resume runs/quickstart/1-ab12cd34")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("rerun", help="repeat a run from its stored plan", epilog="example: ftcompile rerun runs/quickstart/1-ab12cd34 --out /tmp/again")
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="DIR")
    p.set_defaults(func=cmd_rerun)
    return parser


def _compile(path: str, args: argparse.Namespace):
    from ftcompile.compiler import compile_recipe

    return compile_recipe(path, getattr(args, "dataset_size", None), getattr(args, "val_size", None))


def cmd_plan(args: argparse.Namespace) -> int:
    from ftcompile import render

    plan = _compile(args.recipe, args)
    if args.output:
        Path(args.output).write_text(plan.to_json() + "\n")
    if args.trace or args.plot:
        from ftcompile.trace import lr_trace

        rows = lr_trace(plan)
        if args.trace:
            Path(args.trace).write_text(render.trace_csv(plan, rows))
        if args.plot:
            render.plot(plan, rows, Path(args.plot))
    if args.json:
        print(plan.to_json())
    else:
        print(render.render(plan, max_changes=10**9 if args.all_changes else 200))
        for what, path in (("plan", args.output), ("trace", args.trace), ("plot", args.plot)):
            if path:
                print(f"wrote {what}: {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.recipes:
        try:
            plan = _compile(path, args)
        except RecipeError as err:
            failed += 1
            first, *rest = str(err).splitlines()
            print(f"FAIL {first}" + "".join(f"\n     {line}" for line in rest))
        else:
            print(f"ok   {path}: {len(plan.phases)} phases, {plan.total_steps} steps, plan {plan.hash[:12]}")
    return 2 if failed else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ftcompile.schema import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ftcompile.plan import Plan

    if args.nproc and args.nproc > 1:
        from ftcompile.runtime.distributed import launch

        argv = ["run", args.source] + [f"--{k.replace('_', '-')}={v}" for k, v in (("out", args.out), ("data_root", args.data_root)) if v]
        return launch(args.nproc, argv)

    source = Path(args.source)
    if source.suffix == ".json":
        plan, recipe_path = Plan.load(source), None
        root = Path(args.data_root) if args.data_root else Path.cwd()
    else:
        plan, recipe_path = _compile(str(source), args), source
        root = Path(args.data_root) if args.data_root else source.parent
    from ftcompile.runtime.rundir import start_run

    return start_run(plan, recipe_path, root, Path(args.out) if args.out else None)


def cmd_resume(args: argparse.Namespace) -> int:
    from ftcompile.runtime.rundir import resume_run

    return resume_run(Path(args.run_dir))


def cmd_rerun(args: argparse.Namespace) -> int:
    from ftcompile.runtime.rundir import rerun_run

    return rerun_run(Path(args.run_dir), Path(args.out) if args.out else None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from ftcompile import __version__

        print(f"ftcompile {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ftcompile plan r.toml | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
