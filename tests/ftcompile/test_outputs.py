"""ftcompile.outputs: the one guard on output paths and the one atomic writer (issue 17, 1-2).

The guard is tested through `plan -o / --trace / --plot` (the commands without torch) and
directly, with a property over random path layouts; the writer with a disk that fills up,
an interrupt in the middle of a write, and temporary files that killed writers left.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ftcompile import outputs
from ftcompile.cli import main
from ftcompile.errors import RecipeError

Writer = Callable[..., Path]


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(result: tuple[int, str, str], *words: str) -> None:
    rc, _, err = result
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def fake_run(folder: Path) -> Path:
    """A run directory as `ftcompile run` leaves it, as far as the guard looks: plan.json and env.json."""
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text('{"format": 1, "hash": "ab", "phases": []}\n')
    (folder / "env.json").write_text('{"data_root": "."}\n')
    (folder / "model.pt").write_bytes(b"weights")
    return folder


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- 1. the guard, through `plan`


def test_plan_o_into_a_run_directory_is_refused_and_the_run_keeps_its_plan(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path
) -> None:
    """`plan other.toml -o RUN/plan.json` used to replace an unfinished run's plan (it could
    no longer resume). Also refused: a new file there, and a file in a folder below a run."""
    run_dir = fake_run(tmp_path / "runs" / "tiny" / "1-abcdef12")
    before = (run_dir / "plan.json").read_bytes()
    recipe = write(tiny)
    refused(
        run(capsys, "plan", recipe, "-o", run_dir / "plan.json"),
        f"{run_dir / 'plan.json'} is inside the run directory",
        "would replace the run's own plan.json",
    )
    assert (run_dir / "plan.json").read_bytes() == before
    refused(run(capsys, "plan", recipe, "--trace", run_dir / "lr.csv"), "only the run writes there")
    (run_dir / "checkpoints").mkdir()
    refused(
        run(capsys, "plan", recipe, "--plot", run_dir / "checkpoints" / "lr.png", "--force"), "inside the run directory"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "env.json", "model.pt", "plan.json"]
    assert list((run_dir / "checkpoints").iterdir()) == []


def test_an_earlier_output_of_the_same_kind_is_replaced(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    recipe = write(tiny)
    files = {"-o": tmp_path / "plan.json", "--trace": tmp_path / "lr.csv", "--plot": tmp_path / "lr.png"}
    args = [a for option, path in files.items() for a in (option, path)]
    assert run(capsys, "plan", recipe, *args)[0] == 0
    first = json.loads(files["-o"].read_text())["hash"]
    write(tiny.replace("seed = 0", "seed = 1"))
    rc, _, err = run(capsys, "plan", recipe, *args)  # without --force: each file is recognised
    assert rc == 0, err
    assert json.loads(files["-o"].read_text())["hash"] != first
    assert files["--trace"].read_text().startswith("step,phase,trial,")
    assert files["--plot"].read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.csv", "lr.png", "plan.json", "recipe.toml"]  # no debris


@pytest.mark.parametrize(
    "option, name, content",
    [
        ("-o", "plan.json", b'{"format": "mine", "notes": "my own JSON"}\n'),
        ("-o", "recipe.toml", None),  # the recipe itself
        ("--trace", "lr.csv", b"step,loss\n1,0.5\n"),
        ("--plot", "lr.png", b"\x89PNG\r\n\x1a\n a picture someone drew"),
    ],
)
def test_a_foreign_file_is_refused_without_force_and_replaced_with_it(
    capsys: pytest.CaptureFixture[str],
    write: Writer,
    tiny: str,
    tmp_path: Path,
    option: str,
    name: str,
    content: bytes | None,
) -> None:
    if option == "--plot":
        pytest.importorskip("matplotlib")
    recipe = write(tiny)
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    before = path.read_bytes()
    refused(
        run(capsys, "plan", recipe, option, path),
        f"{path} exists and is not",
        "written by ftcompile",
        "writing would destroy it",
        "--force",
    )
    assert path.read_bytes() == before
    rc, _, err = run(capsys, "plan", recipe, option, path, "--force")
    assert rc == 0, err
    assert path.read_bytes() != before


@pytest.mark.parametrize(
    "make, says",
    [
        ("fifo", "is a FIFO"),
        ("folder", "is a folder"),
        ("socket", "is a socket"),
        ("devnull", "is a device"),
    ],
)
def test_anything_but_a_regular_file_is_refused_even_with_force(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path, make: str, says: str
) -> None:
    """`export -o /dev/full` used to replace the device with a regular file."""
    recipe = write(tiny)
    path = tmp_path / make
    sock = None
    if make == "fifo":
        os.mkfifo(path)
    elif make == "folder":
        path.mkdir()
    elif make == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    else:
        path = Path(os.devnull)
    mode = path.lstat().st_mode
    try:
        for option in ("-o", "--trace", "--plot"):
            refused(run(capsys, "plan", recipe, option, path, "--force"), str(path), says)
            assert path.lstat().st_mode == mode  # still what it was
    finally:
        if sock is not None:
            sock.close()


# ---------------------------------------------------------------- 1. the guard, every layout


SEGMENTS = ["r0", "r1", "plain", "checkpoints", "sub", "..", ".", "link_r0", "link_sub"]
NAMES = ["plan.json", "model.pt", "new.txt", "report.html", "env.json", "lr.csv"]


def _tree(root: Path) -> None:
    """Two run directories (each with checkpoints/), a plain folder, a link to a run and one to
    a folder beside the other run (`link_sub/../r1` is plain/r1 to the kernel, r1 to a string)."""
    for run_dir in (root / "r0", root / "plain" / "r1"):
        fake_run(run_dir)
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "step-00000004.pt").write_bytes(b"ckpt")
    (root / "plain" / "sub").mkdir()
    (root / "plain" / "notes.txt").write_text("mine")
    (root / "link_r0").symlink_to(root / "r0")
    (root / "link_sub").symlink_to(root / "plain" / "sub")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.sampled_from(SEGMENTS), max_size=5),
    name=st.sampled_from(NAMES),
    force=st.booleans(),
    own=st.booleans(),
)
@example(parts=["link_sub", "..", "r1"], name="model.pt", force=True, own=False)
@example(parts=["link_r0", "checkpoints"], name="new.txt", force=True, own=True)
@example(parts=["plain", "..", "link_r0"], name="report.html", force=False, own=False)
def test_the_guard_never_lets_a_write_change_a_run_directory(
    parts: list[str], name: str, force: bool, own: bool
) -> None:
    """Whatever relative path (through links, `..`, sub-folders), with or without --force: when
    the guard allows a write and the writer does it, no file of any run directory changed,
    except the one output the command owns (r0/report.html, when it passes `own`)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        _tree(root)
        path = root.joinpath(*parts, name)
        if not os.path.abspath(path).startswith(str(root) + os.sep):
            return  # `..` out of the sandbox
        runs = {"r0": root / "r0", "r1": root / "plain" / "r1"}
        before = {k: _snapshot(v) for k, v in runs.items()}
        owned = [runs["r0"] / "report.html"] if own else []
        try:
            outputs.check_output(path, outputs.REPORT, "-o", force=force, own=owned)
            outputs.write_text(path, "<html>a report</html>")
        except RecipeError:
            pass
        after = {k: _snapshot(v) for k, v in runs.items()}
        if own:
            after["r0"].pop("report.html", None)
        assert after == before


