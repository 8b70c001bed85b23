"""Stage 6: show a plan — the `ftcompile plan` table, the LR trace as CSV, the LR plot."""

from __future__ import annotations

import bisect
import io
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ftcompile import memory, outputs
from ftcompile.errors import RecipeError
from ftcompile.plan import (
    Change,
    DataSpec,
    HeadSpec,
    MixSpec,
    PhasePlan,
    Plan,
    SchedulerStart,
    ValSplit,
    WeightsSpec,
    checkpoints_kept,
    phase_starts,
)

WIDTH = 100  # columns of `ftcompile plan` without --wide


def counted(n: int, noun: str) -> str:
    """`1 phase`, `4 phases`: a count and its noun, plural unless it is one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith(("s", "sh", "ch", "x")) else f"{n} {noun}s"


def _num(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _lr(x: float) -> str:
    return f"{x:.3g}"


def head_layers(head: HeadSpec | None) -> str:
    if not head:
        return "Linear"
    widths = [*head.hidden, "C"]
    pool = head.pool or "avg"
    bn = "BN+" if head.batchnorm else ""
    return f"{pool}pool -> " + " -> ".join(f"{bn}Linear({w})" for w in widths)


def weights_text(weights: WeightsSpec) -> str:
    if weights.kind == "none":
        return "none (random init)"
    if weights.kind == "recipe":
        return f"model.pt of {weights.value} (plan {weights.upstream_hash[:8]})"
    return str(weights.value)  # a file, or a torchvision weights name


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def wrap_table(rows: list[list[str]], width: int, column: int) -> str:
    """`table`, with the cells of `column` wrapped (at ", ") so that no line is wider than
    `width`; a wrapped row goes on under that column, the other cells empty."""
    others = sum(max(len(r[i]) for r in rows) for i in range(len(rows[0])) if i != column)
    room = max(width - others - 2 * (len(rows[0]) - 1), 16)
    out: list[list[str]] = []
    for r in rows:
        pieces = textwrap.wrap(r[column], room, break_on_hyphens=False, break_long_words=False) or [""]
        out.append([*r[:column], pieces[0], *r[column + 1 :]])
        out += [["" if i != column else piece for i in range(len(r))] for piece in pieces[1:]]
    return table(out)


def fit(parts: list[str], width: int, indent: int) -> list[str]:
    """Join `parts` with two spaces into lines of at most `width` columns (a part longer than
    a line gets one of its own); lines after the first are indented by `indent`."""
    lines: list[str] = []
    line = ""
    for part in parts:
        if line and len(line) + 2 + len(part) > width:
            lines.append(line)
            line = " " * indent + part
        else:
            line = f"{line}  {part}" if line else part
    return [*lines, line]


def wrapped(text: str, width: int, indent: int) -> list[str]:
    """One long line as several of at most `width` columns, continuation lines indented."""
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=" " * indent, break_on_hyphens=False, break_long_words=False)


def where_in_phase(plan: Plan, c: Change) -> str:
    """Where an evaluation / checkpoint falls: "end of X", or how far into X it is."""
    ph = next((p for p in plan.phases if p.name == c.target), None)
    if ph is None or c.step == ph.end:
        return f"end of {c.target}"
    done = (c.step - ph.begin) / plan.data.steps_per_epoch
    if done == int(done):
        return f"{c.target}, after epoch {int(done)} of {ph.epochs:g}"
    return f"{c.target}, after {done:.3g} of {ph.epochs:g} epochs"


def describe_change(c: Change, plan: Plan | None = None) -> str:
    if c.op == "phase":
        return f"begin phase {c.target}"
    if c.op == "trial":
        return f"trials of {c.target}: each alternative runs the phase from here (see trials above)"
    if c.op in ("freeze", "unfreeze"):
        return f"{c.op} {c.target}"
    if c.op == "bn":
        return f"BatchNorm of {c.target}: {'eval mode (frozen stats)' if c.value == 'frozen' else 'train mode'}"
    if c.op == "set":
        return f"set {c.target}.{c.field} = {c.value:.6g}"
    if c.op == "features":
        return f"feature cache on: train {c.value} on cached inputs" if c.value else "feature cache off"
    if c.op == "reset_state":
        return f"reset optimizer state of {c.target}"
    if c.op == "scheduler":
        if c.value is None:
            return f"constant LR (no scheduler) for {c.target}"
        assert isinstance(c.value, SchedulerStart)
        args = ", ".join(f"{k}={_short(v)}" for k, v in c.value.args.items())
        return f"start {c.value.type}({args}) on {', '.join(c.value.param_groups)}"
    if c.op in ("evaluate", "checkpoint"):
        return f"{c.op} ({where_in_phase(plan, c) if plan else f'end of {c.target}'})"
    return c.op


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return repr(v) if isinstance(v, str) else str(v)


def checkpoints_line(plan: Plan) -> str:
    """Which checkpoints the run writes, and which stay on disk while running and after."""
    steps = sorted({c.step for c in plan.changes if c.op == "checkpoint"})
    policy = plan.run.keep_checkpoints
    if not steps:
        return (
            f'checkpoints  none written (checkpoint_every = "never", keep_checkpoints = "{policy}"): '
            "an interrupted run starts again at step 0"
        )
    every = plan.run.checkpoint_every
    written = f"every {counted(every, 'step')} and at phase ends" if every else "at phase ends only"
    final = sorted(checkpoints_kept(steps, phase_starts(plan), policy, finished=True))
    running = {"boundaries": "the newest + phase starts", "all": "all", "last": "the newest", "none": "the newest"}
    after = "steps " + ", ".join(map(str, final)) if final else "none"
    return (
        f"checkpoints  {len(steps)} written ({written}); kept while running: {running[policy]}; "
        f'kept once finished: {after} (keep_checkpoints = "{policy}")'
    )


def _val_text(val: str | ValSplit | None) -> str:
    """data.val: a folder, or `split 0.15 (seed 0)` for a split made at compile time."""
    return f"split {val.split:g} (seed {val.seed})" if isinstance(val, ValSplit) else str(val)


def _header(plan: Plan) -> list[list[str]]:
    """The plan, model, data and optimizer lines, as parts joined by two spaces."""
    m, d = plan.model, plan.data
    source = f"builtin {d.builtin}" if d.builtin else f"{d.train} | {_val_text(d.val)}"
    return [
        [f"plan {plan.hash[:12]}", f"recipe {plan.recipe.name} ({plan.recipe.file})", f"seed {plan.seed}"],
        [
            "model",
            m.arch,
            f"weights {weights_text(m.weights)}",
            f"head {head_layers(m.head)}",
            f"classes {m.num_classes}",
            f"params {_num(m.total_params)}",
        ],
        [
            "data ",
            source,
            f"train {d.train_size}",
            f"val {d.val_size}",
            f"batch {d.batch_size}",
            f"steps/epoch {d.steps_per_epoch}",
            f"drop_last {str(d.drop_last).lower()}",
        ],
        [
            "optim",
            f"{plan.optimizer.type}({', '.join(f'{k}={_short(v)}' for k, v in plan.optimizer.kwargs.items())})",
            f"no_decay {plan.optimizer.no_decay}",
            f"param groups {len(plan.param_groups)}",
        ],
    ]


def _wide_phases(plan: Plan) -> str:
    rows = [["phase", "after", "steps", "epochs", "train (params, % of model)", "lr first / peak / last", "scheduler"]]
    numel = {g.name: g.numel for g in plan.groups}
    for ph in plan.phases:
        trained = ", ".join(f"{g} {_num(numel[g])}" for g in ph.train) + f" ({ph.trainable_pct:.1f}%)"
        lrs = "; ".join(f"{g} {_lr(v.first)}/{_lr(v.peak)}/{_lr(v.last)}" for g, v in ph.lr.items())
        sched = ph.scheduler.type if ph.scheduler else "constant"
        rows.append(
            [ph.name, ",".join(ph.after) or "-", f"[{ph.begin}, {ph.end})", f"{ph.epochs:g}", trained, lrs, sched]
        )
    return table(rows)


def _phases(plan: Plan, width: int) -> list[str]:
    """The phase table in `width` columns: trained groups wrap; LRs get lines of their own."""
    rows = [["phase", "after", "steps", "epochs", "train (% of model)", "scheduler"]]
    for ph in plan.phases:
        sched = ph.scheduler.type if ph.scheduler else "constant"
        rows.append(
            [
                ph.name,
                ",".join(ph.after) or "-",
                f"[{ph.begin}, {ph.end})",
                f"{ph.epochs:g}",
                ", ".join(ph.train) + f" ({ph.trainable_pct:.1f}%)",
                sched,
            ]
        )
    out = [wrap_table(rows, width, column=4), ""]
    sizes = ", ".join(f"{g.name} {_num(g.numel)}" for g in plan.groups)
    out += wrapped(f"group params: {sizes}", width, 2)
    out += ["", "lr first / peak / last:"]
    pw = max(len(ph.name) for ph in plan.phases)
    gw = max(len(g) for ph in plan.phases for g in ph.lr) if any(ph.lr for ph in plan.phases) else 0
    for ph in plan.phases:
        for i, (g, v) in enumerate(ph.lr.items()):
            name = ph.name if i == 0 else ""
            out.append(f"  {name:<{pw}}  {g:<{gw}}  {_lr(v.first)} / {_lr(v.peak)} / {_lr(v.last)}".rstrip())
    return out


def render(plan: Plan, max_changes: int = 200, wide: bool = False, summary: bool = False) -> str:
    """The `ftcompile plan` text: at most WIDTH columns, or every line whole with `wide`;
    `summary` stops after the phases (what `plan -o plan.json` prints)."""
    width = 10**9 if wide else WIDTH
    out = [line for parts in _header(plan) for line in fit(parts, width, indent=7)]
    out += [line for text in knob_lines(plan) for line in wrapped(text, width, 7)]
    out += [
        *wrapped(memory.describe(plan), width, 7),
        *(wrapped(w, width, 7) if (w := memory.warning(plan)) else []),
        "",
    ]
    out += [_wide_phases(plan)] if wide else _phases(plan, width)
    out += trials_text(plan, width)
    out += ["", *wrapped(checkpoints_line(plan), width, 13)]
    if summary:
        return "\n".join(out)
    names = max(len(ph.name) for ph in plan.phases)
    out += ["", "feature cache (frozen part computed once, head trained on its output):"]
    for ph in plan.phases:
        out += wrapped(f"  {ph.name:<{names}}  {'yes' if ph.cache.on else 'no '}  {ph.cache.why}", width, names + 9)
    out += metric_driven_lines(plan, names)
    out += ["", f"changes ({len(plan.changes)}; at step S = after S optimizer steps):"]
    for c in plan.changes[:max_changes]:
        out += wrapped(f"  {c.step:>7}  {describe_change(c, plan)}", width, 11)
    if len(plan.changes) > max_changes:
        out.append(f"  ... {len(plan.changes) - max_changes} more (see --json)")
    return "\n".join(out)


def metric_driven_lines(plan: Plan, width: int) -> list[str]:
    """stop_early / restore_best per phase and keep_best; nothing for a plan without them."""
    phases = [ph for ph in plan.phases if ph.stop_early or ph.restore_best]
    out = ["", "metric-driven (a phase that can stop early ends at most at its planned end):"] if phases else []
    for ph in phases:
        parts = []
        if ph.stop_early:
            s = ph.stop_early
            evals = plan.evaluations(ph.name)
            parts.append(
                f"stop_early {s.metric} patience {s.patience} min_delta {s.min_delta:g} "
                f"({evals} evaluations planned{' per alternative' if ph.trials else ''})"
            )
        if ph.restore_best:
            parts.append(f"restore_best {ph.restore_best}")
        out.append(f"  {ph.name:<{width}}  " + "; ".join(parts))
    if plan.run.keep_best:
        out += ["", f"keep_best {plan.run.keep_best}: best.pt holds the run's best evaluation"]
    return out


def val_pipeline(d: DataSpec) -> str:
    """The validation transforms, as the runtime builds them (DataSpec.val_preprocessing)."""
    val = d.val_preprocessing
    return f"Resize({val.resize}) -> CenterCrop({val.crop})"


def _mix_text(mix: MixSpec | None) -> str:
    if not mix:
        return "off"
    return (
        f"MixUp(alpha={mix.mixup_alpha:g}) / CutMix(alpha={mix.cutmix_alpha:g}), prob {mix.prob:g}, "
        f"switch_prob {mix.switch_prob:g}; soft-target cross-entropy"
    )


def knob_lines(plan: Plan) -> list[str]:
    """The training knobs: the val pipeline always, the others when they are on."""
    m, d, o, r = plan.model, plan.data, plan.optimizer, plan.run
    out = [f"val    {val_pipeline(d)}"]
    if d.mix:
        out.append(f"mix    {_mix_text(d.mix)}")
    if m.builder_args:
        out.append(f"build  {m.arch}({', '.join(f'{k}={_short(v)}' for k, v in m.builder_args.items())})")
    if m.head_weights == "load":
        out.append('head   loaded from the weights (head_weights = "load")')
    if o.clip_grad_norm is not None or o.clip_grad_value is not None:
        parts = [
            f"norm <= {o.clip_grad_norm:g}" if o.clip_grad_norm is not None else "",
            f"|value| <= {o.clip_grad_value:g}" if o.clip_grad_value is not None else "",
        ]
        out.append(f"clip   gradients of trainable parameters: {', '.join(p for p in parts if p)}")
    if r.accumulate > 1:
        out.append(
            f"accum  {r.accumulate} micro-batches of {d.batch_size // r.accumulate} per optimizer step "
            "(divided by the number of processes)"
        )
    if r.ema:
        warm = ", warmup" if r.ema.warmup else ""
        out.append(
            f"ema    decay {r.ema.decay:g} every {r.ema.every} step(s){warm}: also evaluated (*_ema) "
            "and saved (model_ema.pt)"
        )
    if r.sync_bn:
        out.append("sync   SyncBatchNorm under several processes (a no-op with one process)")
    for ph in plan.phases:
        if ph.data is not None:
            pd = ph.data
            out.append(
                f"data   phase {ph.name}: image {pd.image_size}  batch {pd.batch_size}  "
                f"steps/epoch {pd.steps_per_epoch}  augment {len(pd.augment)} op(s)  "
                f"mix {'on' if pd.mix else 'off'}  (epoch {pd.epoch_base} at step {pd.data_begin})"
            )
    return out


def trials_text(plan: Plan, width: int) -> list[str]:
    """One row per alternative of each trial phase (a line per trained group), and what the
    trials cost in steps."""
    phases = [ph for ph in plan.phases if ph.trials]
    if not phases:
        return []
    out = []
    for ph in phases:
        assert ph.trials is not None
        t = ph.trials
        pruned = ", or to the rung where it is pruned" if t.prune else ""
        out += [
            "",
            *wrapped(
                f"trials of {ph.name} ({len(t.alternatives)} alternatives, {t.mode}; each runs "
                f"[{ph.begin}, {ph.end}) from the phase-start state{pruned}; select {t.select}, keep {t.keep}):",
                width,
                2,
            ),
        ]
        rows = [["k", "alternative", "trained group: lr first / peak / last"]]
        for a in t.alternatives:
            lrs = [f"{g}: {_lr(v.first)} / {_lr(v.peak)} / {_lr(v.last)}" for g, v in a.lr.items()]
            rows.append([str(a.k), a.label, lrs[0] if lrs else ""])
            rows += [["", "", more] for more in lrs[1:]]
        out += ["  " + line for line in table(rows).splitlines()]
        out += prune_lines(ph, width)
    cost = f"cost: {plan.steps_with_trials} optimizer steps ({plan.total_steps} without trials"
    if any(ph.trials and ph.trials.prune for ph in phases):
        full = plan.total_steps + sum(
            (len(ph.trials.alternatives) - 1) * (ph.end - ph.begin) for ph in phases if ph.trials
        )
        cost += f", {full} without prune"
    out += ["", cost + ")"]
    return out


def prune_lines(ph: PhasePlan, width: int) -> list[str]:
    """A pruned trial phase's rungs: which steps run (alternatives x steps per stretch) and the
    phase's cost in steps against every alternative's whole window."""
    t = ph.trials
    if t is None or t.prune is None:
        return []
    n, window = len(t.alternatives), ph.end - ph.begin
    rows = []
    stretches = t.prune.stretches(n, ph.begin, ph.end)
    for i, (a, b, k) in enumerate(stretches):
        runs = f"{k} {'alternative' if k == 1 else 'alternatives'} x {b - a} steps [{a}, {b})"
        if i < len(t.prune.at):
            kept = t.prune.keep[i]
            what = f"rung {i + 1} at step {b}"
            runs += f"; evaluated, the best {kept} {'goes' if kept == 1 else 'go'} on"
        else:
            what = f"to the end at step {b}"
        rows.append([f"{what}:", runs])
    steps, full = t.steps(ph.begin, ph.end), n * window
    out = [
        "",
        *wrapped(f"  prune (successive halving on {t.select}, non-finite last, ties keep the earlier):", width, 4),
    ]
    w = max(len(what) for what, _ in rows)
    out += [line for what, runs in rows for line in wrapped(f"    {what:<{w}}  {runs}", width, w + 6)]
    out += wrapped(
        f"    cost: {steps} steps against {full} without prune ({n} x {window}), {steps / full:.2f}x; in the best "
        "and the worst case alike: the rungs fix how far each alternative runs (one whose loss becomes inf or "
        "nan stops sooner)",
        width,
        6,
    )
    return out


def trace_csv(plan: Plan, rows: Iterable[tuple[int, str, list[float], int | None]]) -> str:
    """One row per optimizer step a run takes; repr() keeps full float precision so traces
    compare exactly. `trial` is the alternative's index in a trial phase, empty elsewhere."""
    return "".join(trace_lines(plan, rows))


