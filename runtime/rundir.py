"""Run directories: runs/<name>/<n>-<plan hash[:8]>/ with everything needed to rerun.

recipe.toml, plan.json, env.json, metrics.jsonl, lr.csv, checkpoints/, model.pt.
"""

from __future__ import annotations

import contextlib
import platform
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from ftcompile.runtime import checkpoint, cost, distributed
from ftcompile.runtime.curves import write_curves
from ftcompile.runtime.lock import LOCK_FILE, RunLock
from ftcompile.runtime.logs import check_logs, truncate_logs
from ftcompile.runtime.loop import pick_device, train
from ftcompile.runtime.ray_backend import make_backend
from ftcompile.runtime.runfiles import RUNS, Env, checked, continued_evals, finished_upstream, open_run
from ftcompile.runtime.status import RunStatus
from ftcompile.runtime.tensorboard import log_hooks

import ftcompile
from ftcompile import hub, outputs, portable, provenance
from ftcompile.datasets import count_data
from ftcompile.errors import RecipeError, RecipeErrors, os_error
from ftcompile.images import verify_data
from ftcompile.keylines import key_lines, line_in
from ftcompile.plan import Plan
from ftcompile.provenance import stored_recipe_text
from ftcompile.signals import Interrupted, signum_of


def new_run_dir(plan: Plan, out: Path | None, lock: RunLock) -> Path:
    """Create the run directory (runs/<name>/<n>-<hash8>, or `out`) and lock it.

    The lock is taken before the directory is used, so of two processes given the same
    `--out`, one is refused; a numbered directory that another process created a moment
    before is skipped for the next number.
    """
    try:
        if out is not None:
            outputs.check_new_folder(out, "--out")  # a run never goes inside another run's folder
            out.mkdir(parents=True, exist_ok=True)
            _check_empty(out)
            lock.acquire(out)
            try:
                _check_empty(out)  # another process may have filled it before we locked it
            except RecipeError:
                lock.release()
                raise
            return out
        parent = RUNS / plan.recipe.name
        _check_inside(parent, RUNS)
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            numbers = [int(p.name.split("-")[0]) for p in parent.iterdir() if p.name.split("-")[0].isdigit()]
            path = parent / f"{max(numbers, default=0) + 1}-{plan.hash[:8]}"
            try:
                path.mkdir()
            except FileExistsError:  # another process took this number first
                continue
            lock.acquire(path)
            return path
    except OSError as err:
        raise os_error(err, err.filename or out or RUNS, "create the run directory") from None


def _check_empty(out: Path) -> None:
    if any(p.name != LOCK_FILE for p in out.iterdir()):
        raise RecipeError(f"{out} exists and is not empty", key="--out", suggestion="give a new folder, or resume it")


def _check_inside(path: Path, root: Path) -> None:
    """A run directory never leaves the chosen root, whatever a plan's name says."""
    if root.resolve() not in (path.resolve() / "x").parents:
        raise RecipeError(
            f"the recipe name {path.name!r} would put the run outside {root}/",
            key="recipe.name",
            suggestion="a recipe name is a slug: lower-case letters, digits, '.', '_' and '-'",
        )


def env_record(plan: Plan, recipe: Path | None, root: Path, world: int = 1) -> dict[str, Any]:
    return {
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "ftcompile": ftcompile.__version__,
            "python": platform.python_version(),
        },
        "device": str(pick_device(plan.run.device)),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seed": plan.seed,
        "processes": world,
        "plan_hash": plan.hash,
        "recipe": str(recipe) if recipe else None,
        "data_root": str(root.resolve()),
        # provenance: the recipe's git commit and files, the data, what bitwise equality needs
        **provenance.recipe_record(recipe, list(plan.recipe.overrides)),
        "data": provenance.data_fingerprint(plan.to_dict()["data"], root),
        "machine": provenance.machine(),
        "reproducible": portable.record(plan.run.reproducible),
    }


def changed_since(run_dir: Path, plan: Plan, env: dict[str, Any]) -> list[str]:
    """rerun / resume: what differs from the run's recipe, data and machine, one line each."""
    lines = provenance.recipe_warnings(run_dir, env, plan.recipe.source_hash)
    try:
        lines += provenance.data_warnings(
            env, provenance.data_fingerprint(plan.to_dict()["data"], Path(env["data_root"]))
        )
    except RecipeError:
        pass  # data that cannot be listed fails the run itself, with its own message
    now = provenance.machine()
    return lines + portable.machine_warnings(plan.run.reproducible, env, now, provenance.machine_warnings(env, now))


