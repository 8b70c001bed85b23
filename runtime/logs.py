"""What a run writes as it goes: metrics.jsonl, lr.csv, and the terminal's progress line.

Only rank 0 writes. The two files are flushed at each checkpoint and their lengths stored in
it, so a resumed run truncates them to exactly what the checkpoint had seen.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Logs:
    """metrics.jsonl and lr.csv, flushed at each checkpoint so their length can be stored."""

    folder: Path
    names: list[str]
    enabled: bool = True  # only rank 0 writes
    trials: bool = False  # the plan has trial phases: trials.csv too

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        self.metrics = open(self.folder / "metrics.jsonl", "a", encoding="utf-8")
        self.lr = _csv(self.folder / "lr.csv", ["step", "phase", "trial", *self.names])
        self.trial_rows = _csv(self.folder / "trials.csv", TRIALS_HEADER) if self.trials else None

    def record(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            self.metrics.write(json.dumps(rec, allow_nan=True) + "\n")

    def lrs(self, step: int, phase: str, lrs: list[float], trial: int | None = None) -> None:
        if self.enabled:
            trial_text = "" if trial is None else str(trial)
            self.lr.write(",".join([str(step), phase, trial_text, *(repr(float(x)) for x in lrs)]) + "\n")

    def trial_results(self, rows: list[list[Any]]) -> None:
        """One row per alternative of a trial phase (phase, k, label, metrics, chosen)."""
        if self.enabled and self.trial_rows is not None:
            csv.writer(self.trial_rows, lineterminator="\n").writerows(rows)

    def sizes(self) -> dict[str, int]:
        if not self.enabled:
            return {}
        files = {"metrics.jsonl": self.metrics, "lr.csv": self.lr, "trials.csv": self.trial_rows}
        for fh in files.values():
            if fh is not None:
                fh.flush()
        return {name: fh.tell() for name, fh in files.items() if fh is not None}

    def close(self) -> None:
        if not self.enabled:
            return
        for fh in (self.metrics, self.lr, self.trial_rows):
            if fh is not None:
                fh.close()


TRIALS_HEADER = ["phase", "k", "label", "val_loss", "val_top1", "val_top5", "chosen"]


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
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, file=sys.stderr, unit="step", dynamic_ncols=True,
                            leave=True, smoothing=0.1)

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


def eval_line(rec: dict[str, Any]) -> str:
    top5 = f"  top5 {100 * rec['top5']:6.2f}%" if "top5" in rec else ""
    return (f"eval  step {rec['step']:>6}  epoch {rec['epoch']:6.2f}  {rec['phase']:<12} val_loss {rec['val_loss']:.4f}  "
            f"top1 {100 * rec['top1']:6.2f}%{top5}")


def print_eval(rec: dict[str, Any], progress: Progress) -> None:
    progress.write(eval_line(rec))
