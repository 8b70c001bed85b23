"""`--backend ray`: the options and their errors, the backend recorded in the run, and (slow,
with a local Ray of 2 CPUs) the same files as the sequential search, a worker killed inside a
stretch retried with the result unchanged, and the driver interrupted and resumed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from ftcompile.runtime import ray_backend
from ftcompile.runtime.ray_backend import backend_record, run_in_worker
from runtime_helpers import (
    assert_same_tensors,
    cli,
    cli_process,
    load_tensors,
    metrics_bytes,
    recipe_text,
    write_recipe,
)

from ftcompile.errors import RecipeError

# Two trial phases: `head2` tries 4 LRs of the head, the best 2 at half its window go on
# (successive halving: stretches from the fork and from a rung point); `late` tries 2 depths.
PHASES = """
[phases.warm]
train = ["head"]
steps = 2
lr = { head = 0.05 }

[phases.head2]
after = ["warm"]
train = ["head"]
steps = 4
lr = { head = 0.05 }
[phases.head2.trials]
"lr.head" = [0.5, 0.1, 0.03, 0.01]
select = "val_loss"
prune = { at = [0.5], keep = 0.5 }

[phases.late]
after = ["head2"]
train = ["late", "head"]
steps = 3
lr = { head = 0.02, late = "head / 10" }
scheduler = { type = "CosineAnnealingLR" }
[phases.late.trials]
train = [["head"], ["late", "head"]]
keep = "all"
"""
RUN = 'checkpoint_every = "2 steps"\neval_every = "100 steps"'


def tiny(tmp_path: Path) -> Path:
    return write_recipe(tmp_path, recipe_text("ray-trials", PHASES, run=RUN))


def env_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "env.json").read_text())


# ---------------------------------------------------------------- options (no Ray started)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--backend", "ray", "--max-parallel", "0"], "--max-parallel 0: at least one alternative must run"),
        (["--backend", "ray", "--gpus-per-trial", "-1"], "--gpus-per-trial -1: a number of GPUs is 0 or more"),
        (["--backend", "ray", "--gpus-per-trial", "2"], "is not supported yet"),
        (["--address", "auto"], "--address is an option of the Ray backend"),
        (["--max-parallel", "2"], "--max-parallel is an option of the Ray backend"),
        (["--backend", "sequential", "--gpus-per-trial", "1"], "--gpus-per-trial is an option of the Ray backend"),
        (["--backend", "ray", "--nproc", "2"], "--backend ray with --nproc"),
        (["--backend", "ray", "--address", ""], "--address is empty"),
    ],
)
def test_options_that_make_no_sense_are_exit_2_before_a_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    result = cli(capsys, "run", tiny(tmp_path), *args)
    assert result.rc == 2 and says in result.err and "Traceback" not in result.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU can run --gpus-per-trial 1")
def test_gpus_per_trial_on_a_machine_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, "run", tiny(tmp_path), "--backend", "ray", "--gpus-per-trial", "1")
    assert result.rc == 2 and "this machine has no CUDA GPU" in result.err
    assert not (tmp_path / "runs").exists()


def test_gpus_per_trial_with_a_plan_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # With an --address, the GPUs may be the cluster's: the plan's run.device = "cpu" still refuses them.
    result = cli(capsys, "run", tiny(tmp_path), "--backend", "ray", "--gpus-per-trial", "1", "--address", "auto")
    assert result.rc == 2 and 'the plan runs on the CPU (run.device = "cpu")' in result.err
    assert not (tmp_path / "runs").exists()


def test_backend_ray_without_ray_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = cli(capsys, "run", tiny(tmp_path), "--backend", "ray")
    assert result.rc == 2 and "Traceback" not in result.err
    assert 'pip install "ftcompile[ray]"' in result.err and "--backend" in result.err
    assert not (tmp_path / "runs").exists()


def test_resume_keeps_the_recorded_backend_unless_another_is_given() -> None:
    recorded = {"name": "ray", "address": "auto", "gpus_per_trial": 0, "max_parallel": 2}
    assert backend_record(None, None, None, None, recorded) == recorded
    assert backend_record(None, None, None, 4, recorded) == {**recorded, "max_parallel": 4}
    assert backend_record("sequential", None, None, None, recorded) is None
    assert backend_record("ray", None, None, None, recorded) == {**recorded, "address": None, "max_parallel": None}
    assert backend_record(None, None, None, None, None) is None
    with pytest.raises(RecipeError, match="--address is an option of the Ray backend"):
        backend_record(None, "auto", None, None, None)  # a run recorded without a backend
    with pytest.raises(RecipeError, match="--max-parallel is an option of the Ray backend"):
        backend_record("sequential", None, None, 2, recorded)


def test_a_worker_that_cannot_see_the_run_directory_says_so(tmp_path: Path) -> None:
    from ftcompile.runtime.search import Stretch

    missing = tmp_path / "not-shared"
    with pytest.raises(RecipeError) as err:
        run_in_worker(str(missing), Stretch("head2", 0, 2, 5), 1, ray_backend._versions())
    assert str(err.value).startswith(f"{missing}: --backend: the Ray worker on {ray_backend.socket.gethostname()}")
    assert "cannot see this run directory (no plan.json there)" in str(err.value)


def test_a_worker_with_other_versions_refuses(tmp_path: Path) -> None:
    from ftcompile.runtime.search import Stretch

    (tmp_path / "plan.json").write_text("{}")
    driver = {**ray_backend._versions(), "torch": "0.0.1"}
    with pytest.raises(RecipeError, match=r"runs torch .* \(driver 0\.0\.1\)"):
        run_in_worker(str(tmp_path), Stretch("head2", 0, 2, 5), 1, driver)


# ---------------------------------------------------------------- runs on a local Ray (2 CPUs)

CONTROL = "FTCOMPILE_TEST_RAY_CONTROL"


def _worker_controls() -> Callable[[], None]:
    """What each Ray worker process does after every optimizer step, steered by files in the
    control folder: note that a worker stepped; die on the spot (`kill`: the first worker to
    take the file); wait until two workers are inside a stretch at once (`meet`); send SIGINT
    to the driver (`interrupt`, holding its pid). A closure, so that Ray pickles it by value
    (the workers cannot import this test module)."""

    def setup() -> None:
        import os
        import signal
        import time
        from pathlib import Path

        from torch.optim.optimizer import register_optimizer_step_post_hook

        control = Path(os.environ[CONTROL])
        me = os.getpid()

        def taken(name: str) -> bool:
            try:
                os.rename(control / name, control / f"{name}-taken-by-{me}")
            except FileNotFoundError:
                return False
            return True

        def after_step(*_: object) -> None:
            (control / f"worker-{me}").touch()
            if taken("kill"):
                os._exit(1)  # as a worker killed by the OOM killer or a lost node: no cleanup
            if (control / "meet").exists() and not (control / f"arrived-{me}").exists():
                (control / f"arrived-{me}").touch()
                deadline = time.monotonic() + 300
                while len(list(control.glob("arrived-*"))) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                if len(list(control.glob("arrived-*"))) < 2:
                    (control / f"alone-{me}").touch()
            if (control / "interrupt").exists():
                pid = int((control / "interrupt").read_text())
                if taken("interrupt"):
                    os.kill(pid, signal.SIGINT)

        register_optimizer_step_post_hook(after_step)

        # A stand-in for run_stretch in a folder marked `stand-in` (the backend's own tests):
        # no training; fails with a user error where a `fail-<k>` file says so.
        from ftcompile.runtime import search
        from ftcompile.runtime import stretch as work

        real = work.run_stretch

        def run_stretch(run_dir: Path, stretch: search.Stretch) -> search.StretchResult:
            if not (run_dir / "stand-in").exists():
                return real(run_dir, stretch)
            (control / f"start-{stretch.k}-{me}").touch()
            if (run_dir / f"fail-{stretch.k}").exists():
                from ftcompile.errors import RecipeError

                raise RecipeError(f"stretch {stretch.k} cannot read its data", key="data.train")
            return search.StretchResult(stretch, {"k": stretch.k, "val_loss": 1.0 / (1 + stretch.k)}, stretch.end)

        work.run_stretch = run_stretch

    return setup


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray of 2 CPUs for this module (shut down after it, whatever happens); the
    driver computes with 1 thread, so each alternative is a 1-CPU task and 2 run at once."""
    ray = pytest.importorskip("ray")
    control = tmp_path_factory.mktemp("ray-control")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            runtime_env={"worker_process_setup_hook": _worker_controls(), "env_vars": {CONTROL: str(control)}},
        )
        yield control
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)


