"""`ftcompile lr-find`: the LR range test (Smith 2015, fastai's `lr_find`) at a phase's start.

The session reaches the phase's start state (training the phases before it, or loading a
run's checkpoint at that step), applies the phase's set-up changes, then drives the steps
itself: no scheduler, no evaluation, and every group the phase trains gets its planned LR
times one multiplier that rises exponentially, so the ratios between groups (LR
expressions, `lr_decay`) are kept. The smoothed loss is recorded until it diverges. Nothing
is written but the CSV (and plot) asked for: the session has no run directory.

The suggestion is for the phase's reference group: the last group of its `train` list (the
head in the usual order, the group `lr_decay` and expressions start from). It is one
multiplier of all the phase's LRs, so the line to paste is the phase's whole `lr` table with
its numbers scaled and its expressions kept: the recipe side formats it (ftcompile/lr_paste.py,
from the phase as the recipe writes it) and `report` prints it. A flat curve (`flat`)
suggests nothing: its steepest point would be noise.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ftcompile.runtime.curves import png
from ftcompile.runtime.loop import END_OF_WINDOW, Hooks, Session, StepInfo
from ftcompile.runtime.retention import find_phase_start

from ftcompile import outputs, portable
from ftcompile.errors import RecipeError, did_you_mean
from ftcompile.plan import Op, PhasePlan, Plan

BETA = 0.98  # smoothing of the loss (fastai's value), bias-corrected
DIVERGE = 4.0  # stop when the smoothed loss exceeds this many times its minimum so far


# ------------------------------------------------------------ the math (pure)


def multipliers(start: float, end: float, steps: int) -> list[float]:
    """`steps` multipliers from `start` to `end`, evenly spaced in log scale."""
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Exponential moving average with bias correction: point i is a mean of losses <= i."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def diverged(smoothed: list[float], factor: float = DIVERGE) -> bool:
    """The last point is non-finite or more than `factor` times the minimum so far."""
    last = smoothed[-1]
    return not math.isfinite(last) or last > factor * min(smoothed)


def suggest(mults: list[float], smoothed: list[float]) -> dict[str, Any]:
    """Two suggestions, as multipliers: where the smoothed loss falls fastest per log-unit of
    LR (the left point of the steepest segment), and a tenth of where it is lowest. Like
    fastai, the first tenth of the points (a smoothed mean of very few losses, noisy) and
    the last 5 (already turning up) are left out when there are enough."""
    points = [(m, s) for m, s in zip(mults, smoothed, strict=False) if math.isfinite(s)]
    if len(points) >= 20:
        points = points[len(points) // 10 : -5]
    if len(points) < 2:
        raise RecipeError(
            "the loss diverged before two steps were taken",
            key="--start",
            suggestion="start the range lower, e.g. --start 1e-6",
        )
    m, s = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    slopes = np.diff(s) / np.diff(np.log(m))
    steep = int(np.argmin(slopes))
    low = int(np.argmin(s))
    return {
        "steepest": float(m[steep]),
        "minimum_10": float(m[low] / 10),
        "min_index": low,
        "steepest_slope": float(slopes[steep]),
    }


def flat(losses: list[float], smoothed: list[float]) -> dict[str, float] | None:
    """The curve shows no descent: the smoothed loss never falls, from any point to a later
    one, by more than the noise of one batch's loss. That noise is the spread of the raw
    losses' step-to-step differences / sqrt(2), measured robustly (1.4826 x their median
    absolute deviation: the spikes near divergence do not count). The smoothed loss itself
    wanders about a tenth of that (an EMA of beta 0.98), so a fall of one batch's noise is a
    real descent. Same points as `suggest`. Returns the fall and the noise when flat."""
    points = [(x, s) for x, s in zip(losses, smoothed, strict=False) if math.isfinite(x) and math.isfinite(s)]
    if len(points) >= 20:
        points = points[len(points) // 10 : -5]
    if len(points) < 3:
        return None
    raw, s = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    fall = float(np.max(np.maximum.accumulate(s) - s))
    steps = np.diff(raw)
    noise = float(1.4826 * np.median(np.abs(steps - np.median(steps))) / math.sqrt(2))
    return {"fall": fall, "noise": noise} if fall <= noise else None


# ------------------------------------------------------------ the run


@dataclass
class Found:
    phase: PhasePlan
    reference: str  # the recipe group the suggestion is for
    base: dict[str, float]  # recipe group -> the phase's planned lr
    rows: list[dict[str, float]]  # step, multiplier, loss, smoothed
    stopped: bool  # the loss diverged before the last step
    suggestion: dict[str, Any] | None  # None: a flat curve, nothing to suggest
    flat: dict[str, float] | None = None  # {"fall", "noise"} of a flat curve


class _Losses(Hooks):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step(self, session: Session, info: StepInfo) -> None:
        self.losses.append(info.loss)


def find_phase(plan: Plan, name: str) -> PhasePlan:
    for ph in plan.phases:
        if ph.name == name:
            return ph
    names = [ph.name for ph in plan.phases]
    raise RecipeError(
        f"no phase {name!r}", key="--phase", suggestion=did_you_mean(name, names) or f"phases: {', '.join(names)}"
    )


def planned_lrs(plan: Plan, phase: PhasePlan) -> dict[str, float]:
    """Param group -> the lr the phase sets at its start, for the groups it trains."""
    trained = {pg.name for pg in plan.param_groups if pg.group in phase.train}
    return {
        c.target: float(c.value)
        for c in plan.changes
        if c.step == phase.begin and c.op == Op.SET and c.field == "lr" and c.target in trained
        if isinstance(c.value, (int, float))
    }


def lr_find(
    plan: Plan,
    root: Path,
    phase_name: str,
    *,
    steps: int = 100,
    start: float = 1e-4,
    end: float = 1e3,
    state: dict[str, Any] | None = None,
    upstream: Path | None = None,
) -> Found:
    """The range test at the start of `phase_name`; `state`: the phase's start state (a run's
    checkpoint at its first step), else the phases before it are trained here."""
    phase = find_phase(plan, phase_name)
    portable.enter(plan.run.reproducible)  # pinned threads; refused where the environment is not pinned
    losses = _Losses()
    session = Session(plan, root, run_dir=None, upstream=upstream, hooks=[losses])
    try:
        if state is not None:
            session.load_state(state)
            session.eval_note = "the starting state, loaded from --from: not trained here"
            # The checkpoint comes before the previous window's end-of-window changes (its
            # evaluation): do them, as the run did, so both ways reach the same state.
            session.run(phase.begin, phase.begin)
        else:
            session.run(0, phase.begin)
        session.apply_setup()  # the phase's freezing, BatchNorm mode, LRs (its scheduler is dropped)
        session.executor.scheduler = None
        base = planned_lrs(plan, phase)
        index = {name: i for i, name in enumerate(plan.param_group_names)}
        rows: list[dict[str, float]] = []
        stopped = False
        for i, mult in enumerate(multipliers(start, end, steps)):
            for name, lr in base.items():
                session.optimizer.param_groups[index[name]]["lr"] = lr * mult
            try:
                session.train_step()
                loss = losses.losses[-1]
            except RecipeError as err:  # the loss became inf / nan: as diverged as it gets
                if "loss became" not in str(err):
                    raise
                loss = math.nan
            smoothed = smooth([r["loss"] for r in rows] + [loss])[-1]
            rows.append({"step": i, "multiplier": mult, "loss": loss, "smoothed": smoothed})
            if diverged([r["smoothed"] for r in rows]):
                stopped = i < steps - 1
                break
    finally:
        session.close()
    # A group's decay and no-decay parts share its lr.
    group_lr = {pg.group: base[pg.name] for pg in reversed(plan.param_groups) if pg.name in base}
    reference = phase.train[-1]
    kept = rows[:-1] if stopped else rows  # the diverged point is not a candidate
    suggestion = suggest([r["multiplier"] for r in kept], [r["smoothed"] for r in kept])
    no_descent = flat([r["loss"] for r in kept], [r["smoothed"] for r in kept])
    return Found(
        phase,
        reference,
        {g: group_lr[g] for g in phase.train if g in group_lr},
        rows,
        stopped,
        None if no_descent else suggestion,
        no_descent,
    )


# ------------------------------------------------------------ --from RUN_DIR


def start_state(run_dir: Path, run_plan: Plan, plan: Plan, phase: PhasePlan) -> dict[str, Any]:
    """The run's checkpoint at the phase's first step, for this plan (read only)."""
    if run_plan.hash != plan.hash:
        _same_before(run_plan, plan, phase)
    path = find_phase_start(run_dir / "checkpoints", run_plan, phase.begin)
    if path is None:
        raise RecipeError(
            f"{run_dir} has no checkpoint at step {phase.begin}, where phase {phase.name} starts",
            file=run_dir,
            key="--from",
            suggestion="leave out --from to train the phases before it here (a run keeps only its newest checkpoints)",
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {**state, "plan_hash": plan.hash}


def _same_before(run_plan: Plan, plan: Plan, phase: PhasePlan) -> None:
    """A run of another plan will do when everything up to the phase's start is the same."""
    mine, theirs = plan.to_dict(), run_plan.to_dict()
    differs = [k for k in ("seed", "model", "data", "optimizer", "param_groups") if mine[k] != theirs[k]]

    def before(p: dict[str, Any]) -> list[dict[str, Any]]:
        ends = [op.value for op in END_OF_WINDOW]
        return [c for c in p["changes"] if c["step"] < phase.begin or (c["step"] == phase.begin and c["op"] in ends)]

    if before(mine) != before(theirs):
        differs.append(f"the changes before step {phase.begin}")
    if differs:
        raise RecipeError(
            f"the run's plan differs from this recipe before phase {phase.name}: {', '.join(differs)}",
            key="--from",
            suggestion="pass a run of this recipe, or leave out --from",
        )


