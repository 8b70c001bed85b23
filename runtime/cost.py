"""What a run measures of its own cost, beside what `plan --estimate` said it would.

metrics.jsonl gets one `{"type": "memory"}` record per phase (per alternative in a trial
phase), written at the phase's last step:

- on CUDA, `peak_bytes` is `torch.cuda.max_memory_allocated` over the phase (its peak reset
  at the phase start): the caching allocator's tensor bytes, the quantity the estimate
  predicts (the CUDA context and the allocator's cached blocks are not in it).
- on the CPU no allocator keeps such a counter, so `peak_bytes` counts tensors: everything
  alive when the phase's second step begins (parameters, buffers, optimizer state, EMA,
  cached features, trial copies; found through the session's objects) plus the most bytes
  that step creates and holds at once, counted by the estimate's own `LiveTensors`
  dispatch mode (`measure: "tensors"`, `tensor_step`: the step counted). The step after
  the phase's first is the first in which the optimizer state already exists, as in every
  later step. Beside it, `rss_peak_bytes`: the process's peak resident memory over the
  phase (VmHWM, reset at the phase start through /proc/self/clear_refs; Linux), which adds
  Python, torch's libraries, the data loader and freed memory malloc keeps: an upper bound.

At the end, `table()` prints estimate against measurement for each phase, peak memory and
step time, so an estimate that is wrong is seen. The step time measured is the median of
the seconds the phase's steps spent in forward, backward and optimizer.step() (the loop's
`StepInfo.compute`, this process's steps; the counted step is left out, counting slows it),
which is what the estimate predicts; data loading is not in it. When the estimate had a
device profile, the run's steps add an entry to it (`calibrate.from_run`).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from ftcompile.runtime.loop import Hooks, Session, StepInfo
from ftcompile.runtime.runfiles import read_records

from ftcompile import calibrate, estimate
from ftcompile.estimate import LiveTensors, gib, tensor_bytes, tensors_in
from ftcompile.plan import Plan


def _proc_status(field: str) -> int | None:
    """A `VmRSS` / `VmHWM` line of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class CostMeter(Hooks):
    """Measures each phase's peak memory and writes it to metrics.jsonl (rank 0)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.cuda, self.device = False, torch.device("cpu")  # the session's, from on_start
        self.key: tuple[str, int | None] | None = None  # the phase (and alternative) being measured
        self.live: LiveTensors | None = None
        self.live_step: int | None = None
        self.baseline = 0
        self.tensor_peak: tuple[int, int] | None = None  # (bytes, step counted)
        self.rss_start: int | None = None
        self.rss_reset = False
        # Seconds inside forward, backward and optimizer.step() of each step not counted
        # (counting slows a step), per phase and alternative: the step times measured.
        self.compute: dict[tuple[str, int | None], list[float]] = {}

    # -------------------------------------------------------------- hooks

    def on_start(self, session: Session) -> None:
        self.device, self.cuda = session.device, session.device.type == "cuda"
        self._reset()
        self._arm(session, session.step)

    def on_step(self, session: Session, info: StepInfo) -> None:
        key = (info.phase, session.trials.k)
        if self.key != key:
            if self.key is not None:  # the phase before stopped early: its last step never came
                self._flush(session, info.step - 1)
            self.key = key
        if self.live is not None:  # kept only if the step counted is the one armed for (not another alternative's)
            self._stop_counting(keep=self.live_step == info.step, step=info.step)
        else:
            self.compute.setdefault(key, []).append(info.compute)
        if info.step + 1 == self.plan.phase_at(info.step).end:
            self._flush(session, info.step)
            self._reset()
        self._arm(session, info.step + 1)

    def on_evaluate(self, session: Session, record: dict[str, Any]) -> None:
        # An evaluation between two steps would count as the step's: count a later step.
        self._stop_counting(keep=False)

    def on_checkpoint(self, session: Session, step: int, state: dict[str, Any]) -> None:
        self._stop_counting(keep=False)

    def close(self) -> None:
        """Leave no dispatch mode behind (a run that ends inside a counted step)."""
        self._stop_counting(keep=False)

    # -------------------------------------------------------------- phases

    def _reset(self) -> None:
        """A phase (or alternative) begins with the next step: peaks start again."""
        self.tensor_peak = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_reset = _reset_rss_peak()
        self.rss_start = _proc_status("VmRSS")

    def _arm(self, session: Session, step: int) -> None:
        """Count step `step` when it is the phase's second (its first when it has one step),
        or a later one when that one was not counted (an evaluation came between, a resume)."""
        if self.cuda or self.live is not None or self.tensor_peak is not None or step >= self.plan.total_steps:
            return
        phase = self.plan.phase_at(step)
        if step < min(phase.begin + 1, phase.end - 1):
            return
        best = session.watch.current.snapshot if session.watch.current else None
        held = [
            session.model,
            session.optimizer.state,
            session.ema.module if session.ema else None,
            session.features,
            session.trials.fork,
            session.trials.best,
            best,
        ]
        held = [o for o in held if o is not None]
        self.baseline = tensor_bytes(*held)
        self.live = LiveTensors({t.untyped_storage()._cdata for t in tensors_in(held)})
        self.live_step = step
        self.live.__enter__()

    def _stop_counting(self, keep: bool, step: int | None = None) -> None:
        if self.live is None:
            return
        live, self.live = self.live, None
        live.__exit__(None, None, None)
        if keep and step is not None:
            self.tensor_peak = (self.baseline + live.peak, step)

    def _flush(self, session: Session, step: int) -> None:
        if self.key is None or session.logs is None:
            return
        phase, trial = self.key
        rec: dict[str, Any] = {"type": "memory", "step": step, "phase": phase}
        if trial is not None:
            rec["trial"] = trial
        if self.cuda:
            rec.update(measure="cuda.max_memory_allocated", peak_bytes=torch.cuda.max_memory_allocated(self.device))
        elif self.tensor_peak is not None:
            rec.update(measure="tensors", peak_bytes=self.tensor_peak[0], tensor_step=self.tensor_peak[1])
        hwm = _proc_status("VmHWM")
        if hwm is not None and self.rss_reset:
            rec.update(rss_peak_bytes=hwm, rss_start_bytes=self.rss_start)
        session.logs.record(rec)
        self.key = None
        self.tensor_peak = None


@contextlib.contextmanager
def metered(plan: Plan) -> Iterator[CostMeter]:
    """A CostMeter for the run's session, closed however the run ends."""
    meter = CostMeter(plan)
    try:
        yield meter
    finally:
        meter.close()


