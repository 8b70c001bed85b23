"""Issue 17, 1-2 and 6 (export), on real runs: no command destroys a file it does not own,
every file is written atomically, an OS error while writing is one message (exit 2).

The run is the session's shared finished run (conftest.used_run), copied where a test could
write into it. A full disk is runtime_helpers.FullDisk behind the writer's `open_new` seam
(the ONNX exporter opens its file itself: FullDisk behind its `open`); a real OS error is a
file-size limit (RLIMIT_FSIZE) in a child process.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from runtime_helpers import CliResult, FullDisk, child_env, cli, recipe_text, write_recipe

from ftcompile import outputs
from ftcompile.errors import RecipeError

pytestmark = pytest.mark.slow

FORMATS = ["torchscript", "safetensors", "onnx"]


def refused(result: CliResult, *words: str) -> None:
    assert result.rc == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, (word, result.err)


def copy_run(used_run: tuple[Path, str], dest: Path, checkpoints: bool = False) -> Path:
    """The shared run, copied (without its checkpoints unless asked: exports and reports read model.pt)."""
    ignore = None if checkpoints else shutil.ignore_patterns("checkpoints", "tensorboard")
    shutil.copytree(used_run[0], dest, ignore=ignore)
    return dest


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if outputs.TEMP_NAME.match(p.name))


def fail_writes(monkeypatch: pytest.MonkeyPatch, fmt: str, make: Any) -> None:
    """Every file the export opens for writing is `make(path)`: the atomic writer's files, and
    the file the ONNX exporter opens itself (onnx.save's `open`)."""
    monkeypatch.setattr(outputs, "open_new", make)
    if fmt == "onnx":
        import onnx

        monkeypatch.setattr(onnx, "open", lambda path, mode="r", *a, **k: make(Path(path)), raising=False)


# ---------------------------------------------------------------- 1. nothing that is not theirs


def test_report_o_naming_a_run_file_is_refused(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report RUN -o RUN/model.pt` exited 0 and the run's model.pt was HTML."""
    run_dir, other = copy_run(used_run, tmp_path / "run"), copy_run(used_run, tmp_path / "other")
    model = (run_dir / "model.pt").read_bytes()
    refused(
        cli(capsys, "report", run_dir, "-o", run_dir / "model.pt"),
        f"{run_dir / 'model.pt'} is inside the run directory",
        "would replace the run's own model.pt",
    )
    refused(
        cli(capsys, "report", run_dir, "-o", run_dir / "model.pt", "--force"), "would replace the run's own model.pt"
    )
    # another run's folder, even its report.html (this report is not about it)
    refused(cli(capsys, "report", run_dir, "-o", other / "report.html"), f"inside the run directory {other.resolve()}")
    assert (run_dir / "model.pt").read_bytes() == model and not (other / "report.html").exists()


def test_export_into_another_run_is_refused(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`export runA -o runB/model.pt` replaced run B's weights."""
    run_a, run_b = copy_run(used_run, tmp_path / "a"), copy_run(used_run, tmp_path / "b")
    (run_b / "model.pt").write_bytes(b"run B's weights")
    for fmt, target in (("torchscript", "model.pt"), ("onnx", "model.onnx"), ("safetensors", "sub/x.safetensors")):
        refused(
            cli(capsys, "export", run_a, "--format", fmt, "-o", run_b / target, "--force"),
            f"inside the run directory {run_b.resolve()}",
        )
    assert (run_b / "model.pt").read_bytes() == b"run B's weights"
    assert sorted(p.name for p in run_b.iterdir()) == sorted(p.name for p in run_a.iterdir())


@pytest.mark.parametrize("make, says", [("devnull", "is a device"), ("fifo", "is a FIFO"), ("folder", "is a folder")])
def test_export_to_a_device_fifo_or_folder_is_refused(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str, says: str
) -> None:
    """`export -o /dev/full` replaced the device with a regular file."""
    path = Path(os.devnull) if make == "devnull" else tmp_path / make
    if make == "fifo":
        os.mkfifo(path)
    elif make == "folder":
        path.mkdir()
    mode = path.lstat().st_mode
    refused(cli(capsys, "export", used_run[0], "--format", "safetensors", "-o", path, "--force"), str(path), says)
    assert path.lstat().st_mode == mode


def test_an_earlier_export_is_replaced_and_a_foreign_file_needs_force(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.pt"
    for _ in range(2):  # the second export replaces the first: its sidecar says it is an export
        r = cli(capsys, "export", used_run[0], "--format", "torchscript", "-o", out)
        assert r.rc == 0, r.err
    foreign = tmp_path / "mine.pt"
    foreign.write_bytes(b"my own model")
    refused(
        cli(capsys, "export", used_run[0], "--format", "torchscript", "-o", foreign),
        f"{foreign} exists and is not an export",
        "--force",
    )
    assert foreign.read_bytes() == b"my own model" and not (tmp_path / "mine.pt.json").exists()
    lonely = tmp_path / "new.pt"
    (tmp_path / "new.pt.json").write_text('{"my": "settings"}')  # the sidecar's path holds a foreign file
    refused(
        cli(capsys, "export", used_run[0], "--format", "torchscript", "-o", lonely), "new.pt.json exists and is not"
    )
    assert not lonely.exists()
    r = cli(capsys, "export", used_run[0], "--format", "torchscript", "-o", foreign, "--force")
    assert r.rc == 0, r.err
    x = torch.zeros(1, 3, 16, 16)
    assert torch.equal(torch.jit.load(str(foreign))(x), torch.jit.load(str(out))(x))
    assert debris(tmp_path) == []


def test_lr_find_never_writes_below_a_run_directory(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lr-find refused `-o RUN` but wrote into `-o RUN/checkpoints` (after training)."""
    run_dir = copy_run(used_run, tmp_path / "run", checkpoints=True)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    refused(
        cli(capsys, "lr-find", run_dir / "recipe.toml", "--phase", "full", "-o", run_dir / "checkpoints"),
        "inside the run directory",
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_run_out_inside_another_run_is_refused(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --out RUN/checkpoints/new` made a run directory inside another run's folder."""
    run_dir = copy_run(used_run, tmp_path / "run")
    before = sorted(str(p) for p in run_dir.rglob("*"))
    refused(
        cli(capsys, "run", run_dir / "recipe.toml", "--out", run_dir / "tensorboard" / "new"),
        f"inside the run directory {run_dir.resolve()}",
    )
    assert sorted(str(p) for p in run_dir.rglob("*")) == before


# ---------------------------------------------------------------- 2. atomic, with one message


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_on_a_full_disk_is_one_message_and_the_earlier_export_stays(
    used_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    """torchscript aborted the process (c10::Error, exit 134), safetensors gave a traceback,
    onnx said "(path not known)"; each left a torn file."""
    out = tmp_path / f"model.{fmt}"
    assert cli(capsys, "export", used_run[0], "--format", fmt, "-o", out).rc == 0
    before = {p: p.read_bytes() for p in (out, outputs.sidecar_of(out))}
    with monkeypatch.context() as m:
        fail_writes(m, fmt, lambda p: FullDisk(p, 1000))
        r = cli(capsys, "export", used_run[0], "--format", fmt, "-o", out)
    refused(r, f"{out}: cannot write: No space left on device")
    assert {p: p.read_bytes() for p in before} == before
    assert debris(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_into_a_folder_that_cannot_be_written_is_one_message(
    used_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    """Issue 17, 6: a traceback for safetensors and torchscript."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    refused(cli(capsys, "export", used_run[0], "--format", fmt, "-o", blocker / "sub" / "m.bin"), str(blocker / "sub"))

    def denied(p: Path) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))

    folder = tmp_path / "locked"
    folder.mkdir()
    with monkeypatch.context() as m:
        fail_writes(m, fmt, denied)
        r = cli(capsys, "export", used_run[0], "--format", fmt, "-o", folder / "m.bin")
    refused(r, f"{folder / 'm.bin'}: cannot write: Permission denied", "check the permissions")
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
@pytest.mark.parametrize("fmt", ["torchscript", "safetensors"])
def test_export_into_a_read_only_folder_is_one_message(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        refused(
            cli(capsys, "export", used_run[0], "--format", fmt, "-o", folder / "m.bin"),
            f"{folder / 'm.bin'}: cannot write: Permission denied",
        )
    finally:
        folder.chmod(stat.S_IRWXU)


def _limited(limit: int) -> Any:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG

    return apply


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_real_write_failure_in_a_child_process_is_exit_2_never_an_abort(
    used_run: tuple[Path, str], tmp_path: Path, fmt: str
) -> None:
    """The OS refuses the bytes (a 1 MB file-size limit; the model is 45 MB): exit 2 with the
    path and the OS's reason, not exit 134 from torch.jit.save's C++, and the earlier export stays."""
    out = tmp_path / f"model.{fmt}"
    assert cli(None, "export", used_run[0], "--format", fmt, "-o", out).rc == 0
    before = out.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "ftcompile", "export", str(used_run[0]), "--format", fmt, "-o", str(out)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limited(1 << 20),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert f"{out}: cannot write: {os.strerror(errno.EFBIG)}" in done.stderr
    assert out.read_bytes() == before and debris(tmp_path) == []


def test_a_report_on_a_full_disk_is_one_message_and_the_earlier_report_stays(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = copy_run(used_run, tmp_path / "run")
    out = tmp_path / "report.html"
    assert cli(capsys, "report", run_dir, "-o", out).rc == 0
    before = out.read_bytes()
    with monkeypatch.context() as m:
        real = outputs.open_new  # the report's own file fills the disk (not the figures it draws in a temporary folder)
        m.setattr(outputs, "open_new", lambda p: FullDisk(p, 5000) if p.name.startswith(".report.html") else real(p))
        r = cli(capsys, "report", run_dir, "-o", out)  # an earlier report: replaced without --force
    refused(r, f"{out}: cannot write: No space left on device")
    assert out.read_bytes() == before and debris(tmp_path) == []
    assert cli(capsys, "report", run_dir, "-o", out).rc == 0 and out.read_bytes() != b""


def test_plan_outputs_on_a_full_disk_are_one_message_and_the_old_files_stay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = write_recipe(
        tmp_path, recipe_text("full", '[phases.a]\ntrain = ["head"]\nsteps = 4\nlr = { head = 0.1 }\n')
    )
    files = {"-o": tmp_path / "plan.json", "--trace": tmp_path / "lr.csv", "--plot": tmp_path / "lr.png"}
    for option, path in files.items():
        assert cli(capsys, "plan", recipe, option, path).rc == 0
    before = {p: p.read_bytes() for p in files.values()}
    with monkeypatch.context() as m:
        m.setattr(outputs, "open_new", lambda p: FullDisk(p, 50))
        for option, path in files.items():
            refused(
                cli(capsys, "plan", recipe, "--set", "seed=3", option, path),
                f"{path}: cannot write: No space left on device",
            )
    assert {p: p.read_bytes() for p in files.values()} == before and debris(tmp_path) == []


def test_the_writer_on_a_full_disk_leaves_the_old_file_at_any_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "eval.json"
    path.write_text('{"old": true}')
    for budget in (0, 1, 4095, 4096, 9999):
        monkeypatch.setattr(outputs, "open_new", lambda p, b=budget: FullDisk(p, b))
        with pytest.raises(RecipeError) as caught:
            outputs.write_json(path, {"x": "y" * 10_000})
        assert f"{path}: cannot write: No space left on device" in str(caught.value)
        assert path.read_text() == '{"old": true}' and debris(tmp_path) == []


class _Interrupting(FullDisk):
    """A file whose writes stop with Ctrl-C once `budget` bytes are in (SIGTERM is raised alike)."""

    def write(self, data: object) -> int:
        if len(memoryview(data).cast("B")) > self.budget:
            raise KeyboardInterrupt
        return super().write(data)


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors"])
def test_an_interrupted_export_leaves_the_earlier_one_and_no_debris(
    used_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    out = tmp_path / "model.bin"
    assert cli(capsys, "export", used_run[0], "--format", fmt, "-o", out).rc == 0
    before = out.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(outputs, "open_new", lambda p: _Interrupting(p, 100_000))
        r = cli(capsys, "export", used_run[0], "--format", fmt, "-o", out)
    assert r.rc == 130
    assert out.read_bytes() == before and debris(tmp_path) == []


KILLED_EXPORT = """\
import os, signal, sys
from ftcompile import outputs
from ftcompile.cli import main

class Killed:
    '''The new file: 1 MB goes out, then the process gets the signal.'''
    def __init__(self, path): self.fh, self.n = open(path, "wb"), 0
    def __enter__(self): return self
    def __exit__(self, *exc): self.fh.close()
    def fileno(self): return self.fh.fileno()
    def flush(self): self.fh.flush()
    def write(self, data):
        self.n += self.fh.write(data)
        if self.n > 1 << 20:
            self.fh.flush()
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return len(data)

outputs.open_new = Killed
sys.exit(main(["export", sys.argv[2], "--format", "torchscript", "-o", sys.argv[3]]))
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_export_leaves_the_earlier_one_and_no_debris_for_good(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: str
) -> None:
    """SIGTERM during `export --format torchscript` over a good export left a torn 485 KB
    file. Now the earlier export stays whole; SIGTERM cleans up at once (exit 143), and what
    SIGKILL leaves is removed by the next export of that file."""
    out = tmp_path / "model.pt"
    assert cli(capsys, "export", used_run[0], "--format", "torchscript", "-o", out).rc == 0
    before = out.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, sig, str(used_run[0]), str(out)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.read_bytes() == before
    if sig == "SIGTERM":
        assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
        assert debris(tmp_path) == []
    else:
        assert done.returncode == -signal.SIGKILL
        assert len(debris(tmp_path)) == 1  # nothing runs after SIGKILL
        assert cli(capsys, "export", used_run[0], "--format", "torchscript", "-o", out).rc == 0
        assert debris(tmp_path) == []
    x = torch.zeros(1, 3, 16, 16)
    assert torch.jit.load(str(out))(x).shape == (1, 10)


def test_resume_removes_stale_temporary_files_and_nothing_else(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill while model.pt was written left `.model.pt.tmp-PID` for good, even after a
    successful resume. Resume removes ftcompile's temporary names (run directory and below),
    never a file that only looks like one."""
    run_dir = copy_run(used_run, tmp_path / "run", checkpoints=True)
    (run_dir / "model.pt").unlink()  # killed while model.pt was written: the run is not finished
    pid = dead_pid()
    stale = [
        run_dir / f".model.pt.tmp-{pid}",
        run_dir / "checkpoints" / f".step-00000008.pt.tmp-{pid}",
        run_dir / f".summary.json.tmp-{pid}",
    ]
    foreign = [run_dir / ".model.pt.tmp-notmine.txt", run_dir / "notes.tmp", run_dir / f"model.pt.tmp-{pid}"]
    for p in stale + foreign:
        p.write_bytes(b"torn")
    r = cli(capsys, "resume", run_dir)
    assert r.rc == 0, r.err
    assert (run_dir / "model.pt").is_file()
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"torn" for p in foreign)
    assert debris(run_dir) == []


def test_the_writer_is_the_one_for_checkpoints_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint.atomic_save goes through outputs.writing: same temporary name, same cleanup."""
    from ftcompile.runtime import checkpoint

    seen: list[str] = []
    real = outputs.writing

    def spy(path: Path, opener: Any = None) -> Any:
        seen.append(path.name)
        return real(path, opener)

    monkeypatch.setattr(outputs, "writing", spy)
    checkpoint.atomic_save({"w": torch.ones(2)}, tmp_path / "best.pt")
    assert seen == ["best.pt"] and (tmp_path / "best.pt").is_file() and debris(tmp_path) == []