def _write_record(run_dir: Path, plan: Plan, recipe_text: str | None, env: dict[str, Any]) -> None:
    """recipe.toml, plan.json, env.json (atomic writes; a file system that refuses them is
    one message naming the file)."""
    if recipe_text is not None:
        outputs.write_text(run_dir / "recipe.toml", recipe_text)
    outputs.write_text(run_dir / "plan.json", plan.to_json() + "\n")
    outputs.write_json(run_dir / "env.json", checked(Env, env))


@contextlib.contextmanager
def blamed(source: Path | None) -> Iterator[None]:
    """Errors raised while running name the file the run came from (the recipe, or the
    plan.json) and the line of their key, as compile errors do, instead of `<recipe>`."""
    try:
        yield
    except RecipeError as err:
        if source is None:
            raise
        try:
            lines = key_lines(source.read_text(encoding="utf-8")) if source.suffix == ".toml" else {}
        except (OSError, UnicodeDecodeError):
            lines = {}
        for e in err.errors if isinstance(err, RecipeErrors) else [err]:
            e.located(source, line_in(lines, e.key) if e.key else None)
        raise err from None


def _main_then_all(d: Any, make: Callable[[], Any]) -> Any:
    """make() on rank 0 and its result on every rank; an error there is raised on every
    rank (instead of leaving the others waiting for a broadcast)."""
    if not d.enabled:
        return make()
    result, error = None, None
    if d.main:
        try:
            result = make()
        except RecipeError as err:
            error = err
    result, error = distributed.broadcast((result, error), d)
    if error is not None:
        raise error
    return result


def start_run(
    plan: Plan,
    recipe: Path | None,
    root: Path,
    out: Path | None,
    source: Path | None = None,
    backend: dict[str, Any] | None = None,
) -> int:
    """`backend`: where trial alternatives run (runtime/ray_backend.py's record; None: here)."""
    with blamed(source or recipe):
        if recipe is None:  # a plan.json: its data must be the data the plan counted
            check_data(plan, root, "--data-root")
        run_new(plan, recipe, root, out, backend)
    distributed.shutdown(distributed.init(plan.run.device))
    return 0


def run_new(
    plan: Plan, recipe: Path | None, root: Path, out: Path | None, backend: dict[str, Any] | None = None
) -> Path:
    """Verify the images, create and lock the run directory (rank 0; the others learn its
    name), record, train."""
    portable.enter(plan.run.reproducible)  # pinned threads; refused where the environment is not pinned
    d = distributed.init(plan.run.device)
    _main_then_all(d, lambda: verify_images(plan, root))
    _main_then_all(d, lambda: fetch_weights(plan))
    lock = RunLock()
    run_dir = _main_then_all(d, lambda: new_run_dir(plan, out, lock))
    with lock:
        if d.main:
            text = None
            if recipe is not None:
                text = stored_recipe_text(recipe, list(plan.recipe.overrides))
            env = env_record(plan, recipe, root, d.world)
            _write_record(run_dir, plan, text, {**env, "backend": backend} if backend else env)
        distributed.barrier(d)
        _train(plan, run_dir, root, None, d, backend)
    return run_dir


def fetch_weights(plan: Plan) -> None:
    """torchvision weights are in torch's hub cache, downloaded now if need be, before the
    run directory is made: a machine without network fails here, saying which file to put
    where, and leaves no failed run behind to shift the run numbers."""
    cached = hub.of_model(plan.model)
    if cached is not None:
        hub.ensure(cached, progress=sys.stderr.isatty())


def verify_images(plan: Plan, root: Path) -> None:
    """Decode every image of the plan's data before step 0 (parallel threads, a progress
    bar on a terminal): a bad file would otherwise stop the run where it is first read, an
    epoch in for a val image, and alone. All bad files are one error, raised before the
    run directory is made (or, on resume, before any step)."""
    verify_data(plan.data, root)


def is_finished(run_dir: Path) -> bool:
    """model.pt is written (atomically) only after the plan's last step."""
    return (run_dir / "model.pt").is_file()


