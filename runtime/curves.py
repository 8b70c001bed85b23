"""curves.png: loss and validation metrics against steps, the phases shaded and named.

Drawn from metrics.jsonl with matplotlib (the plot extra). `ftcompile run` writes it at the
end of a run; `ftcompile report` embeds the same figure for one or several runs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ftcompile.runtime.runfiles import as_continued, chosen_alternatives, read_records

from ftcompile import outputs
from ftcompile.errors import RecipeError
from ftcompile.plan import Plan

PLOT_HINT = "pip install 'ftcompile[plot]' (matplotlib)"


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or a RecipeError saying how to get it."""
    try:
        import matplotlib  # optional extra (plot): a missing one is the RecipeError below

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional extra (plot)
    except ImportError:
        raise RecipeError("matplotlib is not installed", suggestion=PLOT_HINT) from None
    return plt


class CurveData:
    """A run's plan, step records and evaluations, as the run went on: in a trial phase the
    chosen alternative's (runfiles.as_continued)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.plan = Plan.load(run_dir / "plan.json")
        self.chosen = chosen_alternatives(run_dir, self.plan)  # trial phase -> its chosen alternative
        records = as_continued(read_records(run_dir), self.chosen)
        self.steps = [r for r in records if r["type"] == "step"]
        self.evals = [r for r in records if r["type"] == "eval"]

    @property
    def label(self) -> str:
        return f"{self.plan.recipe.name} {self.dir.name}"


def shade_phases(ax: Any, plan: Plan, label: bool) -> None:
    """Alternate grey bands for the phases, each named at the top of the plot."""
    for i, ph in enumerate(plan.phases):
        ax.axvspan(ph.begin, ph.end, color="0.9" if i % 2 == 0 else "0.97", zorder=0)
        if label:
            ax.text(
                (ph.begin + ph.end) / 2,
                1.0,
                ph.name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="0.3",
            )


def outside_legend(ax: Any) -> None:
    """The legend right of the axes, where it covers no data (inside, "best" still covered
    curves that fill the plot); tight_layout makes room for it."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def curves_figure(runs: list[CurveData]) -> Any:
    """Train loss and val loss (top), val top-1 / top-5 (bottom), phases shaded (first run's)."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for ax in (ax_loss, ax_acc):
        shade_phases(ax, runs[0].plan, label=ax is ax_loss)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        c = colors[i % len(colors)]
        tag = f" ({run.label})" if len(runs) > 1 else ""
        if run.steps:
            ax_loss.plot(
                [r["step"] + 1 for r in run.steps],
                [r["loss"] for r in run.steps],
                color=c,
                alpha=0.35,
                lw=1,
                label=f"train loss{tag}",
            )
        if run.evals:
            steps = [r["step"] for r in run.evals]
            ax_loss.plot(steps, [r["val_loss"] for r in run.evals], "o-", color=c, label=f"val loss{tag}")
            ax_acc.plot(steps, [100 * r["top1"] for r in run.evals], "o-", color=c, label=f"val top-1{tag}")
            if all("top5" in r for r in run.evals):
                ax_acc.plot(
                    steps, [100 * r["top5"] for r in run.evals], "s--", color=c, alpha=0.6, label=f"val top-5{tag}"
                )
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_acc.set_ylabel("val accuracy (%)")
    ax_acc.set_xlabel("optimizer step")
    for ax in (ax_loss, ax_acc):
        outside_legend(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def png(fig: Any, kind: outputs.Kind | None = None, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (closed); a figure written as a file carries its kind
    (outputs.png_metadata), which lets a later write recognise it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=outputs.png_metadata(kind) if kind else None)
    plt.close(fig)
    return buf.getvalue()


def write_curves(run_dirs: list[Path], path: Path) -> Path:
    outputs.write_bytes(path, png(curves_figure([CurveData(d) for d in run_dirs]), outputs.CURVES))
    return path
