"""`[run] log = ["jsonl", "tensorboard"]`: TensorBoard event files beside metrics.jsonl.

Scalars, with the optimizer step as TensorBoard's step: `train/loss`, `train/images_per_s`,
`lr/<param group>`, and `val/loss`, `val/top1`, `val/top5` at each evaluation. Phases are
not tags (a curve would break at every phase): each phase start is written as a text entry
`phase` and as the scalar `phase/index`, so the phase of any step can be read off. An
evaluation that belongs to a trial (trial phases) goes to `trials/<phase>/<k>/` with its
hyperparameters, which is what TensorBoard's HParams view lists.

The compiler refuses `tensorboard` in `run.log` when the package is missing, so importing it
here cannot fail for a plan made on this machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftcompile.runtime.loop import Hooks, Session, StepInfo

from ftcompile.plan import Plan

FOLDER = "tensorboard"


class TensorBoardHooks(Hooks):
    """Writes scalars from the session's step and evaluation hooks (rank 0)."""

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional extra (tensorboard): needs the tensorboard package

        self.plan = plan
        self.folder = run_dir / FOLDER
        self.writer = SummaryWriter(str(self.folder))
        self.trial_writers: dict[str, Any] = {}
        self.phase: str | None = None
        self.index = {ph.name: i for i, ph in enumerate(plan.phases)}

    def on_step(self, session: Session, info: StepInfo) -> None:
        if info.phase != self.phase:
            self.phase = info.phase
            self.writer.add_text("phase", info.phase, info.step)
            self.writer.add_scalar("phase/index", self.index.get(info.phase, -1), info.step)
        self.writer.add_scalar("train/loss", info.loss, info.step)
        if info.seconds > 0:
            self.writer.add_scalar("train/images_per_s", info.images / info.seconds, info.step)
        for name, lr in info.lrs.items():
            self.writer.add_scalar(f"lr/{name}", lr, info.step)

    def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
        trial = record.get("trial")
        writer = self._trial_writer(record) if trial not in (None, "") else self.writer
        for key, tag in (("val_loss", "val/loss"), ("top1", "val/top1"), ("top5", "val/top5")):
            if key in record:
                writer.add_scalar(tag, record[key], record["step"])
        writer.flush()

    def _trial_writer(self, record: dict[str, Any]) -> Any:
        """One sub-run per trial, with its hyperparameters (the label and the phase)."""
        from torch.utils.tensorboard import SummaryWriter  # optional extra (tensorboard): needs the tensorboard package

        key = f"{record['phase']}/{record['trial']}"
        if key not in self.trial_writers:
            writer = SummaryWriter(str(self.folder / "trials" / key))
            self.trial_writers[key] = writer
        return self.trial_writers[key]

    def close(self, evals: list[dict[str, Any]]) -> None:
        """HParams: one entry per trial with its last metrics (only once trials exist)."""
        last: dict[str, dict[str, Any]] = {}
        for rec in evals:
            if rec.get("trial") not in (None, ""):
                last[f"{rec['phase']}/{rec['trial']}"] = rec
        for key, rec in last.items():
            metrics = {f"hparam/{k}": rec[k] for k in ("val_loss", "top1", "top5") if k in rec}
            hparams = {"phase": rec["phase"], "trial": str(rec["trial"]), "label": str(rec.get("label", rec["trial"]))}
            self.trial_writers[key].add_hparams(hparams, metrics, run_name=".")
        for writer in (self.writer, *self.trial_writers.values()):
            writer.close()


class _Evals(Hooks):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
        self.records.append(record)


@contextlib.contextmanager
def log_hooks(plan: Plan, run_dir: Path) -> Iterator[list[Hooks]]:
    """The hooks `[run] log` asks for beyond metrics.jsonl (none by default)."""
    if "tensorboard" not in plan.run.log:
        yield []
        return
    board, evals = TensorBoardHooks(plan, run_dir), _Evals()
    try:
        yield [board, evals]
    finally:
        board.close(evals.records)
