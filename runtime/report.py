"""`ftcompile report`: one self-contained HTML page per set of runs, and curves.png.

Everything is read from the run directory (metrics.jsonl, lr.csv, plan.json, env.json,
summary.json, trials.csv, eval.json: the plain evaluation, the others only named), each checked by runtime/runfiles.py: a damaged or
hand-edited file stops the report (exit 2) with the file, line and field, trials.csv and
lr.csv are checked against plan.json too. Figures are drawn with matplotlib (the plot extra)
and embedded as base64 PNG, so the page needs no network and no other file. Several runs
share the curve figures (one colour per run) and get one column each in the tables.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from ftcompile.runtime.curves import (
    PLOT_HINT,
    CurveData,
    curves_figure,
    outside_legend,
    png,
    pyplot,
    shade_phases,
    write_curves,
)
from ftcompile.runtime.rundir import open_run
from ftcompile.runtime.runfiles import (
    EvalFile,
    as_continued,
    checked,
    describe_eval,
    eval_names,
    eval_variants,
    read_eval,
    read_lr,
    read_trials,
    status_of,
)
from ftcompile.runtime.search_cost import of_run, report_text

from ftcompile import outputs
from ftcompile.errors import RecipeError
from ftcompile.plan import Plan

__all__ = ["build_report", "report_command", "write_curves"]  # write_curves: curves.png, from curves.py
SECTIONS = ("summary", "curves", "lr", "trials", "confusion", "plan", "env")


class RunData(CurveData):
    """What the report needs from one run directory."""

    def __init__(self, run_dir: Path) -> None:
        _, self.env = open_run(run_dir)  # a folder that is not a run is an error here
        super().__init__(run_dir)
        self.status, self.summary = status_of(run_dir)
        # Every file checked (runtime/runfiles.py); lr.csv and trials.csv against the plan too.
        self.lr = as_continued(read_lr(run_dir, self.plan), self.chosen)
        self.trials = read_trials(run_dir, self.plan)
        self.eval = _eval_of(run_dir, self.plan)
        # The report shows eval.json (final weights, no TTA, the run's split); it names the rest.
        self.other_evals = [eval_names(v)[0] for v in eval_variants(run_dir) if v]


def _eval_of(run_dir: Path, plan: Plan) -> dict[str, Any] | None:
    """eval.json; for a finished run without one, evaluate now (and keep eval.json). A
    damaged one is an error naming its field (read_eval), never silently replaced."""
    result = read_eval(run_dir, plan)
    if result is not None:
        return result
    if not (run_dir / "model.pt").is_file():
        return None
    # imports torch: a report of runs that have an eval.json needs none
    from ftcompile.runtime.evaluate import evaluate_run

    try:
        result = evaluate_run(run_dir, None, "final", False)
    except RecipeError:  # e.g. the data is not on this machine: the section says so
        return None
    outputs.write_json(run_dir / "eval.json", checked(EvalFile, result))
    return result


# ---------------------------------------------------------------- figures


def lr_lines(plan: Plan, rows: list[dict[str, Any]]) -> list[tuple[str, list[float]]]:
    """One line per recipe group (`head`), not per param group: a group's `.no_decay` part has
    its LR, and drawn on top it hid the group's line. A part whose LR differs somewhere keeps
    its own line. A frozen group's 0 is no LR (NaN: no line, rather than every frozen group
    on one another at 0)."""
    lines: list[tuple[str, list[float]]] = []
    shown: dict[str, list[float]] = {}
    for pg in plan.param_groups:
        values = [r[pg.name] if r[pg.name] > 0 else math.nan for r in rows]
        if (pg.group in shown and _same(shown[pg.group], values)) or all(math.isnan(v) for v in values):
            continue  # the group's own line shows it; or never trained
        lines.append((pg.name if pg.group in shown else pg.group, values))
        shown.setdefault(pg.group, values)
    return lines


def _same(a: list[float], b: list[float]) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def _broken(steps: list[int], values: list[float]) -> tuple[list[float], list[float]]:
    """A NaN where steps jump (a phase that stopped early): no straight line across steps
    without a row."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (step, value) in enumerate(zip(steps, values, strict=False)):
        if i and step != steps[i - 1] + 1:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(step)
        ys.append(value)
    return xs, ys