def resume_run(run_dir: Path, backend: dict[str, Any] | None = None) -> int:
    """`backend`: the one to go on with (the CLI's: the recorded one unless another was given)."""
    plan, env = open_run(run_dir)
    if is_finished(run_dir):  # nothing to do, and nothing touched; what changed since is still said
        for line in changed_since(run_dir, plan, env):
            print(line, file=sys.stderr)
        print(f"run is finished: {run_dir}")
        return 0

    portable.enter(plan.run.reproducible)
    d = distributed.init(plan.run.device)
    lock = RunLock()
    _main_then_all(d, lambda: lock.acquire(run_dir))
    with lock, blamed(_source(run_dir)):
        root = Path(env.get("data_root") or ".")
        check_data(plan, root, f"data_root in {run_dir / 'env.json'}")
        _main_then_all(d, lambda: verify_images(plan, root))
        if d.main:
            for line in changed_since(run_dir, plan, env):
                print(line, file=sys.stderr)
        # The newest good checkpoint of this plan (damaged ones and other plans' are set aside).
        found = checkpoint.find_newest(run_dir / "checkpoints", move_bad=d.main, plan_hash=plan.hash)

        state = found[1] if found else None
        if found is None:
            print("no complete checkpoint: starting from step 0", file=sys.stderr)
            if d.main:
                truncate_logs(run_dir, {"metrics.jsonl": 0, "lr.csv": 0, "trials.csv": 0})
        else:
            # The logs are part of the state: every record up to the checkpoint is still there.
            _main_then_all(d, lambda: check_logs(run_dir, found[1], found[0].name))
            if d.main:
                print(f"resuming at step {found[1]['step']} of {plan.total_steps}", file=sys.stderr)
        if d.main and backend != env.get("backend"):  # another backend given: the next resume goes on with it
            outputs.write_json(run_dir / "env.json", checked(Env, _with_backend(env, backend)))
        distributed.barrier(d)
        _train(plan, run_dir, root, state, d, backend)
    distributed.shutdown(d)
    return 0


def _with_backend(env: dict[str, Any], backend: dict[str, Any] | None) -> dict[str, Any]:
    """env.json's record with `backend` (left out for the sequential one)."""
    rest = {k: v for k, v in env.items() if k != "backend"}
    return {**rest, "backend": backend} if backend else rest


def _source(run_dir: Path) -> Path:
    """The file a stored run came from: its recipe.toml, else its plan.json."""
    return run_dir / "recipe.toml" if (run_dir / "recipe.toml").is_file() else run_dir / "plan.json"


def check_data(plan: Plan, root: Path, where: str) -> None:
    """The data under `root` is the data the plan counted: sizes, class names and per-class
    counts (the last two when the plan was compiled with the data, not --dataset-size).
    A moved or edited data_root, or data changed since, is an error before any step."""
    data = plan.data
    try:
        found = count_data(data.sources(), root)
    except RecipeError as err:
        err.message += f" (data root {root}, from {where})"
        raise
    planned_counts = list(data.class_counts)
    differences = []
    if (found.train_size, found.val_size) != (data.train_size, data.val_size):
        differences.append(
            f"train {found.train_size} / val {found.val_size} images, "
            f"the plan counted {data.train_size} / {data.val_size}"
        )
    if any(planned_counts):
        if list(found.class_names) != list(data.class_names):
            differences.append(f"classes {list(found.class_names)[:10]}, the plan has {list(data.class_names)[:10]}")
        elif list(found.class_counts) != planned_counts:
            differences.append(
                f"train images per class {list(found.class_counts)[:10]}, the plan has {planned_counts[:10]}"
            )
    if differences:
        raise RecipeError(
            f"the data under {root} (from {where}) is not the data the plan was made with: " + "; ".join(differences),
            key="data.train",
            suggestion="point the run at the data the plan was compiled against, or compile the recipe again",
        )


def version_warnings(plan: Plan) -> list[str]:
    """One line per library whose version differs from the one the plan was made with."""
    now = {"torch": torch.__version__, "torchvision": torchvision.__version__, "ftcompile": ftcompile.__version__}
    return [
        f"warning: the plan was made with {lib} {plan.versions.get(lib)}, this is {version}"
        for lib, version in now.items()
        if plan.versions.get(lib) != version
    ]


def rerun_run(run_dir: Path, out: Path | None) -> int:
    plan, env = open_run(run_dir)
    portable.enter(plan.run.reproducible)

    d = distributed.init(plan.run.device)
    with blamed(_source(run_dir)):
        root = Path(env.get("data_root") or ".")
        check_data(plan, root, f"data_root in {run_dir / 'env.json'}")
        if d.main:
            for line in version_warnings(plan) + changed_since(run_dir, plan, env):
                print(line, file=sys.stderr)
        _main_then_all(d, lambda: verify_images(plan, root))
        _main_then_all(d, lambda: fetch_weights(plan))
        lock = RunLock()
        new_dir = _main_then_all(d, lambda: new_run_dir(plan, out, lock))
        with lock:
            if d.main:
                recipe = run_dir / "recipe.toml"
                _write_record(
                    new_dir,
                    plan,
                    recipe.read_text(encoding="utf-8") if recipe.is_file() else None,
                    _with_backend(
                        {**env, **rerun_record(plan, env), "processes": d.world, "rerun_of": str(run_dir)}, None
                    ),
                )
            distributed.barrier(d)
            _train(plan, new_dir, root, None, d)
    distributed.shutdown(d)
    return 0


