"""`ftcompile run R --backend ray`: the alternatives of a trial phase side by side as Ray tasks.

The driver (the `ftcompile run` process) builds a rung's stretches (runtime/search.py) and
hands them to a backend; this one runs each `Stretch` as a Ray task that calls
`stretch.run_stretch(run_dir, stretch)` (runtime/stretch.py) in a worker process. The worker reads the stretch's
start state from the run directory and writes only under `trials/<phase>/<k>/`; the driver
reads the results back in stretch order and judges. So the run directory must be on storage
every worker sees (one machine: any folder; a cluster: a shared file system), and a worker
that cannot see it fails its task with a message naming the path and the node.

Ray decides placement, resources and retries; nothing here schedules:
- each task asks for `num_gpus = G` (`--gpus-per-trial`) and, on a CPU, as many CPUs as the
  threads it computes with (a cluster with fewer now is a warning: an autoscaler may add them);
- at most K tasks are in flight (`--max-parallel`, a `ray.wait` window), else as many as the
  cluster's resources allow;
- a worker that dies (killed, out of memory, its node lost) is retried by Ray (`max_retries`)
  from the stretch's start state on disk, so the result is the same. An error the stretch
  raises itself (bad data, a missing file) is not retried: it is the run's error.

Bitwise equality with the sequential backend needs the same computation in the worker: the
worker sets torch's intra-op threads to the driver's count (`torch.get_num_threads()` when the
run started, which is 1 for a portable plan) and gets the driver's instruction-set and thread
pins (ftcompile/portable.py's variables, those set in the driver) in its environment, and it
refuses to run under other torch / torchvision / ftcompile versions than the driver's.

No `ray` import at module level: `--backend ray` without Ray installed is one message
(`pip install "ftcompile[ray]"`) before any run directory is made.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision

import ftcompile
from ftcompile import portable
from ftcompile.errors import RecipeError

if TYPE_CHECKING:
    from ftcompile.runtime.search import Stretch, StretchResult

BACKENDS = ("sequential", "ray")
INSTALL = 'pip install "ftcompile[ray]"'
RETRIES = 3  # how often Ray starts a stretch again after its worker died (Ray's default for tasks)


def require_ray() -> Any:
    """The `ray` module, or one message saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RecipeError(
            "--backend ray needs Ray, which is not installed in this Python",
            key="--backend",
            suggestion=f"{INSTALL}, or run the alternatives one after another (--backend sequential)",
        ) from None