def lr_figure(run: RunData) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    shade_phases(ax, run.plan, label=True)
    if run.lr:  # as the run went on: of a trial phase, the chosen alternative's
        steps = [r["step"] for r in run.lr]
        for name, values in lr_lines(run.plan, run.lr):
            ax.plot(*_broken(steps, values), label=name, lw=1.2, drawstyle="steps-post")  # a step's LR holds for it
        outside_legend(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(result: dict[str, Any]) -> bytes:
    # imports torch: a report of runs that have an eval.json needs none
    from ftcompile.runtime.evaluate import plot_confusion

    with tempfile.TemporaryDirectory() as tmp:
        path = plot_confusion(result, Path(tmp) / "confusion.png")
        return path.read_bytes()


# ---------------------------------------------------------------- HTML


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def _wall(summary: dict[str, Any] | None) -> str:
    s = (summary or {}).get("wall_s")
    return "-" if s is None else f"{s:.1f} s"


def summary_section(runs: list[RunData]) -> str:
    rows = []
    for r in runs:
        s = r.summary or {}
        best, final = s.get("best") or {}, s.get("final") or {}
        last = r.evals[-1] if r.evals else {}
        rows.append(
            [
                r.label,
                r.plan.hash[:12],
                r.status + (f": {s['error']}" if s.get("error") else ""),
                f"{len(s.get('phases_done', []))}/{len(r.plan.phases)}",
                f"{s.get('step', '-')}/{r.plan.total_steps}",
                _pct(best.get("top1")),
                _pct(final.get("top1", last.get("top1") if r.status == "finished" else None)),
                f"{final['val_loss']:.4f}" if "val_loss" in final else "-",
                _wall(s),
            ]
        )
    return _table(
        rows,
        [
            "run",
            "plan",
            "status",
            "phases done",
            "steps",
            "best val top-1",
            "final val top-1",
            "final val loss",
            "wall time",
        ],
    )


def trials_section(runs: list[RunData]) -> str:
    parts = []
    for r in runs:
        if not r.trials:
            parts.append(f"<p>{html.escape(r.label)}: no trial phases in this run.</p>")
            continue
        header = list(r.trials[0])
        listed = {t.get("phase", "") for t in r.trials}
        phases = [ph.name for ph in r.plan.phases if ph.name in listed]  # in the order the run took them
        for phase in phases:
            rows = [[_cell(h, t.get(h, "")) for h in header] for t in r.trials if t.get("phase", "") == phase]
            parts.append(f"<h3>{html.escape(r.label)}: phase {html.escape(phase)}</h3>" + _table(rows, header))
            parts.append(_rungs(r, phase))
        parts.append(f"<p>{html.escape(report_text(of_run(r.plan, r.dir), r.status == 'finished'))}</p>")
    return "".join(parts)


def _rungs(r: RunData, phase: str) -> str:
    """With prune: the phase's rung points and which alternatives stopped at each."""
    ph = next(p for p in r.plan.phases if p.name == phase)
    if ph.trials is None or ph.trials.prune is None:
        return ""
    rows = [t for t in r.trials if t.get("phase") == phase]
    lines = []
    for step in (*ph.trials.prune.at, ph.end):
        ks = [f"k={t['k']} ({t['label']})" for t in rows if t.get("reached") == str(step)]
        where = "ran to the end" if step == ph.end else f"stopped at step {step}"
        lines.append(f"{where}: {', '.join(ks) if ks else 'none'}")
    at = ", ".join(str(s) for s in ph.trials.prune.at)
    return (
        f"<p>Rungs at steps {at} of [{ph.begin}, {ph.end}), select {html.escape(ph.trials.select)}: "
        + "; ".join(html.escape(line) for line in lines)
        + ".</p>"
    )


def _cell(column: str, value: str) -> str:
    """A trials.csv value as the terminal shows it: loss to 4 places, accuracies in percent."""
    try:
        number = float(value)
    except ValueError:
        return value
    if column == "val_loss":
        return f"{number:.4f}"
    return _pct(number) if column.startswith("val_top") else value


def confusion_section(runs: list[RunData]) -> str:
    parts = []
    for r in runs:
        if r.eval is None:
            parts.append(
                f"<p>{html.escape(r.label)}: no eval.json yet; <code>ftcompile eval {html.escape(str(r.dir))}</code> "
                "adds per-class numbers and the confusion matrix.</p>"
            )
            continue
        e = r.eval
        worst = sorted(e["per_class"], key=lambda c: (c["support"] == 0, c["f1"]))[:10]
        others = (
            f" Other evaluations in the run folder, not shown: {html.escape(', '.join(r.other_evals))}."
            if r.other_evals
            else ""
        )
        parts.append(
            f"<h3>{html.escape(r.label)}: {html.escape(str(e['data']))}, {e['images']} images, weights {e['weights_file']}"
            f"{', TTA' if e.get('tta') else ''}</h3>"
            f"<p>Shown: eval.json, the evaluation of {html.escape(describe_eval(e))}.{others}</p>"
            f"<p>loss {e['loss']:.4f}, top-1 {_pct(e['top1'])}, balanced accuracy {_pct(e['balanced_accuracy'])}, "
            f"macro F1 {e['macro_f1']:.4f}</p>"
            + _table(
                [[c["class"], _pct(c["precision"]), _pct(c["recall"]), f"{c['f1']:.4f}", c["support"]] for c in worst],
                ["class (worst F1 first)", "precision", "recall", "F1", "support"],
            )
            + _img(confusion_figure(e), f"confusion matrix of {r.label}")
        )
    return "".join(parts)


def plan_section(runs: list[RunData]) -> str:
    parts = []
    for r in runs:
        p = r.plan
        weights = p.model.weights
        parts.append(
            f"<h3>{html.escape(r.label)}</h3><p>{html.escape(p.model.arch)}, weights "
            f"{html.escape('none' if weights.kind == 'none' else f'{weights.kind} {weights.value}')}, {p.model.num_classes} classes, {p.model.total_params:,} parameters; "
            f"data {p.data.train_size} train / {p.data.val_size} val images at {p.data.image_size} px, batch "
            f"{p.data.batch_size}, {p.data.steps_per_epoch} steps per epoch; optimizer {html.escape(p.optimizer.type)} "
            f"{html.escape(json.dumps(p.optimizer.kwargs))}; {p.total_steps} steps; plan {p.hash[:12]}</p>"
            + _table(
                [
                    [
                        ph.name,
                        f"[{ph.begin}, {ph.end})",
                        f"{ph.epochs:g}",
                        ", ".join(ph.train),
                        f"{ph.trainable_pct}%",
                        ph.scheduler.type if ph.scheduler else "constant",
                        ", ".join(f"{g} {v.peak:.3g}" for g, v in ph.lr.items()),
                    ]
                    for ph in p.phases
                ],
                ["phase", "steps", "epochs", "trains", "trainable", "scheduler", "peak LR per group"],
            )
        )
    return "".join(parts)


def env_section(runs: list[RunData]) -> str:
    rows = []
    for r in runs:
        e = r.env
        v = e.get("versions", {})
        git = e.get("git") or {}
        rows.append(
            [
                r.label,
                ", ".join(f"{k} {val}" for k, val in v.items()),
                e.get("device"),
                e.get("cuda") or "-",
                e.get("processes", 1),
                (git.get("commit") or "-")[:12] + (" (modified)" if git.get("dirty") else ""),
                e.get("recipe") or "-",
            ]
        )
    return _table(rows, ["run", "versions", "device", "GPU", "processes", "git commit", "recipe"])


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px;text-align:left}
th{background:#f2f2f2}img{max-width:100%;display:block;margin:0.5em 0}h2{border-bottom:2px solid #ddd;margin-top:1.6em}
code{background:#f4f4f4;padding:1px 4px}"""


def build_report(run_dirs: list[Path]) -> str:
    runs = [RunData(d) for d in run_dirs]
    title = "ftcompile report: " + ", ".join(r.label for r in runs)
    lr_parts = "".join(
        (f"<h3>{html.escape(r.label)}</h3>" if len(runs) > 1 else "") + _img(png(lr_figure(r)), f"LR of {r.label}")
        for r in runs
    )
    sections = {
        "summary": ("How the runs went", summary_section(runs)),
        "curves": (
            "Loss and validation metrics (phases shaded)",
            _img(png(curves_figure(runs)), "loss and accuracy curves"),
        ),
        "lr": ("Learning rate per param group", lr_parts),
        "trials": ("Trials", trials_section(runs)),
        "confusion": ("Per-class results and confusion matrix", confusion_section(runs)),
        "plan": ("Plan", plan_section(runs)),
        "env": ("Environment", env_section(runs)),
    }
    body = "".join(
        f'<section id="{key}"><h2>{html.escape(head)}</h2>{content}</section>'
        for key, (head, content) in sections.items()
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'>{outputs.REPORT_MARK}<title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def report_command(run_dirs: list[Path], out: Path | None, force: bool = False) -> int:
    if not run_dirs:
        raise RecipeError("no run directory given", suggestion="ftcompile report runs/<name>/<n>-<hash8>")
    try:
        import matplotlib  # noqa: F401 - optional extra (plot): checked before any work
    except ImportError:
        raise RecipeError(
            "the report draws its figures with matplotlib, which is not installed", suggestion=PLOT_HINT
        ) from None
    path = out or (run_dirs[0] / "report.html" if len(run_dirs) == 1 else Path("report.html"))
    # Inside a run directory only the report beside that run (one of those reported on).
    outputs.check_output(path, outputs.REPORT, "-o", force=force, own=[d / "report.html" for d in run_dirs])
    outputs.write_text(path, build_report(run_dirs))
    print(f"wrote {path}")
    return 0