def trace_lines(plan: Plan, rows: Iterable[tuple[int, str, list[float], int | None]]) -> Iterator[str]:
    """`trace_csv` line by line, so a long trace is written without being joined in memory;
    the rows in the order a run takes the steps (`run_order`)."""
    yield ",".join(["step", "phase", "trial", *plan.param_group_names]) + "\n"
    for step, phase, lrs, trial in run_order(plan, rows):
        yield ",".join([str(step), phase, "" if trial is None else str(trial), *(repr(float(x)) for x in lrs)]) + "\n"


Row = tuple[int, str, list[float], int | None]


def run_order(plan: Plan, rows: Iterable[Row]) -> Iterator[Row]:
    """The trace's rows in the order a run takes the steps. A trial phase with `prune` goes
    rung by rung: every alternative still running to the next rung point (k ascending), then
    the survivors to the one after, as the run merges its logs. Every alternative's whole
    window is listed, so a run's lr.csv is this trace less the stretches after the rung where
    an alternative stopped. Other phases keep the trace's order (a trial phase without
    `prune`: each alternative's whole window, k ascending)."""
    rungs = {ph.name: ph.trials.prune.at for ph in plan.phases if ph.trials and ph.trials.prune}
    held: list[Row] = []
    for row in rows:
        if held and row[1] != held[0][1]:
            yield from _by_rung(held, rungs[held[0][1]])
            held = []
        if row[1] in rungs and row[3] is not None:
            held.append(row)
        else:
            yield row
    if held:
        yield from _by_rung(held, rungs[held[0][1]])