def rerun_record(plan: Plan, env: dict[str, Any]) -> dict[str, Any]:
    """What a rerun records of its own: the data and machine it runs on (the recipe's
    provenance stays the original run's: the plan is the original's)."""
    record: dict[str, Any] = {"machine": provenance.machine()}
    try:
        record["data"] = provenance.data_fingerprint(plan.to_dict()["data"], Path(env["data_root"]))
    except (RecipeError, OSError):
        pass  # data that cannot be listed fails the run itself, with its own message
    return record


def upstream_model(plan: Plan, root: Path) -> Path | None:
    """model.pt of a finished run of the upstream plan (weights = "other.toml"), trained
    first when there is none; None when the weights name no upstream recipe. Done before
    this run seeds its RNGs, so training the upstream first or finding it gives one result."""
    weights = plan.model.weights
    if weights.kind != "recipe" or weights.plan is None or weights.value is None or weights.root is None:
        return None
    found = finished_upstream(plan)
    if found is not None:
        return found
    upstream = Plan.from_dict(weights.plan, source=weights.value)
    upstream_root = root / weights.root
    print(f"weights: no finished run of {weights.value} (plan {upstream.hash[:8]}); training it first", flush=True)
    return run_new(upstream, upstream_root / Path(weights.value).name, upstream_root, None) / "model.pt"


def _train(
    plan: Plan, run_dir: Path, root: Path, state: dict[str, Any] | None, d: Any, backend: dict[str, Any] | None = None
) -> None:
    if backend is not None and d.enabled:
        raise RecipeError(
            "--backend ray in a DDP run (torchrun): a DDP run's trial phases on Ray is not supported yet",
            key="--backend",
            suggestion="leave out --backend, or run on one process",
        )
    upstream = upstream_model(plan, root)
    if not d.main:
        train(plan, run_dir, root, state, d, upstream=upstream)
        return
    outputs.remove_stale_temps(run_dir)  # what a killed writer left (only ftcompile's own temporary names)

    status = RunStatus(run_dir, plan, state)
    runner = make_backend(backend)  # None: the alternatives run here, one after another
    try:
        # summary.json; TensorBoard when asked; peak memory per phase (runtime/cost.py)
        with status.tracking(), log_hooks(plan, run_dir) as hooks, cost.metered(plan) as meter:
            result = train(
                plan,
                run_dir,
                root,
                state,
                d,
                upstream=upstream,
                hooks=[status, meter, *hooks],
                backend=runner,
            )
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: the checkpoints on disk are complete (atomic writes); say how to go on.
        raise Interrupted(signum_of(exc), f"interrupted; continue with `ftcompile resume {run_dir}`") from None
    finally:
        if runner is not None:
            runner.close()  # a local Ray it started is shut down
    print_summary(plan, result, run_dir)
    print(cost.table(plan, run_dir, meter))  # estimate against measurement, so a wrong estimate is seen
    _after_run(run_dir)
    print(run_dir)


def _after_run(run_dir: Path) -> None:
    """curves.png (plot extra) and the command that makes the run's report."""
    try:
        path = write_curves([run_dir], run_dir / "curves.png")
    except RecipeError as err:
        print(f"curves.png not written: {err.message} ({err.suggestion})")
    else:
        print(f"curves: {path}")
    print(f"report: ftcompile report {run_dir} -o {run_dir / 'report.html'}")


def _percent(rec: dict[str, Any] | None, key: str) -> str:
    return f"{100 * rec[key]:.2f}%" if rec and key in rec else "-"


def print_summary(plan: Plan, result: dict[str, Any], run_dir: Path | None = None) -> None:
    """The last evaluation of each phase, from metrics.jsonl when the run has one (so a
    resumed run shows the phases trained before the resume too)."""
    last = {}
    # Of a trial phase, the chosen alternative's evaluations (session.evals keeps only those).
    for rec in (continued_evals(run_dir, plan) if run_dir else []) or result["evals"]:
        last[rec["phase"]] = rec
    top5 = any("top5" in rec for rec in last.values())
    rows = [("phase", "steps", "val_loss", "top1", *(["top5"] if top5 else []))]
    for ph in plan.phases:
        rec = last.get(ph.name)
        rows.append(
            (
                ph.name,
                f"[{ph.begin}, {ph.end})",
                f"{rec['val_loss']:.4f}" if rec else "-",
                _percent(rec, "top1"),
                *([_percent(rec, "top5")] if top5 else []),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    print(f"time {result['seconds']:.1f} s")
