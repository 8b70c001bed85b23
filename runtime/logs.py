"""What a run writes as it goes: metrics.jsonl, lr.csv, and the terminal's progress line.

Only rank 0 writes. The two files are flushed at each checkpoint and their lengths stored in
it, so a resumed run truncates them to exactly what the checkpoint had seen.
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        self.metrics = open(self.folder / "metrics.jsonl", "a", encoding="utf-8")
        new = not (self.folder / "lr.csv").exists() or (self.folder / "lr.csv").stat().st_size == 0
        self.lr = open(self.folder / "lr.csv", "a", encoding="utf-8")
        if new:
            self.lr.write(",".join(["step", "phase", *self.names]) + "\n")

    def record(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            self.metrics.write(json.dumps(rec, allow_nan=True) + "\n")

    def lrs(self, step: int, phase: str, lrs: list[float]) -> None:
        if self.enabled:
            self.lr.write(",".join([str(step), phase, *(repr(float(x)) for x in lrs)]) + "\n")

    def sizes(self) -> dict[str, int]:
        if not self.enabled:
            return {}
        self.metrics.flush()
        self.lr.flush()
        return {"metrics.jsonl": self.metrics.tell(), "lr.csv": self.lr.tell()}

    def close(self) -> None:
        if not self.enabled:
            return
        self.metrics.close()
        self.lr.close()


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