# ---------------------------------------------------------------- the end-of-run table


def table(plan: Plan, run_dir: Path, meter: CostMeter | None = None) -> str:
    """Estimate against measurement, per phase (and alternative): peak memory, and the
    median step time (forward, backward, optimizer; from `meter`, this process's steps).
    When the estimate had a device profile, the run's steps add an entry to it."""
    try:
        device = estimate.run_device(plan)
        rates = calibrate.find(device, plan.run.precision, plan.model.arch, plan.data.image_size, plan.data.batch_size)
        est = estimate.estimate(plan, rates)
    except Exception as exc:  # noqa: BLE001 - the run is done; a failing estimate only loses the table
        return f"cost: no estimate ({type(exc).__name__}: {exc})"
    memory = {(r["phase"], r.get("trial")): r for r in read_records(run_dir, "memory")}
    compute = meter.compute if meter is not None else {}
    rows = [("cost", "peak est.", "measured", "ratio", "step est.", "measured", "ratio")]
    predicted, measured_s = [], []
    for p in est.phases:
        key = (p.phase, p.trial)
        m = memory.get(key, {})
        peak = m.get("peak_bytes")
        what = {"tensors": f"tensors, step {m.get('tensor_step')}", "cuda.max_memory_allocated": "cuda max allocated"}
        times = compute.get(key, [])
        step_s = statistics.median(times) if times else None
        mid = (p.step_seconds[0] + p.step_seconds[1]) / 2 if p.step_seconds else None
        if step_s is not None and mid and len(times) >= 2:
            predicted.append(mid)
            measured_s.append(step_s)
        rows.append(
            (
                p.phase if p.trial is None else f"{p.phase}/{p.trial}",
                gib(p.peak),
                f"{gib(peak)} ({what.get(m.get('measure'), '?')})" if peak else "-",
                f"{peak / p.peak:.2f}" if peak else "-",
                f"{p.step_seconds[0]:.3g}-{p.step_seconds[1]:.3g} s" if p.step_seconds else "-",
                f"{step_s:.3g} s" if step_s is not None else "-",
                f"{step_s / mid:.2f}" if step_s is not None and mid else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "",
        (
            "cost: estimate (plan --estimate) against this run (ratio = measured / estimate; "
            "step: median seconds in forward, backward and optimizer)"
        ),
    ]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    if rates is None:
        lines.append("  step est.: no device profile (ftcompile calibrate RECIPE)")
    else:
        learned = calibrate.from_run(
            rates, predicted, measured_s, f"run {run_dir}", plan.model.arch, plan.data.image_size, plan.data.batch_size
        )
        if learned is not None:
            path = calibrate.store(device, plan.run.precision, learned)
            lines.append(f"  device profile updated from this run's steps: {path}")
    return "\n".join(lines)