def _by_rung(rows: list[Row], at: tuple[int, ...]) -> list[Row]:
    """A pruned phase's rows by stretch (the row of step s runs in the stretch after the rung
    points <= s), then alternative; sorted() is stable, so each stretch's steps stay in order."""
    return sorted(rows, key=lambda r: (bisect.bisect_right(at, r[0]), r[3]))


def plot(plan: Plan, rows: list[tuple[int, str, list[float], int | None]], path: Path) -> None:
    try:
        import matplotlib  # optional extra (plot)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional extra (plot)
    except ImportError:
        raise RecipeError("--plot needs matplotlib", key="--plot", suggestion="pip install 'ftcompile[plot]'") from None
    fig, ax = plt.subplots(figsize=(11, 4.5))
    rows = [r for r in rows if not r[3]]  # a trial phase: its first alternative
    steps = [r[0] for r in rows]
    # Phase bands first (behind the curves), alternately shaded, each named at the top.
    for i, ph in enumerate(plan.phases):
        ax.axvspan(ph.begin, ph.end, color="0.92" if i % 2 == 0 else "0.97", lw=0, zorder=0)
        ax.text(
            (ph.begin + ph.end) / 2,
            1.01,
            ph.name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize="small",
            clip_on=False,
        )
    base = [name.removesuffix(".no_decay") for name in plan.param_group_names]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(set(base)) > len(colors):  # one colour per group as long as tab20 lasts
        tab20 = plt.get_cmap("tab20")
        colors = [matplotlib.colors.to_hex(tab20(i)) for i in range(tab20.N)]
    color_of = {g: colors[i % len(colors)] for i, g in enumerate(dict.fromkeys(base))}
    for i, name in enumerate(plan.param_group_names):
        # lr 0 = frozen: a gap on a log axis, not a plunge to the bottom.
        lrs = [r[2][i] if r[2][i] > 0 else float("nan") for r in rows]
        # A no_decay part mostly shares its group's LR: dashed and darker, so it shows on top.
        dashed = name.endswith(".no_decay")
        color = [0.55 * c for c in matplotlib.colors.to_rgb(color_of[base[i]])] if dashed else color_of[base[i]]
        ax.plot(
            steps,
            lrs,
            label=name,
            color=color,
            ls=(0, (3, 3)) if dashed else "-",
            lw=1.2 if dashed else 2.0,
            zorder=3 if dashed else 2,
        )
    ax.set_xlim(0, plan.total_steps)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate (log; gaps: frozen)")
    ax.set_yscale("log")
    ax.set_title(f"{plan.recipe.name} ({plan.hash[:8]})", pad=18)
    ax.legend(fontsize="small", ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata=outputs.png_metadata(outputs.LR_PLOT))
    plt.close(fig)
    outputs.write_bytes(path, buf.getvalue())