def _clear(control: Path) -> None:
    for path in control.iterdir():
        path.unlink()


@pytest.fixture(scope="module")
def runs(ray_local: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny recipe run sequentially, on Ray with 2 alternatives at once, on Ray with a
    worker killed inside a stretch, and on Ray with the driver interrupted inside a trial
    phase and then resumed (with the backend the run recorded)."""
    tmp = tmp_path_factory.mktemp("ray-runs")
    recipe = tiny(tmp)
    control = ray_local
    out = {"sequential": tmp / "sequential", "ray": tmp / "ray", "killed": tmp / "killed", "driver": tmp / "driver"}
    assert cli(None, "run", recipe, "--out", out["sequential"]).rc == 0
    assert not list(control.glob("worker-*"))  # the sequential run stepped in this process only

    _clear(control)
    (control / "meet").touch()
    assert cli(None, "run", recipe, "--out", out["ray"], "--backend", "ray", "--max-parallel", "2").rc == 0
    out["met"] = tmp / "met"
    out["met"].mkdir()
    for path in control.glob("arrived-*"):
        path.rename(out["met"] / path.name)
    assert not list(control.glob("alone-*"))

    _clear(control)
    (control / "kill").touch()
    assert cli(None, "run", recipe, "--out", out["killed"], "--backend", "ray").rc == 0
    assert len(list(control.glob("kill-taken-by-*"))) == 1  # one worker died inside a stretch

    _clear(control)
    (control / "interrupt").write_text(str(os.getpid()))
    assert cli(None, "run", recipe, "--out", out["driver"], "--backend", "ray").rc == 130
    assert len(list(control.glob("interrupt-taken-by-*"))) == 1
    assert not (out["driver"] / "model.pt").exists()
    _clear(control)
    assert cli(None, "resume", out["driver"]).rc == 0
    assert list(control.glob("worker-*"))  # the resumed run's alternatives ran on Ray again
    return out


def same_run(a: Path, b: Path) -> None:
    assert_same_tensors(load_tensors(a / "model.pt"), load_tensors(b / "model.pt"))
    for name in ("lr.csv", "trials.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert metrics_bytes(a) == metrics_bytes(b)  # all but the steps' wall-clock timing


@pytest.mark.slow
def test_ray_equals_sequential_bitwise_with_two_alternatives_at_once(runs: dict[str, Path]) -> None:
    assert len(list(runs["met"].iterdir())) == 2  # two workers were inside a stretch at the same time
    same_run(runs["sequential"], runs["ray"])
    rows = (runs["ray"] / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 + 2 and sum(",true" in r for r in rows) == 2
    assert env_of(runs["ray"])["backend"] == {"name": "ray", "address": None, "gpus_per_trial": 0, "max_parallel": 2}
    assert "backend" not in env_of(runs["sequential"])


@pytest.mark.slow
def test_a_worker_killed_inside_a_stretch_is_retried_with_the_same_result(runs: dict[str, Path]) -> None:
    same_run(runs["sequential"], runs["killed"])


@pytest.mark.slow
def test_the_driver_interrupted_resumes_on_the_recorded_backend_bitwise(runs: dict[str, Path]) -> None:
    same_run(runs["sequential"], runs["driver"])
    assert env_of(runs["driver"])["backend"]["name"] == "ray"


@pytest.mark.slow
def test_results_in_stretch_order_and_a_stretch_error_is_the_runs_not_retried(ray_local: Path, tmp_path: Path) -> None:
    from ftcompile.runtime.ray_backend import RayBackend
    from ftcompile.runtime.search import Stretch

    control = ray_local
    _clear(control)
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "stand-in").touch()
    stretches = [Stretch("head2", k, 2, 4) for k in range(5)]
    backend = RayBackend(max_parallel=2)
    results = backend.run(tmp_path, stretches)
    assert [r.stretch for r in results] == stretches
    assert [r.score for r in results] == [{"k": k, "val_loss": 1.0 / (1 + k)} for k in range(5)]
    _clear(control)
    (tmp_path / "fail-1").touch()
    with pytest.raises(RecipeError, match="stretch 1 cannot read its data") as err:
        backend.run(tmp_path, stretches[:2])
    assert err.value.key == "data.train"
    assert len(list(control.glob("start-1-*"))) == 1  # the stretch's own error: not tried again
    backend.close()  # the Ray it did not start stays up
    assert pytest.importorskip("ray").is_initialized()


@pytest.mark.slow
def test_a_worker_that_cannot_see_the_run_directory_fails_its_task(ray_local: Path, tmp_path: Path) -> None:
    from ftcompile.runtime.ray_backend import RayBackend
    from ftcompile.runtime.search import Stretch

    with pytest.raises(RecipeError) as err:
        RayBackend().run(tmp_path / "elsewhere", [Stretch("head2", 0, 2, 4)])
    assert str(err.value).startswith(f"{tmp_path / 'elsewhere'}: --backend: the Ray worker on ")
    assert "cannot see this run directory (no plan.json there)" in str(err.value)


@pytest.mark.slow
def test_a_portable_run_starts_and_stops_its_own_local_ray(tmp_path: Path) -> None:
    """`ftcompile run R --backend ray` with no Ray running: the command starts a local Ray and
    shuts it down; a portable plan (1 thread, pinned instruction sets) gives the sequential bits."""
    text = recipe_text("ray-portable", PHASES, run=RUN + '\nreproducible = "portable"')
    recipe = write_recipe(tmp_path, text)
    sequential = cli_process("run", recipe, "--out", tmp_path / "sequential", cwd=tmp_path)
    assert sequential.returncode == 0, sequential.stderr
    on_ray = cli_process("run", recipe, "--out", tmp_path / "ray", "--backend", "ray", cwd=tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr
    assert "(run_in_worker pid=" in on_ray.stdout + on_ray.stderr  # Ray's workers printed the evaluations
    same_run(tmp_path / "sequential", tmp_path / "ray")


class _FakeRay:
    """What RayBackend._start asks of `ray`, for a cluster that has no CPU yet (an autoscaler's)."""

    def __init__(self) -> None:
        self.shut = False
        self.options: dict = {}

    def is_initialized(self) -> bool:
        return True  # this process's own Ray: used, left running

    def cluster_resources(self) -> dict:
        return {"CPU": 0.0}

    def remote(self, fn: object) -> object:
        fake = self

        class Remote:
            def options(self, **options: object) -> object:
                fake.options = options
                return self

        return Remote()

    def shutdown(self) -> None:
        self.shut = True


def test_a_cluster_without_the_resources_yet_is_a_warning_and_a_callers_ray_stays_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ftcompile.runtime.ray_backend import RayBackend

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    backend = RayBackend(max_parallel=2)
    backend._start()
    err = capsys.readouterr().err
    assert f"each alternative asks Ray for {backend.threads} CPU" in err and "wait until a node" in err
    assert fake.options["num_cpus"] == backend.threads and fake.options["num_gpus"] == 0
    assert fake.options["max_retries"] == ray_backend.RETRIES
    backend.close()
    assert not fake.shut
