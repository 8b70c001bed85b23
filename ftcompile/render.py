"""Stage 6: show a plan — the `ftcompile plan` table, the LR trace as CSV, the LR plot."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftcompile.plan import Change, Plan, WeightsSpec


def _num(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _lr(x: float) -> str:
    return f"{x:.3g}"


def head_layers(head: dict[str, Any] | None) -> str:
    if not head:
        return "Linear"
    widths = [*head.get("hidden", []), "C"]
    pool = head.get("pool") or "avg"
    bn = "BN+" if head.get("batchnorm") else ""
    return f"{pool}pool -> " + " -> ".join(f"{bn}Linear({w})" for w in widths)


def weights_text(weights: WeightsSpec) -> str:
    if weights.kind == "none":
        return "none (random init)"
    if weights.kind == "file":
        return weights.value
    if weights.kind == "recipe":
        return f"model.pt of {weights.value} (plan {weights.plan['hash'][:8]})"
    return weights.value


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_change(c: Change) -> str:
    if c.op == "phase":
        return f"begin phase {c.target}"
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
        args = ", ".join(f"{k}={_short(v)}" for k, v in c.value["args"].items())
        return f"start {c.value['type']}({args}) on {', '.join(c.value['param_groups'])}"
    return f"{c.op} (end of {c.target})" if c.op in ("evaluate", "checkpoint") else c.op


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return repr(v) if isinstance(v, str) else str(v)


def render(plan: Plan, max_changes: int = 200) -> str:
    m, d = plan.model, plan.data
    source = f"builtin {d.builtin}" if d.builtin else f"{d.train} | {d.val}"
    out = [
        f"plan {plan.hash[:12]}  recipe {plan.recipe['name']} ({plan.recipe['file']})  seed {plan.seed}",
        f"model  {m.arch}  weights {weights_text(m.weights)}  head {head_layers(m.head)}  "
        f"classes {m.num_classes}  params {_num(m.total_params)}",
        f"data   {source}  train {d.train_size}  val {d.val_size}  batch {d.batch_size}  "
        f"steps/epoch {d.steps_per_epoch}  drop_last {str(d.drop_last).lower()}",
        f"optim  {plan.optimizer.type}({', '.join(f'{k}={_short(v)}' for k, v in plan.optimizer.kwargs.items())})"
        f"  no_decay {plan.optimizer.no_decay}  param groups {len(plan.param_groups)}",
        "",
    ]
    rows = [["phase", "after", "steps", "epochs", "train (params, % of model)", "lr first / peak / last", "scheduler"]]
    numel = {g["name"]: g["numel"] for g in plan.groups}
    for ph in plan.phases:
        trained = ", ".join(f"{g} {_num(numel[g])}" for g in ph.train) + f" ({ph.trainable_pct:.1f}%)"
        lrs = "; ".join(f"{g} {_lr(v['first'])}/{_lr(v['peak'])}/{_lr(v['last'])}" for g, v in ph.lr.items())
        sched = ph.scheduler["type"] if ph.scheduler else "constant"
        rows.append(
            [ph.name, ",".join(ph.after) or "-", f"[{ph.begin}, {ph.end})", f"{ph.epochs:g}", trained, lrs, sched]
        )
    out.append(table(rows))
    width = max(len(ph.name) for ph in plan.phases)
    out += ["", "feature cache (frozen part computed once, head trained on its output):"]
    out += [f"  {ph.name:<{width}}  {'yes' if ph.cache['on'] else 'no '}  {ph.cache['why']}" for ph in plan.phases]
    out += ["", f"changes ({len(plan.changes)}; at step S = after S optimizer steps):"]
    for c in plan.changes[:max_changes]:
        out.append(f"  {c.step:>7}  {describe_change(c)}")
    if len(plan.changes) > max_changes:
        out.append(f"  ... {len(plan.changes) - max_changes} more (see --json)")
    return "\n".join(out)


def trace_csv(plan: Plan, rows: Iterable[tuple[int, str, list[float]]]) -> str:
    """One row per optimizer step; repr() keeps full float precision so traces compare exactly."""
    lines = [",".join(["step", "phase", *plan.param_group_names])]
    lines += [",".join([str(step), phase, *(repr(float(x)) for x in lrs)]) for step, phase, lrs in rows]
    return "\n".join(lines) + "\n"


def plot(plan: Plan, rows: list[tuple[int, str, list[float]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ftcompile.errors import RecipeError

        raise RecipeError("--plot needs matplotlib", key="--plot", suggestion="pip install 'ftcompile[plot]'") from None
    fig, ax = plt.subplots(figsize=(10, 4))
    steps = [r[0] for r in rows]
    for i, name in enumerate(plan.param_group_names):
        if name.endswith(".no_decay"):
            continue
        ax.plot(steps, [r[2][i] for r in rows], label=name)
    for ph in plan.phases[1:]:
        ax.axvline(ph.begin, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_yscale("symlog", linthresh=1e-7)
    ax.set_title(f"{plan.recipe['name']} ({plan.hash[:8]})")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
