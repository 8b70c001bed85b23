"""What a run writes as it goes: metrics.jsonl, lr.csv, and the terminal's progress line.

Only rank 0 writes. The logs are flushed at each checkpoint and their lengths stored in it,
so a resumed run truncates them to exactly what the checkpoint had seen. The checkpoint also
stores how many lines each log held then and a sha256 of those bytes: the logs are part of
the run's state, and a resume first checks that they still hold every record up to its
checkpoint (`check_logs`) rather than continue a log with a hole in it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from ftcompile.errors import RecipeError, os_error
from ftcompile.metrics import METRICS


@dataclass
class Logs:
    """metrics.jsonl and lr.csv, flushed at each checkpoint so their length can be stored."""

    folder: Path
    names: list[str]
    enabled: bool = True  # only rank 0 writes
    trials: bool = False  # the plan has trial phases: trials.csv too
    _digests: dict[str, _Digest] = field(default_factory=dict, init=False, repr=False)
    ema: bool = False  # the run keeps an EMA: trials.csv has the EMA's metrics too
    rungs: int = 0  # the most rung points of a trial phase (`prune`): trials.csv's rung columns

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        self.metrics = open(self.folder / "metrics.jsonl", "a", encoding="utf-8")
        self.lr = _csv(self.folder / "lr.csv", ["step", "phase", "trial", *self.names])
        self.trial_rows = _csv(self.folder / "trials.csv", trials_header(self.ema, self.rungs)) if self.trials else None

    def record(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            self.metrics.write(json.dumps(rec, allow_nan=True) + "\n")

    def lrs(self, step: int, phase: str, lrs: list[float], trial: int | None = None) -> None:
        if self.enabled:
            trial_text = "" if trial is None else str(trial)
            self.lr.write(",".join([str(step), phase, trial_text, *(repr(float(x)) for x in lrs)]) + "\n")

    def trial_results(self, rows: list[dict[str, Any]]) -> None:
        """One row per alternative of a trial phase (phase, k, label, metrics, chosen); a
        column a row lacks (a metric the evaluation did not report) is left empty."""
        if self.enabled and self.trial_rows is not None:
            header = trials_header(self.ema, self.rungs)
            csv.writer(self.trial_rows, lineterminator="\n").writerows(
                [[row.get(h, "") for h in header] for row in rows]
            )

    def merge(self, folder: Path) -> None:
        """Append the records another process logged in `folder` (a trial search's stretch
        run elsewhere, runtime/search.py): its metrics.jsonl, and its lr.csv without the header."""
        if not self.enabled:
            return
        self.metrics.write((folder / "metrics.jsonl").read_text(encoding="utf-8"))
        self.lr.write("".join((folder / "lr.csv").read_text(encoding="utf-8").splitlines(keepends=True)[1:]))

    def _files(self) -> dict[str, Any]:
        files = {"metrics.jsonl": self.metrics, "lr.csv": self.lr, "trials.csv": self.trial_rows}
        return {name: fh for name, fh in files.items() if fh is not None}

    def sizes(self) -> dict[str, int]:
        if not self.enabled:
            return {}
        for fh in self._files().values():
            fh.flush()
        return {name: fh.tell() for name, fh in self._files().items()}

    def digests(self) -> dict[str, dict[str, Any]]:
        """Per log, {size, lines, sha256} of everything written so far, for a checkpoint:
        what `check_logs` expects to find again on resume."""
        out = {}
        for name, size in self.sizes().items():
            if name not in self._digests:
                self._digests[name] = _Digest(open(self.folder / name, "rb"))
            out[name] = self._digests[name].upto(size)
        return out

    def close(self) -> None:
        if not self.enabled:
            return
        for fh in (*self._files().values(), *(d.reader for d in self._digests.values())):
            fh.close()


class _Digest:
    """sha256 and line count of a log's first bytes, carried forward: each checkpoint reads
    only what was appended since the one before (the whole file is read once per process)."""

    def __init__(self, reader: BinaryIO) -> None:
        self.reader, self.sha, self.size, self.lines = reader, hashlib.sha256(), 0, 0

    def upto(self, size: int) -> dict[str, Any]:
        self.reader.seek(self.size)
        while self.size < size:
            chunk = self.reader.read(min(1 << 20, size - self.size))
            if not chunk:
                break
            self.sha.update(chunk)
            self.size += len(chunk)
            self.lines += chunk.count(b"\n")
        return {"size": self.size, "lines": self.lines, "sha256": self.sha.hexdigest()}


def trials_header(ema: bool, rungs: int = 0) -> list[str]:
    """trials.csv's columns: every metric of the METRICS table that the run reports, by the
    name a recipe gives it (the EMA weights' metrics only when the run keeps an EMA). With
    `prune` in a trial phase (`rungs`: the most rung points of one), then the step each
    alternative reached and its `select` value at each rung point (rung1, rung2, ...)."""
    metric_names = [m.name for m in METRICS.values() if ema or not m.ema]
    pruned = ["reached", *(f"rung{i + 1}" for i in range(rungs))] if rungs else []
    return ["phase", "k", "label", *metric_names, "chosen", *pruned]


TRIALS_HEADER = trials_header(ema=False)  # ["phase", "k", "label", "val_loss", "val_top1", "val_top5", "chosen"]


def _csv(path: Path, header: list[str]) -> Any:
    """Open a log for appending; a new (or emptied) one gets its header."""
    new = not path.exists() or path.stat().st_size == 0
    fh = open(path, "a", encoding="utf-8")
    if new:
        fh.write(",".join(header) + "\n")
    return fh


def truncate_logs(folder: Path, sizes: dict[str, int]) -> None:
    """Drop what an interrupted run logged after its last checkpoint."""
    for name, size in sizes.items():
        path = folder / name
        if path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(size)


def check_logs(folder: Path, state: dict[str, Any], checkpoint: str) -> None:
    """Before a resume cuts the logs back to its checkpoint: each log still holds every byte
    that checkpoint had seen, unchanged (a file missing, cut short or edited before that point
    is a RecipeError naming it; what follows that point was logged after the checkpoint and is
    cut, as expected). A checkpoint of an older ftcompile stored only sizes: only they are checked."""
    step = state["step"]
    for name, size in state.get("logs", {}).items():
        path, want = folder / name, state.get("log_digests", {}).get(name)
        header = 1 if name.endswith(".csv") else 0  # a CSV's first line names its columns
        try:
            reader = open(path, "rb")
        except FileNotFoundError:
            held = f"{max(want['lines'] - header, 0)} records" if want else f"{size} bytes"
            raise RecipeError(
                f"{name} is missing: it held the {held} up to step {step} that checkpoint {checkpoint} expects",
                file=path,
                suggestion=_RESTORE,
            ) from None
        except OSError as err:
            raise os_error(err, path) from None
        with reader:
            got = _Digest(reader).upto(size)
        if got["size"] < size:
            held = (
                f"{max(got['lines'] - header, 0)} of the {max(want['lines'] - header, 0)} records"
                if want
                else f"{got['size']} of the {size} bytes"
            )
            raise RecipeError(
                f"{name} holds {held} up to step {step} that checkpoint {checkpoint} expects",
                file=path,
                suggestion=_RESTORE,
            )
        if want and got["sha256"] != want["sha256"]:
            raise RecipeError(
                f"{name} was changed before step {step}: its first {max(want['lines'] - header, 0)} "
                f"records differ from those checkpoint {checkpoint} recorded (sha256)",
                file=path,
                suggestion=_RESTORE,
            )


_RESTORE = (
    "restore the file as the run left it (resuming now would give a log with a hole in it), "
    "or repeat the run from its recipe: ftcompile rerun RUN_DIR"
)


class Progress:
    """The terminal's progress bar: tqdm on stderr, off when stderr is not a terminal.

    tqdm redraws the whole line (no characters left behind when it gets shorter) and
    `tqdm.write` prints evaluation lines above the bar, so the two never share a line.
    Timing never enters the logs from here (the step records get their own, in loop.py).
    """

    def __init__(self, total: int, enabled: bool | None = None, world: int = 1, initial: int = 0) -> None:
        self.total, self.world = total, world
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.perf_counter()
        self.images = 0
        self.bar: Any = None
        if self.enabled:
            self.bar = tqdm(
                total=total,
                initial=initial,
                file=sys.stderr,
                unit="step",
                dynamic_ncols=True,
                leave=True,
                smoothing=0.1,
            )

    def update(self, step: int, loss: float, lr: float, batch: int) -> None:
        self.images += batch * self.world
        if self.bar is not None:
            rate = self.images / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.3g} {rate:.0f} img/s", refresh=False)
            self.bar.update(step - self.bar.n)

    def at(self, step: int) -> None:
        """The session moved to `step` (a resume): the bar starts there."""
        if self.bar is not None:
            self.bar.n = self.bar.last_print_n = step
            self.bar.refresh()

    def write(self, line: str) -> None:
        """A line of its own: above the bar on a terminal, plain stdout otherwise."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def eval_line(rec: dict[str, Any], note: str | None = None) -> str:
    """One evaluation; `note`, in brackets after the phase, says what was evaluated when the
    phase name alone would mislead: a trial phase's alternative (`[k=1 layer4=head / 10]`),
    the starting state lr-find loaded from a run."""
    top5 = f"  top5 {100 * rec['top5']:6.2f}%" if "top5" in rec else ""
    phase = f"{rec['phase']:<12}" + (f" [{note}]  " if note else "")
    return (
        f"eval  step {rec['step']:>6}  epoch {rec['epoch']:6.2f}  {phase} val_loss {rec['val_loss']:.4f}  "
        f"top1 {100 * rec['top1']:6.2f}%{top5}"
    )


def print_eval(rec: dict[str, Any], progress: Progress, note: str | None = None) -> None:
    progress.write(eval_line(rec, note))
