"""`run.reproducible = "portable"`: the same bits on any x86-64 CPU with AVX2.

A run is bitwise repeatable on one machine, but not across machines: oneDNN (convolutions)
picks AVX2 or AVX-512 kernels from the CPU, ATen's vectorised kernels do the same, MKL has a
code path per instruction set, and the number of threads changes the order of reductions.
Measured on one machine (resnet18, three SGD steps at 32 px): `ONEDNN_MAX_CPU_ISA=AVX2`
changes the bits against AVX-512 oneDNN, and 2 threads differ from 1.

These are pinned through environment variables, which the libraries read once, when they
first initialise. So the pins must be in the process's environment before torch runs a
kernel, and the `run`, `resume` and `rerun` commands (which learn that a plan is portable
only after compiling or reading it, torch already imported) start themselves again with the
pins set: `os.execve` of the same command (same PID, same terminal, Ctrl-C as before) when
ftcompile is the program, a child process when `ftcompile.cli.main` is called from Python.
A process whose environment already holds the pins is not restarted.

The pins override what the caller's environment says (an `ATEN_CPU_CAPABILITY=avx512` or
`OMP_NUM_THREADS=8` of the shell does not reach a portable run). What cannot be pinned: a CPU
without AVX2 (ATen then falls back to its default kernels, oneDNN to SSE4.1), and other
library versions (the plan records them; `rerun` warns). GPUs are out of scope: a portable
plan runs on the CPU.

No torch at import time: `plan` and `check` read PINS through the schema.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcompile.errors import RecipeError

if TYPE_CHECKING:
    from ftcompile.plan import Plan

MODES = ("machine", "portable")
PORTABLE = "portable"
THREADS = 1  # one thread: the reduction order of every kernel is that of its serial code

# Variable -> value. Each is read once by its library, at its first use in the process.
PINS: dict[str, str] = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions, some matmuls): AVX2 kernels, not AVX-512 / AMX
    "DNNL_MAX_CPU_ISA": "AVX2",  # the same, under the name older oneDNN releases read
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's own vectorised kernels (element-wise ops, reductions, resize)
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: its AVX2 code path on any CPU
    "OMP_NUM_THREADS": str(THREADS),  # torch's intra-op thread pool
    "MKL_NUM_THREADS": str(THREADS),
}
# Set in the restarted process, so that its own messages can say why it runs pinned.
MARK = "FTCOMPILE_PORTABLE"


def pinned(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether `environ` (default: this process's) holds every pin."""
    env = os.environ if environ is None else environ
    return all(env.get(k) == v for k, v in PINS.items())


def pinned_environment(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """A copy of `environ` with the pins set (over whatever it said)."""
    env = dict(os.environ if environ is None else environ)
    env.update(PINS)
    env[MARK] = "1"
    return env


def restart_pinned(mode: str, argv: list[str] | None) -> int | None:
    """Run this command again with the pins set, unless they are set or the plan is not portable.

    `argv` is what `cli.main` was given: None when ftcompile is the program (the process is
    replaced, this never returns), a list when main() was called from Python (the command
    runs in a child process; its exit code is returned). None: go on in this process.
    """
    if mode != PORTABLE or pinned():
        return None
    env = pinned_environment()
    pins = " ".join(f"{k}={v}" for k, v in PINS.items() if k != "DNNL_MAX_CPU_ISA")
    print(f'run.reproducible = "portable": restarting with {pins}', file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "ftcompile", *(sys.argv[1:] if argv is None else argv)]
    if argv is None:
        sys.stdout.flush()
        os.execve(sys.executable, command, env)  # replaces this process; does not return
    return subprocess.run(command, env=env).returncode


def enter(mode: str) -> None:
    """In the run's process: refuse to run a portable plan unpinned, and pin torch's threads.

    The CLI restarts itself pinned (`restart_pinned`); reaching here unpinned means the
    runtime was called another way, where the environment cannot be changed any more.
    """
    if mode != PORTABLE:
        return
    if not pinned():
        missing = ", ".join(f"{k}={v}" for k, v in PINS.items() if os.environ.get(k) != v)
        raise RecipeError(
            f"a portable run needs its environment pinned before torch starts; not set here: {missing}",
            key="run.reproducible",
            suggestion="start it with `ftcompile run` / `resume` / `rerun` (they restart themselves pinned), "
            "or set these variables before Python starts",
        )
    import torch  # the runtime's process has it imported already

    torch.set_num_threads(THREADS)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        print(
            f'warning: run.reproducible = "portable" pins AVX2, but torch runs {capability} kernels here '
            "(a CPU without AVX2): the bits can differ from other machines",
            file=sys.stderr,
        )


def record(mode: str) -> dict[str, Any]:
    """env.json's "reproducible": the mode, and for a portable run the pins it ran with."""
    if mode != PORTABLE:
        return {"mode": mode}
    return {"mode": mode, "pins": dict(PINS), "threads": THREADS, "cpu_avx2": cpu_has_avx2()}


def cpu_has_avx2() -> bool | None:
    """From the CPU's own flags (torch's capability is the pinned one in a portable run)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return "avx2" in line.split(":", 1)[1].split()
    return None


def machine_warnings(mode: str, env: dict[str, Any], now: dict[str, Any], generic: list[str]) -> list[str]:
    """What `rerun` / `resume` say about this machine against the recorded one: `generic` (the
    provenance lines naming each difference), with whether bitwise equality can be expected."""
    then = env.get("machine")
    if not isinstance(then, dict):
        return generic
    differs = [k for k in ("cpu_capability", "threads") if then.get(k) != now.get(k)]
    if mode == PORTABLE:
        if differs:
            what = "; ".join(f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in differs)
            return [
                f"warning: portable run, but the pinned kernels or threads differ ({what}): "
                "bitwise equality cannot be expected (a CPU without AVX2 on one side?)"
            ]
        if then.get("cpu") != now.get("cpu"):
            return [
                f"note: portable run: another CPU ({then.get('cpu')} -> {now.get('cpu')}), the same pinned "
                f"kernels (AVX2, {THREADS} thread): bitwise equality is expected"
            ]
        return []
    if not differs or not generic:
        return generic
    verdict = (
        " — bitwise equality cannot be expected: oneDNN and ATen pick kernels by instruction set and the "
        'thread count changes the order of sums; run.reproducible = "portable" pins both'
    )
    return [generic[0] + verdict, *generic[1:]]


def check_upstream(mode: str, weights: str, upstream: Plan | None) -> None:
    """A portable run is as portable as the model it starts from: an upstream recipe's run
    (`model.weights = "other.toml"`, trained first or found in runs/) must be portable too."""
    if mode != PORTABLE or upstream is None:
        return
    if upstream.run.reproducible != PORTABLE:
        raise RecipeError(
            f"the upstream recipe {weights} is not portable: a portable run starting from its model gives "
            "the same bits only where that model does",
            key="run.reproducible",
            suggestion=f'set run.reproducible = "portable" in {weights} too',
        )