# ------------------------------------------------------------ output


def write_csv(found: Found, path: Path) -> None:
    groups = list(found.base)
    text = io.StringIO()
    out = csv.writer(text)
    out.writerow(["step", "multiplier", *(f"lr_{g}" for g in groups), "loss", "smoothed_loss"])
    for r in found.rows:
        out.writerow(
            [
                r["step"],
                repr(r["multiplier"]),
                *(repr(found.base[g] * r["multiplier"]) for g in groups),
                repr(r["loss"]),
                repr(r["smoothed"]),
            ]
        )
    outputs.write_text(path, text.getvalue())


def plot(found: Found, path: Path) -> bool:
    """lr_find.png: smoothed loss against the reference group's LR; False without matplotlib."""
    try:
        import matplotlib  # optional extra (plot): without it lr-find writes no figure

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional extra (plot)
    except ImportError:
        return False
    ref = found.base[found.reference]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([ref * r["multiplier"] for r in found.rows], [r["smoothed"] for r in found.rows], label="smoothed loss")
    ax.plot([ref * r["multiplier"] for r in found.rows], [r["loss"] for r in found.rows], alpha=0.3, label="loss")
    suggestion = found.suggestion or {}
    for key, style in (("steepest", "--"), ("minimum_10", ":")) if suggestion else ():
        ax.axvline(
            ref * suggestion[key],
            ls=style,
            color="grey",
            label=f"{key.replace('_10', ' / 10')} {ref * suggestion[key]:.2g}",
        )
    smoothed = [r["smoothed"] for r in found.rows if math.isfinite(r["smoothed"])]
    ax.set_ylim(0.95 * min(smoothed), 1.05 * max(smoothed))  # raw spikes would flatten the curve
    ax.set_xscale("log")
    ax.set_xlabel(f"lr of {found.reference}")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr-find: phase {found.phase.name}" + ("  (flat: nothing to suggest)" if found.flat else ""))
    ax.legend(fontsize="small")
    fig.tight_layout()
    outputs.write_bytes(path, png(fig, outputs.LR_FIND_PLOT, dpi=100))
    return True