# ---------------------------------------------------------------- 2. the writer


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_an_os_error_opening_the_file_is_one_message_with_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    def refuse(p: Path) -> None:
        raise OSError(err, os.strerror(err), str(p))

    monkeypatch.setattr(outputs, "open_new", refuse)
    with pytest.raises(RecipeError) as caught:
        outputs.write_bytes(tmp_path / "model.onnx", b"x")
    assert str(caught.value).startswith(f"{tmp_path / 'model.onnx'}: cannot write: {os.strerror(err)}")


def test_an_interrupt_in_the_middle_of_a_write_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    """Ctrl-C, or SIGTERM (raised as an exception by ftcompile.signals), while the bytes go out."""
    path = tmp_path / "plan.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), outputs.writing(path) as fh:
        fh.write(b"half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (
            calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else f"file {os.fstat(fd).st_size}"),
            real_fsync(fd),
        ),
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append(f"{Path(a).name} -> {Path(b).name}"), real_replace(a, b))
    )
    outputs.write_text(tmp_path / "lr.csv", "step,phase,trial,head\n")
    monkeypatch.undo()
    assert calls == ["file 22", f".lr.csv.tmp-{os.getpid()} -> lr.csv", "dir"]


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """Only `.<name>.tmp-<PID>` of a process that has ended; a live writer's file, look-alikes
    and the user's own files stay."""
    dead, live = dead_pid(), os.getppid()
    (tmp_path / "checkpoints" / "trials").mkdir(parents=True)
    stale = [
        tmp_path / f".model.pt.tmp-{dead}",
        tmp_path / "checkpoints" / f".step-00000004.pt.tmp-{dead}",
        tmp_path / "checkpoints" / "trials" / f".fork.pt.tmp-{dead}",
    ]
    kept = [
        tmp_path / ".model.pt.tmp-notmine.txt",
        tmp_path / "notes.tmp",
        tmp_path / f".eval.json.tmp-{live}",
        tmp_path / f"model.pt.tmp-{dead}",
        tmp_path / f".model.pt.tmp-{dead}.bak",
    ]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert sorted(outputs.remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_a_write_removes_what_a_killed_writer_of_the_same_file_left(tmp_path: Path) -> None:
    debris = tmp_path / f".lr.png.tmp-{dead_pid()}"
    other = tmp_path / f".plan.json.tmp-{dead_pid()}"
    debris.write_bytes(b"torn")
    other.write_bytes(b"torn")
    outputs.write_bytes(tmp_path / "lr.png", b"png")
    assert not debris.exists() and other.exists()  # another file's debris waits for its own write or a resume


def test_a_killed_plan_leaves_the_old_file_and_the_next_plan_removes_its_debris(
    capsys: pytest.CaptureFixture[str], write: Writer, tiny: str, tmp_path: Path
) -> None:
    """SIGKILL (nothing can clean up) in the middle of writing plan.json: the old plan stays
    whole; the temporary file is removed by the next write of plan.json."""
    recipe = write(tiny)
    path = tmp_path / "plan.json"
    assert run(capsys, "plan", recipe, "-o", path)[0] == 0
    before = path.read_bytes()
    script = (
        "import os, signal, sys\nfrom ftcompile import outputs\nfrom ftcompile.cli import main\n"
        "class Killed:\n"
        "    def __init__(self, p): self.fh = open(p, 'wb')\n"
        "    def __enter__(self): return self\n"
        "    def __exit__(self, *a): self.fh.close()\n"
        "    def fileno(self): return self.fh.fileno()\n"
        "    def flush(self): self.fh.flush()\n"
        "    def write(self, b): self.fh.write(b[:100]); self.fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "outputs.open_new = Killed\n"
        "sys.exit(main(['plan', sys.argv[1], '--set', 'seed=5', '-o', sys.argv[2]]))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(recipe), str(path)], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == -9, done.stderr
    assert path.read_bytes() == before
    debris = [p for p in tmp_path.iterdir() if outputs.TEMP_NAME.match(p.name)]
    assert len(debris) == 1 and debris[0].stat().st_size == 100
    assert run(capsys, "plan", recipe, "-o", path)[0] == 0
    assert not debris[0].exists()


def test_the_writers_temporary_name_matches_the_cleaners_pattern() -> None:
    """One pattern: what the writer makes is what the cleaner removes."""
    tmp = outputs.temp_path(Path("/x/model.pt"))
    match = outputs.TEMP_NAME.match(tmp.name)
    assert match and match["target"] == "model.pt" and int(match["pid"]) == os.getpid()


def test_is_run_dir_needs_both_files(tmp_path: Path) -> None:
    """A folder where `plan -o plan.json` wrote is no run directory (the plan may be replaced)."""
    (tmp_path / "plan.json").write_text("{}")
    assert not outputs.is_run_dir(tmp_path)
    (tmp_path / "env.json").write_text("{}")
    assert outputs.is_run_dir(tmp_path) and outputs.enclosing_run(tmp_path / "a" / "b") == tmp_path


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_output_gets_the_mode_open_gives_whatever_made_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    """A model.safetensors came out 0600: the writer sets 0666 less the umask (0644 under
    022) on what it writes, whether its opener or a library (ONNX) made the file 0600."""

    def private(p: Path):
        return os.fdopen(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    old = os.umask(umask)
    try:
        monkeypatch.setattr(outputs, "open_new", private)
        outputs.write_bytes(tmp_path / "model.safetensors", b"x")
        with outputs.written_by_library(tmp_path / "model.onnx") as tmp:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
        with outputs.writing(tmp_path / "model.pt", private) as fh:  # checkpoints' own opener
            fh.write(b"y")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "model.onnx", "model.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert outputs.file_mode() == 0o666 & ~old
