"""What a run writes as it goes: metrics.jsonl, lr.csv, and the terminal's progress line.

Only rank 0 writes. The two files are flushed at each checkpoint and their lengths stored in
it, so a resumed run truncates them to exactly what the checkpoint had seen.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
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


@dataclass
class Progress:
    """A progress line on a terminal, nothing otherwise; timing never enters the logs."""

    total: int
    enabled: bool = field(default_factory=lambda: sys.stderr.isatty())
    world: int = 1
    started: float = field(default_factory=time.perf_counter)
    images: int = 0

    def update(self, step: int, loss: float, lr: float, batch: int) -> None:
        self.images += batch * self.world
        if self.enabled and (step % 5 == 0 or step == self.total):
            rate = self.images / max(time.perf_counter() - self.started, 1e-9)
            bar = "#" * int(30 * step / self.total)
            print(f"\r[{bar:<30}] {step}/{self.total} loss {loss:.4f} lr {lr:.3g} {rate:.0f} img/s", end="", file=sys.stderr)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def print_eval(rec: dict[str, Any], progress: Progress) -> None:
    if progress.enabled:
        print(file=sys.stderr)
    top5 = f"  top5 {100 * rec['top5']:.2f}%" if "top5" in rec else ""
    print(f"eval  step {rec['step']:>6}  epoch {rec['epoch']:.2f}  {rec['phase']:<12} val_loss {rec['val_loss']:.4f}  "
          f"top1 {100 * rec['top1']:.2f}%{top5}", flush=True)