def report(found: Found, paste: str | None = None) -> str:
    """What the test found; `paste`: the `lr = ...` line to paste into the phase, every LR
    times the steepest-descent multiplier (ftcompile.lr_paste.paste_line; without it, none)."""
    ref, sug = found.reference, found.suggestion
    lr = found.base[ref]
    n = len(found.rows)
    end = (
        f"stopped after {n} steps: the smoothed loss passed {DIVERGE:g}x its minimum" if found.stopped else f"{n} steps"
    )
    head = f"lr-find  phase {found.phase.name} (step {found.phase.begin}); reference group {ref}, planned lr {lr:.3g}; {end}"
    if sug is None:
        fall, noise = (found.flat or {}).get("fall", 0.0), (found.flat or {}).get("noise", 0.0)
        return "\n".join(
            [
                head,
                f"  nothing to suggest: the curve is flat (the smoothed loss never fell by more than {fall:.2g},"
                f" within one batch's noise {noise:.2g})",
                "  keep the planned LRs, or widen the range (--start / --end) or lengthen it (--steps)",
            ]
        )
    steep, low = lr * sug["steepest"], lr * sug["minimum_10"]
    lines = [
        head,
        f"  steepest descent  {ref} lr {steep:.2g}  (x{sug['steepest']:.3g} the planned LRs)",
        f"  minimum / 10      {ref} lr {low:.2g}  (x{sug['minimum_10']:.3g})",
    ]
    if paste is not None:
        lines += [
            f"paste into [phases.{found.phase.name}] (every LR of the phase x{sug['steepest']:.3g}):",
            f"  {paste}",
        ]
    return "\n".join(lines)