def backend_record(
    name: str | None,
    address: str | None,
    gpus_per_trial: int | None,
    max_parallel: int | None,
    recorded: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The backend a run uses, as env.json records it: None for the sequential backend (the
    default, recorded by leaving the key out), else {"name": "ray", "address", "gpus_per_trial",
    "max_parallel"}. `recorded` is the run's record (resume): kept unless a backend is given;
    options given without --backend change the recorded Ray backend's. Options that make no
    sense are one error each (exit 2), before any run directory is made."""
    options: dict[str, Any] = {"address": address, "gpus_per_trial": gpus_per_trial, "max_parallel": max_parallel}
    given = {k: v for k, v in options.items() if v is not None}
    if name is None:
        name = recorded["name"] if recorded else "sequential"
        base = dict(recorded) if recorded else {}
    else:
        base = {}
    if name == "sequential":
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise RecipeError(
                f"{flag} is an option of the Ray backend, and the alternatives run one after another here",
                key=flag,
                suggestion="add --backend ray, or leave it out",
            )
        return None
    record: dict[str, Any] = {"name": "ray", "address": None, "gpus_per_trial": 0, "max_parallel": None}
    record.update({k: base[k] for k in record if k in base and k != "name"})
    record.update(given)
    if record["max_parallel"] is not None and record["max_parallel"] < 1:
        raise RecipeError(
            f"--max-parallel {record['max_parallel']}: at least one alternative must run",
            key="--max-parallel",
            suggestion="e.g. --max-parallel 2, or leave it out to run as many as Ray's resources allow",
        )
    gpus = record["gpus_per_trial"]
    if gpus < 0:
        raise RecipeError(
            f"--gpus-per-trial {gpus}: a number of GPUs is 0 or more",
            key="--gpus-per-trial",
            suggestion="e.g. --gpus-per-trial 1",
        )
    if gpus > 1:
        raise RecipeError(
            f"--gpus-per-trial {gpus}: an alternative on several GPUs (a DDP gang per Ray task) is not supported yet",
            key="--gpus-per-trial",
            suggestion="--gpus-per-trial 1 runs one alternative per GPU, as many side by side as there are GPUs",
        )
    if gpus and record["address"] is None:
        if not torch.cuda.is_available():
            raise RecipeError(
                f"--gpus-per-trial {gpus}: this machine has no CUDA GPU, and no --address names a cluster that has",
                key="--gpus-per-trial",
                suggestion="leave it out (each alternative runs on CPUs), or give --address of a Ray cluster with GPUs",
            )
    if record["address"] == "":
        raise RecipeError(
            "--address is empty", key="--address", suggestion="e.g. --address auto, or --address ray://head:10001"
        )
    require_ray()
    return record


def check_device(record: dict[str, Any] | None, device: str) -> None:
    """A plan pinned to the CPU (run.device = "cpu") cannot use --gpus-per-trial."""
    if record and record["gpus_per_trial"] and device == "cpu":
        raise RecipeError(
            f'--gpus-per-trial {record["gpus_per_trial"]}: the plan runs on the CPU (run.device = "cpu")',
            key="--gpus-per-trial",
            suggestion='leave it out, or set run.device = "auto" (or "cuda") in the recipe',
        )


def make_backend(record: dict[str, Any] | None) -> RayBackend | None:
    """The backend of a record (None: the sequential one, which the driver makes itself)."""
    if record is None:
        return None
    return RayBackend(record["address"], record["gpus_per_trial"], record["max_parallel"])


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "ftcompile": ftcompile.__version__}


def _node() -> str:
    host = socket.gethostname()
    try:
        import ray  # the `ray` extra; this runs in a Ray worker, where it is installed

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 (the name is for a message only)
        return host
    return f"{host} ({ip})"


def run_in_worker(run_dir: str, stretch: Stretch, threads: int, versions: dict[str, str]) -> StretchResult:
    """What each Ray task runs: the stretch, in the worker's process, computing as the driver does."""
    node = _node()
    here = Path(run_dir)
    if not (here / "plan.json").is_file():
        raise RecipeError(
            f"the Ray worker on {node} cannot see this run directory (no plan.json there)",
            file=run_dir,  # named first, so that the CLI does not name the recipe instead
            key="--backend",
            suggestion="put the run directory on storage every Ray node mounts at the same path "
            "(--out /shared/runs/...), or run on one machine",
        )
    mine = _versions()
    if mine != versions:
        differ = ", ".join(
            f"{lib} {mine[lib]} (driver {versions[lib]})" for lib in versions if mine[lib] != versions[lib]
        )
        raise RecipeError(
            f"the Ray worker on {node} runs {differ}: its results would not be the driver's",
            file=run_dir,
            key="--backend",
            suggestion="install the same versions on every Ray node",
        )
    torch.set_num_threads(threads)
    # Imported in the worker: it builds a training session (loop, torch), which the driver's
    # import of this module (rundir, before any trial phase) does not need.
    from ftcompile.runtime import stretch as work

    return work.run_stretch(here, stretch)


class RayBackend:
    """Runs stretches as Ray tasks (see the module's docstring); the search's `Backend`."""

    def __init__(self, address: str | None = None, gpus_per_trial: int = 0, max_parallel: int | None = None) -> None:
        self.address, self.gpus, self.max_parallel = address, gpus_per_trial, max_parallel
        self.threads = torch.get_num_threads()  # the driver's, so the workers compute as it does
        self.versions = _versions()
        # The instruction-set and thread pins the driver runs with (portable.PINS' variables).
        self.env_vars = {k: os.environ[k] for k in (*portable.PINS, portable.MARK) if k in os.environ}
        self._ray: Any = None
        self._owned = False  # a Ray this backend started, shut down by close()
        self._task: Any = None

    def _start(self) -> Any:
        """Join the cluster (--address), use the Ray this process has initialised, or start a
        local one; done at the first trial phase, so a run without trials never starts Ray."""
        if self._ray is not None:
            return self._ray
        ray = require_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise RecipeError(
                    f"cannot reach the Ray cluster at {self.address}: {err}",
                    key="--address",
                    suggestion="start it first (`ray start --head` on the head node), "
                    "or leave out --address for a local Ray",
                ) from None
            self._owned = True
        self._ray = ray
        # An autoscaling cluster (KubeRay, a cluster launcher) may have fewer resources now than
        # it will start for the tasks, so too few is a warning: the tasks wait for them.
        resources = ray.cluster_resources()
        cpus = 1 if self.gpus else self.threads
        asked = {"GPU": self.gpus, "CPU": cpus}
        for kind, n in asked.items():
            if n and resources.get(kind, 0) < n:
                why = f" (its {self.threads} threads, as this process computes)" if kind == "CPU" else ""
                print(
                    f"warning: each alternative asks Ray for {n} {kind}{why}, and the Ray cluster has "
                    f"{resources.get(kind, 0):g} now: its tasks wait until a node that has them joins"
                    + ("; set OMP_NUM_THREADS lower before ftcompile starts" if kind == "CPU" else ""),
                    file=sys.stderr,
                    flush=True,
                )
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": self.gpus, "max_retries": RETRIES}
        if self.env_vars:
            options["runtime_env"] = {"env_vars": self.env_vars}
        self._task = ray.remote(run_in_worker).options(**options)
        return ray

    def run(self, run_dir: Path | None, stretches: Sequence[Stretch]) -> list[StretchResult]:
        """Every stretch as a Ray task, at most `max_parallel` at once; results in stretch order."""
        if run_dir is None:
            raise RecipeError(
                "--backend ray needs a run directory: the workers read and write it",
                key="--backend",
                suggestion="leave out --backend here",
            )
        ray = self._start()
        where = str(Path(run_dir).resolve())
        refs: list[Any] = []
        try:
            in_flight: list[Any] = []
            for stretch in stretches:
                if self.max_parallel is not None and len(in_flight) >= self.max_parallel:
                    # A window: the next task is submitted when one of the K in flight has finished.
                    _, in_flight = ray.wait(in_flight, num_returns=1)
                refs.append(self._task.remote(where, stretch, self.threads, self.versions))
                in_flight.append(refs[-1])
            return [self._get(ray, ref, stretch, where) for ref, stretch in zip(refs, stretches, strict=True)]
        except BaseException:
            for ref in refs:  # Ctrl-C or an error: no worker goes on writing into the run directory
                ray.cancel(ref, force=True)
            raise

    @staticmethod
    def _get(ray: Any, ref: Any, stretch: Stretch, run_dir: str) -> StretchResult:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, RecipeError):
                raise cause from None  # the stretch's own error: the run's message, exit 2
            raise
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.OutOfMemoryError,
        ) as err:
            raise RecipeError(
                f"alternative {stretch.k} of the trial phase {stretch.phase!r} (steps {stretch.begin}-{stretch.end}) "
                f"lost its Ray worker ({type(err).__name__}; tried {RETRIES + 1} times)",
                file=run_dir,
                key="--backend",
                suggestion="see the Ray logs (/tmp/ray/session_latest/logs on the worker's node); the finished "
                f"alternatives stay in the run directory: `ftcompile resume {run_dir}` goes on",
            ) from None

    def close(self) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._owned, self._task = None, False, None
