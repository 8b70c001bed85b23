"""Stage 7: the command line. One small function per subcommand; user errors exit 2.

Nothing heavy is imported at module level: `ftcompile --help` and `ftcompile check --help`
must not import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ftcompile import __version__, outputs, portable
from ftcompile.errors import RecipeError, os_error
from ftcompile.options import CompileOptions
from ftcompile.runtime.formats import FORMATS
from ftcompile.signals import exit_code, raised_as_interrupts

DIFF_EPILOG = """examples:
  ftcompile diff HEAD:recipes/r.toml recipes/r.toml       what the uncommitted edit changes
  ftcompile diff main:recipes/r.toml HEAD:recipes/r.toml  what a branch changes
  ftcompile diff runs/r/1-ab12cd34 recipes/r.toml         a finished run against the recipe now
  ftcompile diff old.json new.json --json                 for machines
exit status: 0 the plans are equal, 1 they differ, 2 error
"""

CHECK_EPILOG = """examples:
  ftcompile check recipes/*.toml                  every recipe; absent data folders get a nominal size
  ftcompile check --require-data recipes/*.toml   absent data folders are errors
  ftcompile check --marked-only *.toml            only files starting with '#:schema ...recipe.schema.json'
  ftcompile check --verify-images recipes/r.toml  also decode every image and list those that cannot be read
"""

EPILOG = """examples:
  ftcompile plan recipes/quickstart.toml                 show what will happen, step by step
  ftcompile plan r.toml --trace lr.csv --plot lr.png      LR of every param group at every step
  ftcompile plan r.toml -o plan.json                      compile here, run elsewhere
  ftcompile check recipes/*.toml                          validate many recipes (no data needed)
  ftcompile plan r.toml --set phases.layer4.epochs=5      override a field (TOML value)
  ftcompile diff HEAD:recipes/r.toml recipes/r.toml       what an edit changes in training
  ftcompile run recipes/quickstart.toml                   compile and train
  ftcompile resume runs/quickstart/1-ab12cd34             continue after an interruption
  ftcompile rerun runs/quickstart/1-ab12cd34              repeat a run from its stored plan
  ftcompile lr-find recipes/quickstart.toml --phase layer4  LR range test at the start of a phase
  ftcompile eval runs/quickstart/1-ab12cd34               per-class metrics, confusion matrix
  ftcompile predict runs/quickstart/1-ab12cd34 img.png    class probabilities
  ftcompile export runs/quickstart/1-ab12cd34 --format onnx
  ftcompile report runs/quickstart/1-ab12cd34             one HTML page: curves, LR, confusion, plan, env
  ftcompile runs                                          one line per run under runs/
"""


def _sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset-size",
        type=int,
        metavar="N",
        help="train images, used only when the data.train folder is not on this machine",
    )
    p.add_argument(
        "--val-size",
        type=int,
        metavar="N",
        help="validation images, used only when the data.val folder is not on this machine",
    )


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing file that is not an earlier output of this kind (never a folder, "
        "a device or a file in a run directory)",
    )


def _set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a recipe field: dotted key, TOML value (repeatable), e.g. --set phases.layer4.epochs=5 "
        "--set 'phases.layer4.lr.layer4=\"head / 30\"'",
    )


def _backend_options(p: argparse.ArgumentParser, resume: bool = False) -> None:
    """Where the alternatives of trial phases run (runtime/ray_backend.py, docs/ray.md)."""
    p.add_argument(
        "--backend",
        choices=["sequential", "ray"],
        help="the run's recorded backend unless given"
        if resume
        else "sequential: one after another in this process (default); ray: side by side as Ray tasks",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="the Ray cluster to join (auto: the one `ray start` made); default: a local Ray",
    )
    p.add_argument("--gpus-per-trial", type=int, metavar="G", help="GPUs of each Ray task (0 or 1; default 0)")
    p.add_argument(
        "--max-parallel",
        type=int,
        metavar="K",
        help="at most K alternatives at once (default: as Ray's resources allow)",
    )


def _backend(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> dict[str, Any] | None:
    from ftcompile.runtime.ray_backend import backend_record  # start-up time: imports torch

    return backend_record(args.backend, args.address, args.gpus_per_trial, args.max_parallel, recorded)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftcompile",
        description="Compile a fine-tuning recipe (TOML) into an execution plan, then run it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "plan",
        help="compile a recipe and show the plan",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe .toml")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("-o", "--output", metavar="PLAN.json", help="write the plan to a file")
    p.add_argument("--trace", metavar="LR.csv", help="write the LR of every param group at every step")
    p.add_argument("--plot", metavar="LR.png", help="draw the LR curves (needs matplotlib)")
    p.add_argument("--all-changes", action="store_true", help="list every change, not only the first 200")
    p.add_argument("--wide", action="store_true", help="lines as long as they need (default: at most 100 columns)")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="add each phase's memory, FLOPs and time (a fake-tensor step per phase; times need `ftcompile calibrate`)",
    )
    _force(p)
    _sizes(p)
    _set(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "check",
        help="validate recipes; one line each",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipes", nargs="+", help="recipe .toml files")
    p.add_argument(
        "--verify-images", action="store_true", help="decode every image of the data and list all that cannot be read"
    )
    p.add_argument(
        "--require-data",
        action="store_true",
        help="a data folder that is not here is an error (default: check the rest)",
    )
    p.add_argument(
        "--marked-only",
        action="store_true",
        help="skip .toml files whose first line is not '#:schema ...recipe.schema.json' (for pre-commit)",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="estimate each phase's peak memory and warn where it exceeds this device's (the GPU's, else the RAM)",
    )
    p.add_argument(
        "--device-memory",
        metavar="SIZE",
        type=_memory_size,
        help="a phase whose estimated peak exceeds SIZE (e.g. 24GB; binary units, as GPUs count) fails the check",
    )
    _sizes(p)
    _set(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "diff",
        help="what a recipe change does to training (exit 0 equal, 1 different)",
        epilog=DIFF_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("old", help="recipe .toml, plan .json, run directory, or REV:path (a git revision)")
    p.add_argument("new", help="the same kinds")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    p.add_argument("--all-changes", action="store_true", help="list every differing change, not only the first 200")
    _sizes(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser(
        "schema", help="print the recipe JSON Schema", epilog="example: ftcompile schema > recipes/recipe.schema.json"
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "run", help="compile (if given a recipe) and train", epilog="example: ftcompile run recipes/quickstart.toml"
    )
    p.add_argument("source", help="recipe .toml or plan .json")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>/<n>-<hash8>)")
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder that data paths are relative to (default: the recipe's folder; for a plan.json, the current folder)",
    )
    p.add_argument("--nproc", type=int, metavar="N", help="train on N processes (GPUs) through torchrun + DDP")
    _backend_options(p)
    _set(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "resume",
        help="continue a run from its newest checkpoint",
        epilog="example: ftcompile resume runs/quickstart/1-ab12cd34",
    )
    p.add_argument("run_dir")
    _backend_options(p, resume=True)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser(
        "lr-find",
        help="LR range test at the start of a phase (writes lr_find.csv)",
        epilog=LR_FIND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe .toml")
    p.add_argument("--phase", required=True, metavar="NAME", help="the phase whose LRs to test")
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_DIR",
        help="start from this run's checkpoint at the phase's first step (read only)",
    )
    p.add_argument("--steps", type=int, default=100, help="steps of the test (default 100)")
    p.add_argument("--start", type=float, default=1e-4, help="first multiplier of the phase's LRs (default 1e-4)")
    p.add_argument("--end", type=float, default=1e3, help="last multiplier (default 1e3)")
    p.add_argument(
        "-o", "--output", metavar="DIR", default=".", help="folder for lr_find.csv / lr_find.png (default: here)"
    )
    _force(p)
    p.add_argument(
        "--data-root", metavar="DIR", help="folder that data paths are relative to (default: the recipe's folder)"
    )
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser(
        "rerun",
        help="repeat a run from its stored plan",
        epilog="example: ftcompile rerun runs/quickstart/1-ab12cd34 --out /tmp/again",
    )
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="DIR")
    p.set_defaults(func=cmd_rerun)
    _add_start_commands(sub)
    _add_use_commands(sub)
    _add_calibrate(sub)
    return parser


INIT_EPILOG = """examples:
  ftcompile init data/flowers                      class folders (split 85/15 per class) or train/ + val/
  ftcompile init data/flowers --model convnext_tiny -o flowers.toml
  ftcompile init data/flowers --lr-find            the head's LR from an LR-finder run (~100 steps)
  ftcompile init data/flowers --image-size 128     smaller images than the weights' own: faster steps

The recipe passes `check` and `plan` and runs as it is; each line says why and what to change.
Exit 2 when the folder cannot make one: no class folders, one class, unreadable images, a class
with fewer training images than one batch.
"""

WEIGHTS_EPILOG = """examples:
  ftcompile weights resnet50.IMAGENET1K_V2         where the file goes; download it if it is absent
  ftcompile weights ResNet50_Weights.DEFAULT       torchvision's own spelling
  ftcompile weights recipes/resnet50-gradual.toml  the weights a recipe names
  ftcompile weights resnet50 --no-download         only say which file, from where, to where

exit status: 0 the file is in torch's hub cache (now), 1 absent (--no-download), 2 error
(no network: the message says where to put the file). FTCOMPILE_NO_DOWNLOAD=1 forbids downloads.
"""


def _add_start_commands(sub: argparse._SubParsersAction) -> None:
    """init and weights: from a folder of images to a recipe that runs."""
    p = sub.add_parser(
        "init",
        help="write a commented recipe for a folder of images",
        epilog=INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "folder", metavar="DATA_FOLDER", help="class folders (FOLDER/<class>/<image>), or FOLDER/train + FOLDER/val"
    )
    p.add_argument(
        "--model", metavar="NAME", help="a torchvision classifier (default: from the data size and the device)"
    )
    p.add_argument("-o", "--output", metavar="RECIPE.toml", default="recipe.toml", help="default: recipe.toml")
    p.add_argument(
        "--lr-find",
        action="store_true",
        help="measure the head's LR with the LR finder; the curve goes beside the recipe (RECIPE.lr_find.csv / .png)",
    )
    p.add_argument("--image-size", type=int, metavar="N", help="default: the size the weights were trained at")
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="default: 32 (a class needs at least one batch of training images)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing recipe file")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "weights",
        help="where torchvision's pretrained weights go (torch's hub cache); download them",
        epilog=WEIGHTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "name", metavar="NAME", help="ARCH[.WEIGHTS] (resnet50.IMAGENET1K_V2), Enum_Weights.MEMBER, or a recipe .toml"
    )
    p.add_argument("--no-download", action="store_true", help="only say which file goes where")
    p.set_defaults(func=cmd_weights)


def _add_use_commands(sub: argparse._SubParsersAction) -> None:
    """eval, predict, export, report, runs: using and judging a run."""
    p = sub.add_parser(
        "eval",
        help="per-class metrics and confusion matrix of a run",
        epilog="example: ftcompile eval runs/quickstart/1-ab12cd34 --tta",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--data", metavar="FOLDER", help="another ImageFolder with the run's class names (default: the run's val split)"
    )
    p.add_argument(
        "--weights",
        choices=["final", "best", "ema"],
        default="final",
        help="model.pt (default), best.pt or model_ema.pt",
    )
    p.add_argument("--tta", action="store_true", help="average the softmax over each image and its horizontal flip")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict",
        help="class probabilities of images, with the run's val transforms",
        epilog="example: ftcompile predict runs/quickstart/1-ab12cd34 photo.jpg photos/ --topk 3",
    )
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER")
    p.add_argument("--topk", type=int, default=3, metavar="K", help="classes per image (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    titles = [f.title for f in FORMATS.values()]
    p = sub.add_parser(
        "export",
        help=f"the run's model as {', '.join(titles[:-1])} or {titles[-1]} (+ a sidecar .json)",
        epilog="example: ftcompile export runs/quickstart/1-ab12cd34 --format onnx -o model.onnx",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{name}: loads with {f.loads_with}" for name, f in FORMATS.items()),
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="default: " + ", ".join(f"RUN_DIR/{f.default_name}" for f in FORMATS.values()),
    )
    _force(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page about one or several runs",
        epilog="example: ftcompile report runs/quickstart/1-* -o report.html",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "-o", "--output", metavar="report.html", help="default: RUN_DIR/report.html (one run) or ./report.html"
    )
    _force(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "runs",
        help="one line per run: status, phases done, best and final top-1",
        epilog="example: ftcompile runs            (looks in runs/)",
    )
    p.add_argument("root", nargs="?", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)


def _options(args: argparse.Namespace, **extra: Any) -> CompileOptions:
    return CompileOptions(
        dataset_size=getattr(args, "dataset_size", None),
        val_size=getattr(args, "val_size", None),
        overrides=tuple(getattr(args, "overrides", ())),
        **{"needs_data": not hasattr(args, "dataset_size"), **extra},  # run, lr-find: no --dataset-size to suggest
    )


def _compile(path: str, args: argparse.Namespace, **extra: Any):
    from ftcompile.compiler import compile_checked  # start-up time: imports torch

    return compile_checked(path, _options(args, **extra)).plan


def cmd_plan(args: argparse.Namespace) -> int:
    from ftcompile import render  # start-up time: this command only

    # Before compiling: a path that holds something else than an earlier plan, trace or plot is refused.
    for path, kind, option in (
        (args.output, outputs.PLAN, "-o"),
        (args.trace, outputs.TRACE, "--trace"),
        (args.plot, outputs.LR_PLOT, "--plot"),
    ):
        if path:
            outputs.check_output(Path(path), kind, option, force=args.force)
    plan = _compile(args.recipe, args)
    if args.output:
        outputs.write_text(Path(args.output), plan.to_json() + "\n")
    if args.trace or args.plot:
        from ftcompile.trace import lr_trace  # start-up time: imports torch

        rows = lr_trace(plan)
        if args.trace:
            outputs.write_lines(Path(args.trace), render.trace_lines(plan, rows))
        if args.plot:
            render.plot(plan, rows, Path(args.plot))
    cost = _estimate(plan, args.recipe) if args.estimate else None
    if args.json:
        # The estimate rides beside the plan, outside its hash (Plan.from_dict ignores it).
        print(
            plan.to_json()
            if cost is None
            else json.dumps(
                {**plan.to_dict(), "hash": plan.hash, "estimate": cost.to_dict()},
                indent=1,
                sort_keys=True,
                allow_nan=False,
            )
        )
    else:
        # With -o the plan is in the file: print the summary, not the change list.
        print(
            render.render(
                plan,
                max_changes=10**9 if args.all_changes else 200,
                wide=args.wide,
                summary=bool(args.output) and not args.all_changes,
            )
        )
        if cost is not None:
            from ftcompile import estimate  # start-up time: imports torch

            print(estimate.render(cost))
        for what, path in (("plan", args.output), ("trace", args.trace), ("plot", args.plot)):
            if path:
                print(f"wrote {what}: {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Compile each recipe. Where a data folder is absent (a CI runner, a pre-commit hook)
    everything but the step counts is still checked, against a nominal dataset size."""
    from ftcompile.compiler import compile_checked  # start-up time: imports torch
    from ftcompile.render import counted  # start-up time: this command only

    options = _options(args, nominal_data=not args.require_data)
    failed = 0
    for path in args.recipes:
        if args.marked_only and not _schema_marked(Path(path)):
            continue
        try:
            compiled = compile_checked(path, options)
            _weights_cached(compiled.plan, path, args.require_data)
            images = (
                _verify_images(compiled.plan, Path(path)) if args.verify_images and not compiled.nominal_data else None
            )
        except RecipeError as err:
            failed += 1
            first, *rest = str(err).splitlines()
            print(f"FAIL {first}" + "".join(f"\n     {line}" for line in rest))
            continue
        plan = compiled.plan
        if compiled.nominal_data:
            print(f"ok   {path}: {counted(len(plan.phases), 'phase')} (data not found here: step counts not checked)")
        else:
            verified = f", {images} images verified" if images is not None else ""
            print(
                f"ok   {path}: {counted(len(plan.phases), 'phase')}, {counted(plan.total_steps, 'step')}, plan {plan.hash[:12]}{verified}"
            )
            _warn_memory(plan, path)
        if args.estimate or args.device_memory:
            failed += _check_cost(plan, path, args.device_memory)
    return 2 if failed else 0


def _weights_cached(plan, where: str | Path, required: bool) -> None:
    """torchvision weights that are not in torch's hub cache: `run` downloads them, or fails on a
    machine without network. A warning that says which file goes where; an error with --require-data."""
    from ftcompile import hub  # start-up time: this command only

    cached = hub.of_model(plan.model)
    if cached is None or cached.present():
        return
    if required:
        raise cached.missing().located(where)
    print(f"warning: {where}: model.weights: {cached.short_note()}", file=sys.stderr)


def _warn_memory(plan, where: str | Path) -> None:
    """Parameters, gradients and optimizer state that exceed this machine: said before a run."""
    from ftcompile import memory  # start-up time: this command only

    text = memory.warning(plan)
    if text:
        print(f"{where}: {text}", file=sys.stderr)


def _verify_images(plan, recipe: Path) -> int:
    """Decode every image of the plan's data (relative to the recipe's folder)."""
    from ftcompile.images import verify_data  # start-up time: this command only

    try:
        return verify_data(plan.data, recipe.parent)
    except RecipeError as err:
        raise err.located(recipe) from None


def _schema_marked(path: Path) -> bool:
    """A recipe announces itself by its first line, `#:schema <path>recipe.schema.json`."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            first = f.readline().strip()
    except OSError:
        return True  # let the check report the unreadable file
    return first.startswith("#:schema") and first.endswith("recipe.schema.json")


def cmd_diff(args: argparse.Namespace) -> int:
    from ftcompile import diff  # start-up time: this command only

    options = _options(args)
    report = diff.compare(diff.read_side(args.old, options), diff.read_side(args.new, options))
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True, allow_nan=False))
    else:
        print(diff.render(report, max_changes=10**9 if args.all_changes else 200))
    return 0 if report["equal"] else 1


def cmd_schema(args: argparse.Namespace) -> int:
    from ftcompile.schema import json_schema  # start-up time: this command only

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    backend = _backend(args)  # checked (and Ray's presence) before anything is compiled or made
    if args.nproc and args.nproc > 1:
        if backend is not None:
            raise RecipeError(
                "--backend ray with --nproc: a DDP run's trial phases on Ray is not supported yet",
                key="--backend",
                suggestion="leave out one of them",
            )
        from ftcompile.runtime.distributed import launch  # start-up time: imports torch

        # A portable plan's processes start pinned: this command again, pinned, whose torchrun
        # workers inherit the environment.
        restarted = _restart_pinned(_run_plan(args)[0], args)
        if restarted is not None:
            return restarted
        argv = ["run", args.source] + [
            f"--{k.replace('_', '-')}={v}" for k, v in (("out", args.out), ("data_root", args.data_root)) if v
        ]
        argv += [f"--set={o}" for o in args.overrides]
        return launch(args.nproc, argv)

    source = Path(args.source)
    plan, recipe_path, root = _run_plan(args)
    restarted = _restart_pinned(plan, args)
    if restarted is not None:
        return restarted
    _warn_memory(plan, source)
    from ftcompile.runtime.ray_backend import check_device  # start-up time: imports torch
    from ftcompile.runtime.rundir import start_run  # start-up time: imports torch

    check_device(backend, plan.run.device)
    return start_run(plan, recipe_path, root, Path(args.out) if args.out else None, source=source, backend=backend)


def _run_plan(args: argparse.Namespace) -> tuple[Any, Path | None, Path]:
    """`run`'s plan, the recipe file it came from (None for a plan.json) and the data root."""
    from ftcompile.plan import Plan  # start-up time: this command only

    source = Path(args.source)
    if source.suffix == ".json":
        if args.overrides:
            raise RecipeError(
                "--set changes a recipe; a plan.json is already compiled",
                key="--set",
                suggestion="run the recipe with --set, or compile a new plan: ftcompile plan RECIPE --set ... -o plan.json",
            )
        return Plan.load(source), None, Path(args.data_root) if args.data_root else Path.cwd()
    # The augment ops are built once here, as the runtime will build them (it imports torchvision anyway).
    plan = _compile(str(source), args, build_transforms=True)
    return plan, source, Path(args.data_root) if args.data_root else source.parent


LR_FIND_EPILOG = """examples:
  ftcompile lr-find r.toml --phase warmup                    train the phases before it, then test
  ftcompile lr-find r.toml --phase layer3 --from runs/r/1-ab12cd34   start from that run's checkpoint
  ftcompile lr-find r.toml --phase layer4 --steps 200 --start 1e-3 --end 1e2 -o /tmp/lrf

Every group the phase trains gets its planned lr times one multiplier, raised from --start to
--end (log scale); the suggestion is for the phase's last group in `train` (usually head).
"""


def cmd_lr_find(args: argparse.Namespace) -> int:
    if args.steps < 2:
        raise RecipeError(
            f"--steps {args.steps}: the test needs at least 2 steps", key="--steps", suggestion="e.g. --steps 100"
        )
    if not 0 < args.start < args.end:
        raise RecipeError(
            f"--start {args.start:g} / --end {args.end:g}: need 0 < start < end",
            key="--start",
            suggestion="e.g. --start 1e-4 --end 1e3 (multipliers of the phase's LRs)",
        )
    out = Path(args.output)
    # Before the test trains: lr-find writes lr_find.csv and lr_find.png, never into a run directory.
    outputs.check_output(out / "lr_find.csv", outputs.LR_FIND_CSV, "--output", force=args.force)
    outputs.check_output(out / "lr_find.png", outputs.LR_FIND_PLOT, "--output", force=args.force)
    plan = _compile(args.recipe, args)
    # A portable plan's test runs pinned, as its run does: the same curve on every machine.
    restarted = _restart_pinned(plan, args)
    if restarted is not None:
        return restarted
    from ftcompile.runtime import lr_find as lrf  # start-up time: imports torch
    from ftcompile.runtime.rundir import open_run, upstream_model  # start-up time: imports torch

    phase = lrf.find_phase(plan, args.phase)
    root = Path(args.data_root) if args.data_root else Path(args.recipe).parent
    state = None
    if args.from_run and phase.begin > 0:
        run_plan, _ = open_run(Path(args.from_run))
        state = lrf.start_state(Path(args.from_run), run_plan, plan, phase)
    found = lrf.lr_find(
        plan,
        root,
        phase.name,
        steps=args.steps,
        start=args.start,
        end=args.end,
        state=state,
        upstream=upstream_model(plan, root),
    )
    out.mkdir(parents=True, exist_ok=True)
    lrf.write_csv(found, out / "lr_find.csv")
    print(lrf.report(found, _paste_line(args, found)))
    wrote = [out / "lr_find.csv"]
    if lrf.plot(found, out / "lr_find.png"):
        wrote.append(out / "lr_find.png")
    else:
        print("no lr_find.png: the plot needs matplotlib (pip install 'ftcompile[plot]')")
    print("wrote " + ", ".join(map(str, wrote)))
    return 0


def _paste_line(args: argparse.Namespace, found: Any) -> str | None:
    """lr-find's paste-in `lr` line, formatted on the recipe side from the phase as the
    recipe writes it (the runtime knows the plan only); None when the test suggests nothing."""
    if found.suggestion is None:
        return None
    from ftcompile.lr_paste import paste_line  # start-up time: this command only

    overrides = getattr(args, "overrides", ())
    return paste_line(args.recipe, overrides, found.phase.name, found.base, found.suggestion["steepest"])


def _restart_pinned(plan: Any, args: argparse.Namespace) -> int | None:
    """A portable plan runs in a process whose environment pins instruction sets and threads
    before torch starts: this command again, so pinned (ftcompile/portable.py); None: go on here."""
    return portable.restart_pinned(plan.run.reproducible, args.argv)


def cmd_resume(args: argparse.Namespace) -> int:
    from ftcompile.runtime.ray_backend import check_device  # start-up time: imports torch
    from ftcompile.runtime.rundir import open_run, resume_run  # start-up time: imports torch

    plan, env = open_run(Path(args.run_dir))
    backend = _backend(args, env.get("backend"))  # the recorded one, unless another is given
    check_device(backend, plan.run.device)
    restarted = _restart_pinned(plan, args)
    return restarted if restarted is not None else resume_run(Path(args.run_dir), backend)


def cmd_rerun(args: argparse.Namespace) -> int:
    from ftcompile.runtime.rundir import open_run, rerun_run  # start-up time: imports torch

    restarted = _restart_pinned(open_run(Path(args.run_dir))[0], args)
    return restarted if restarted is not None else rerun_run(Path(args.run_dir), Path(args.out) if args.out else None)


def cmd_init(args: argparse.Namespace) -> int:
    """Survey the folder, choose the model, write the recipe, and compile it as `check` does."""
    from ftcompile import init  # start-up time: imports torch
    from ftcompile.compiler import compile_checked  # start-up time: imports torch
    from ftcompile.render import counted  # start-up time: this command only

    out = Path(args.output)
    if args.image_size is not None and not 8 <= args.image_size <= 2048:
        raise RecipeError(f"--image-size {args.image_size}: use 8 to 2048", key="--image-size")
    batch_size = init.DEFAULT_BATCH if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise RecipeError(f"--batch-size {batch_size}: use 1 or more", key="--batch-size")
    if out.is_file() and not args.force:  # a recipe is the user's text, even one init wrote: edits may be in it
        raise RecipeError(
            f"{out} exists; init does not replace a recipe",
            key="-o",
            suggestion="give another file with -o, or add --force to replace it",
        )
    outputs.check_output(out, init.RECIPE, "-o", force=True)  # never a folder, a device, a run directory's file
    survey = init.survey(Path(args.folder), batch_size)
    model = init.choose_model(args.model, survey.train_size, init.detect_device())
    options = init.Options(out, args.image_size, batch_size)
    if args.lr_find:
        options = _init_lr_find(survey, model, options, args.force)
    outputs.write_text(out, init.render(survey, model, options))
    plan = compile_checked(out, CompileOptions()).plan
    print(
        f"wrote {out}: {model.arch} ({model.weights} weights), {len(survey.class_names)} classes, "
        f"{survey.train_size} train / {survey.val_size} val images; {counted(len(plan.phases), 'phase')}, "
        f"{plan.steps_with_trials} optimizer steps with trials ({plan.total_steps} without)"
    )
    from ftcompile import hub  # start-up time: this command only

    cached = hub.of_model(plan.model)
    if cached is not None and not cached.present():
        print(f"weights: {cached.short_note()}")
    print(f"next: ftcompile plan {out}\n      ftcompile run {out}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """Which file torchvision's weights are, where torch looks for it, and the download."""
    from ftcompile import hub  # start-up time: this command only

    arch, name = _weights_name(args.name)
    if arch is None:
        print(f"{args.name}: model.weights = {name!r} is not a torchvision weights name: nothing to download")
        return 0
    cached = hub.locate(arch, name)
    print("\n".join(hub.describe(cached)))
    if cached.present():
        return 0
    if args.no_download:
        print(f"to use it: {cached.where_to_put_it()}")
        return 1
    try:
        hub.download(cached, progress=True)
    except RecipeError as err:  # the hint without "`ftcompile weights` downloads it": this is that command
        raise RecipeError(err.message, suggestion=cached.where_to_put_it()) from None
    print("\n".join(hub.describe(cached)[-1:]))
    return 0


def _weights_name(text: str) -> tuple[str | None, str]:
    """NAME of `ftcompile weights`: ARCH[.WEIGHTS] or a recipe .toml (its model.arch and model.weights)."""
    from ftcompile import hub  # start-up time: this command only

    if not text.endswith(".toml"):
        return hub.parse_name(text)
    from ftcompile.compiler import locate  # start-up time: imports torch
    from ftcompile.load import load_overridden  # start-up time: this command only
    from ftcompile.schema import validate  # start-up time: this command only

    loaded = load_overridden(text, ())
    try:
        model = validate(loaded).model
        from ftcompile import arch as archs  # start-up time: imports torch

        if model.weights not in archs.valid_weights(model.arch):
            return None, model.weights
    except RecipeError as err:
        raise locate(err, loaded) from None
    return model.arch, model.weights


def _init_lr_find(survey: Any, model: Any, options: Any, force: bool) -> Any:
    """`init --lr-find`: the recipe as it would be written, its head phase's LR range test
    (compile stages never import the runtime, so it is wired here), the curve beside the
    recipe, and the options with the steepest-descent LR for the head."""
    from ftcompile import hub, init  # start-up time: imports torch
    from ftcompile.compiler import compile_checked  # start-up time: imports torch

    out = options.recipe
    csv, png = out.with_name(out.stem + ".lr_find.csv"), out.with_name(out.stem + ".lr_find.png")
    outputs.check_output(csv, outputs.LR_FIND_CSV, "--lr-find", force=force)
    outputs.check_output(png, outputs.LR_FIND_PLOT, "--lr-find", force=force)
    draft = out.with_name(f".{out.name}.lr-find-{os.getpid()}.toml")  # beside it: its data paths hold
    outputs.write_text(draft, init.render(survey, model, options))
    try:
        plan = compile_checked(draft, CompileOptions()).plan
    finally:
        draft.unlink(missing_ok=True)
    cached = hub.of_model(plan.model)
    if cached is not None:
        hub.ensure(cached, progress=sys.stderr.isatty())
    from ftcompile.runtime import lr_find as lrf  # start-up time: imports torch

    print("lr-find: the head phase's LR range test (100 steps)", file=sys.stderr, flush=True)
    found = lrf.lr_find(plan, out.parent, "head", steps=100)
    lrf.write_csv(found, csv)
    saved = f"{csv}" + (f", {png}" if lrf.plot(found, png) else "")
    steepest = (found.suggestion or {}).get("steepest")
    if not steepest:
        print(f"lr-find suggested nothing (curve in {saved}); the head keeps lr {options.head_lr:g}", file=sys.stderr)
        return dataclasses.replace(options, head_lr_note=f"lr-find suggested nothing here (see {csv.name}); a default")
    lr = found.base[found.reference] * steepest
    print(f"lr-find: head lr {lr:.2g} (steepest descent); curve in {saved}", file=sys.stderr)
    return dataclasses.replace(options, head_lr=lr, head_lr_note=f"lr-find's steepest descent ({csv.name}, {png.name})")


def cmd_eval(args: argparse.Namespace) -> int:
    from ftcompile.runtime.evaluate import eval_command  # start-up time: imports torch

    return eval_command(Path(args.run_dir), Path(args.data) if args.data else None, args.weights, args.tta, args.json)


def cmd_predict(args: argparse.Namespace) -> int:
    from ftcompile.runtime.evaluate import predict_command  # start-up time: imports torch

    return predict_command(Path(args.run_dir), args.images, args.topk, args.json)


def cmd_export(args: argparse.Namespace) -> int:
    from ftcompile.runtime.export import export_command  # start-up time: imports torch

    return export_command(Path(args.run_dir), args.format, Path(args.output) if args.output else None, args.force)


def cmd_report(args: argparse.Namespace) -> int:
    from ftcompile.runtime.report import report_command  # start-up time: this command only

    return report_command([Path(d) for d in args.run_dirs], Path(args.output) if args.output else None, args.force)


def cmd_runs(args: argparse.Namespace) -> int:
    from ftcompile.runtime.runs import runs_command  # start-up time: this command only

    return runs_command(Path(args.root), args.json)


CALIBRATE_EPILOG = """examples:
  ftcompile calibrate                              a standard resnet18 on this machine's default device
  ftcompile calibrate recipes/quickstart.toml      the recipe's model, image size, batch and precision
  ftcompile calibrate r.toml --device cuda --steps 5

The profile is stored per device, torch version and precision under $XDG_CACHE_HOME/ftcompile/profiles
(default ~/.cache); `ftcompile plan R --estimate` turns FLOPs into time with it and names the one it used.
"""


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="time a few training steps to make the device profile plan --estimate uses",
        epilog=CALIBRATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", nargs="?", help="recipe .toml (default: a standard resnet18)")
    p.add_argument(
        "--device", choices=["cpu", "cuda"], help="default: the recipe's run.device (auto: cuda when visible)"
    )
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: the recipe's run.precision (fp32)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per phase setup (default 3; one more warms up)")
    _sizes(p)
    _set(p)
    p.set_defaults(func=cmd_calibrate)


def _memory_size(text: str) -> int:
    from ftcompile.memory import parse_size  # start-up time: this command only

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _estimate(plan, where: str | Path, memory: tuple[int | None, str] | None = None):
    """The plan's cost; warnings about phases that may not fit go to stderr."""
    # Imported here, not at the top: the estimate imports torchvision and FakeTensorMode
    # (torch._dynamo) and runs a fake step per phase; plain `plan` never pays for it.
    from ftcompile import calibrate, estimate

    rates = calibrate.find(
        estimate.run_device(plan), plan.run.precision, plan.model.arch, plan.data.image_size, plan.data.batch_size
    )
    cost = estimate.estimate(plan, rates, memory)
    for line in estimate.warnings(cost):
        print(f"{where}: {line}", file=sys.stderr)
    return cost


def _check_cost(plan, path: str, device_memory: int | None) -> int:
    """check --estimate / --device-memory: one line of peaks; with --device-memory, a phase
    that may not fit is a failure (1), else a warning (0)."""
    from ftcompile import estimate  # start-up time: imports torch

    memory = (device_memory, "--device-memory") if device_memory else None
    cost = _estimate(plan, path, memory)
    peaks = ", ".join(
        f"{p.phase}{'' if p.trial is None else f'/{p.trial}'} {estimate.gib(p.peak_range[1])}" for p in cost.phases
    )
    over = [p for p in cost.phases if cost.device_memory and p.peak_range[1] > cost.device_memory]
    if device_memory and over:
        print(
            f"FAIL {path}: {len(over)} phase(s) may not fit in {estimate.gib(device_memory)} (estimated peaks: {peaks})"
        )
        return 1
    print(
        f"     {path}: estimated peaks {peaks} of {estimate.gib(cost.device_memory or 0)} ({cost.device_memory_source})"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Time a few steps of the recipe's model (or a standard one) and store the device profile."""
    from ftcompile import calibrate, estimate  # start-up time: imports torch

    if args.steps < 1:
        raise RecipeError(f"--steps {args.steps}: at least 1", key="--steps", suggestion="e.g. --steps 3")
    if args.recipe:
        plan = _compile(args.recipe, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "standard.toml"
            path.write_text(calibrate.STANDARD.format(image_size=128, batch_size=16))
            plan = _compile(str(path), args)
    overrides = {"precision": args.precision} if args.precision else {}
    if args.device:
        overrides["device"] = args.device
    if overrides:
        plan = dataclasses.replace(plan, run=dataclasses.replace(plan.run, **overrides))
    device = estimate.run_device(plan)
    if device == "cuda":
        import torch  # start-up time: imports torch

        if not torch.cuda.is_available():
            raise RecipeError(
                "no CUDA device is visible here",
                key="--device",
                suggestion="calibrate on the machine that will run, or use --device cpu",
            )
    print(f"calibrating {plan.model.arch} on {device} ({calibrate.device_name(device)}), {plan.run.precision}")
    rates = calibrate.calibrate(plan, device, steps=args.steps)
    path = calibrate.store(device, plan.run.precision, rates)
    print(
        f"forward {rates.fwd_flops_per_s / 1e9:.1f} GFLOP/s, backward {rates.bwd_flops_per_s / 1e9:.1f} GFLOP/s, "
        f"optimizer {rates.opt_params_per_s / 1e6:.0f} M params/s; predictions within "
        f"{rates.spread[0]:.2f}-{rates.spread[1]:.2f}x of these steps"
    )
    print(f"wrote profile: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"ftcompile {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv  # a portable run starts this command again (None: ftcompile is the program)
    try:
        with raised_as_interrupts():  # SIGTERM too: atomic writes clean up, the run says "interrupted"
            return args.func(args)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ftcompile plan r.toml | head`
        sys.stderr.close()
        return 0
    except OSError as err:  # disk full, permission, read-only file system, a file where a folder should be
        print(f"error: {os_error(err, doing='read or write')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a run says how to continue it (rundir._train)
        print(exc.args[0] if exc.args else "interrupted", file=sys.stderr)
        return exit_code(exc)  # 130 for SIGINT, 143 for SIGTERM
