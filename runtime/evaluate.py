"""Judge and use a finished run: `ftcompile eval` and `ftcompile predict`.

Both rebuild the model from plan.json (the torchvision builder with the recipe's head, no
download: the weights come from the run) and use exactly the run's validation transforms
(`data.build_transforms(train=False)`), so a prediction here is what the run's own
evaluation would have said.

Per-class numbers are counted from the confusion matrix, in float64: precision, recall, F1
and support per class, balanced accuracy (mean recall over classes with support) and macro
F1. torchmetrics computes the same numbers; the tests check ours against it, and keeping
the counting here saves a runtime dependency for ~15 lines of arithmetic.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ftcompile.runtime.curves import PLOT_HINT, png, pyplot
from ftcompile.runtime.data import DigitsImages, ImageFiles, _digits_images, _loader, build_transforms, read_rgb
from ftcompile.runtime.model import load_state
from ftcompile.runtime.rundir import open_run
from ftcompile.runtime.runfiles import OWN_DATA, EvalFile, checked, eval_names, eval_variant
from torch import nn

from ftcompile import arch as archs
from ftcompile import outputs
from ftcompile.datasets import IMG_EXTENSIONS, class_folders, list_image_folder, resolve_splits
from ftcompile.errors import RecipeError
from ftcompile.plan import Plan

# --weights -> the file in the run directory
WEIGHTS = {"final": "model.pt", "best": "best.pt", "ema": "model_ema.pt"}
WEIGHTS_HINT = {
    "final": "the run has not finished: `ftcompile resume RUN_DIR` completes it",
    "best": 'best.pt is written by runs with [run] keep_best = "val_top1"',
    "ema": "model_ema.pt is written by runs with [run] ema = { decay = ... }",
}


@dataclass
class LoadedRun:
    run_dir: Path
    plan: Plan
    env: dict[str, Any]
    model: nn.Module
    weights: str


def load_run(run_dir: Path, weights: str = "final") -> LoadedRun:
    """The run's model with the chosen weights, in eval mode on the CPU."""
    plan, env = open_run(run_dir)
    if weights not in WEIGHTS:
        raise RecipeError(f"unknown weights {weights!r}", key="--weights", suggestion=f"one of {', '.join(WEIGHTS)}")
    path = run_dir / WEIGHTS[weights]
    if not path.is_file():
        raise RecipeError(
            f"{run_dir} has no {path.name}", file=run_dir, key="--weights", suggestion=WEIGHTS_HINT[weights]
        )
    model = archs.build_model(plan.model.arch, plan.model.num_classes, plan.model.head, device="cpu")
    state = load_state(path, key="--weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RecipeError(f"{path} does not fit the run's model: {str(exc).splitlines()[0]}", file=path) from None
    return LoadedRun(run_dir, plan, env, model.eval(), weights)


def val_transform(plan: Plan) -> Any:
    return build_transforms(plan.data, plan.data.mean, plan.data.std, train=False)


# ---------------------------------------------------------------- data


def eval_dataset(run: LoadedRun, folder: Path | None) -> tuple[Any, str]:
    """The run's own validation split, or another ImageFolder with the run's class names."""
    plan = run.plan
    tf = val_transform(plan)
    if folder is None:
        d = plan.data
        root = Path(run.env.get("data_root") or ".")
        splits = resolve_splits(d.sources(), root)
        if splits.builtin is not None:  # every builtin is scikit-learn's digits
            return DigitsImages(_digits_images(), splits.val, tf), f"{OWN_DATA} (digits)"
        assert splits.val_dir is not None
        return ImageFiles(splits.val_dir, splits.val, tf, key="data.val"), f"{OWN_DATA} ({splits.val_dir})"
    if not folder.is_dir():
        raise RecipeError(
            f"--data {folder} is not a folder", key="--data", suggestion="give an ImageFolder: FOLDER/<class>/<image>"
        )
    known = list(plan.data.class_names)
    found = class_folders(folder, key="--data")
    unknown = [c for c in found if c not in known]
    if unknown:
        raise RecipeError(
            f"--data {folder} has class folder(s) the model does not know: {', '.join(unknown)}",
            key="--data",
            suggestion=f"the run's classes are: {', '.join(known[:30])}" + (" ..." if len(known) > 30 else ""),
        )
    samples, names = list_image_folder(folder, found, key="--data")
    # Labels in the run's class order, whatever subset of classes the folder holds.
    relabel = {i: known.index(name) for i, name in enumerate(names)}
    # Its absolute path: the evaluation's file name holds its hash (eval-data-<hash>.json).
    return ImageFiles(folder, [(p, relabel[i]) for p, i in samples], tf, key="--data"), str(folder.resolve())


# ---------------------------------------------------------------- inference


def predict_proba(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Softmax probabilities; with TTA the mean over the image and its horizontal flip."""
    with torch.no_grad():
        probs = model(x).float().softmax(dim=1)
        if tta:
            probs = (probs + model(torch.flip(x, dims=[3])).float().softmax(dim=1)) / 2
    return probs


def run_inference(run: LoadedRun, dataset: Any, tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities N x C, labels N) over the dataset, in order."""
    batches = [
        list(range(i, min(i + run.plan.data.batch_size, len(dataset))))
        for i in range(0, len(dataset), run.plan.data.batch_size)
    ]
    loader = _loader(dataset, run.plan.data.workers, batch_sampler=batches)
    probs, labels = [], []
    for x, y in loader:
        probs.append(predict_proba(run.model, x, tta))
        labels.append(y)
    if not probs:
        raise RecipeError("no images to evaluate", key="--data")
    return torch.cat(probs), torch.cat(labels)


# ---------------------------------------------------------------- metrics


def confusion(labels: torch.Tensor, predicted: torch.Tensor, k: int) -> torch.Tensor:
    """k x k counts: row = true class, column = predicted class."""
    return torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def metrics(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Loss, top-1/top-5, per-class precision/recall/F1/support, balanced accuracy, macro F1."""
    k = len(class_names)
    n = len(labels)
    loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    top = probs.topk(min(5, k), dim=1).indices
    cm = confusion(labels, top[:, 0], k).to(torch.float64)
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), torch.zeros_like(tp)
    )
    present = support > 0  # classes absent from the data do not count in the macro averages
    out: dict[str, Any] = {
        "images": n,
        "loss": loss,
        "top1": (top[:, 0] == labels).double().mean().item(),
        "balanced_accuracy": recall[present].mean().item(),
        "macro_f1": f1[present].mean().item(),
        "per_class": [
            {
                "class": name,
                "precision": precision[i].item(),
                "recall": recall[i].item(),
                "f1": f1[i].item(),
                "support": int(support[i].item()),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion": cm.to(torch.int64).tolist(),
        "classes": list(class_names),
    }
    if k > 5:  # with 5 classes or fewer the top 5 always hold the label
        out["top5"] = (top == labels[:, None]).any(dim=1).double().mean().item()
    return out


def most_confused(result: dict[str, Any], limit: int = 10) -> list[tuple[str, str, int]]:
    """(true, predicted, count) off the diagonal, most frequent first."""
    names, cm = result["classes"], result["confusion"]
    pairs = [
        (names[i], names[j], cm[i][j]) for i in range(len(names)) for j in range(len(names)) if i != j and cm[i][j]
    ]
    return sorted(pairs, key=lambda p: -p[2])[:limit]


def evaluate_run(run_dir: Path, data: Path | None, weights: str, tta: bool) -> dict[str, Any]:
    run = load_run(run_dir, weights)
    dataset, described = eval_dataset(run, data)
    probs, labels = run_inference(run, dataset, tta)
    result = metrics(probs, labels, run.plan.data.class_names)
    return {
        "run": str(run_dir),
        "weights": weights,
        "weights_file": WEIGHTS[weights],
        "tta": tta,
        "tta_means": "softmax averaged over the image and its horizontal flip" if tta else None,
        "data": described,
        "plan_hash": run.plan.hash,
        **result,
    }


# ---------------------------------------------------------------- output


def format_eval(result: dict[str, Any], worst: int = 20) -> str:
    pct = lambda v: f"{100 * v:6.2f}%"  # noqa: E731
    lines = [f"eval of {result['run']} ({result['weights_file']}) on {result['data']}: {result['images']} images"]
    if result["tta"]:
        lines.append("TTA: softmax averaged over each image and its horizontal flip")
    top5 = f"  top-5 {pct(result['top5'])}" if "top5" in result else ""
    lines.append(
        f"loss {result['loss']:.4f}  top-1 {pct(result['top1'])}{top5}  balanced accuracy "
        f"{pct(result['balanced_accuracy'])}  macro F1 {result['macro_f1']:.4f}"
    )
    lines.append("")
    rows = sorted(result["per_class"], key=lambda r: (r["support"] == 0, r["f1"], r["class"]))
    width = max([5] + [len(r["class"]) for r in rows])
    lines.append(f"{'class':<{width}}  precision  recall      F1  support   (worst F1 first)")
    for r in rows[:worst]:
        lines.append(
            f"{r['class']:<{width}}  {pct(r['precision'])}  {pct(r['recall'])}  {r['f1']:.4f}  {r['support']:>7}"
        )
    if len(rows) > worst:
        name = eval_names(eval_variant(result["weights"], result["tta"], result["data"]))[0]
        lines.append(f"... {len(rows) - worst} more classes in {name}")
    pairs = most_confused(result)
    lines.append("")
    if pairs:
        lines.append("most confused (true -> predicted: images)")
        lines += [f"  {t} -> {p}: {c}" for t, p, c in pairs]
    else:
        lines.append("no confusions")
    return "\n".join(lines)


def plot_confusion(result: dict[str, Any], path: Path) -> Path:
    """confusion.png: counts, rows = true class, normalised colour per row (recall)."""
    plt = pyplot()
    cm = torch.tensor(result["confusion"], dtype=torch.float64)
    names = result["classes"]
    k = len(names)
    rows = cm / cm.sum(1, keepdim=True).clamp_min(1)
    size = min(4 + 0.35 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({result['images']} images, top-1 {100 * result['top1']:.2f}%)")
    fig.tight_layout()
    outputs.write_bytes(path, png(fig, outputs.CONFUSION, dpi=100))
    return path


def eval_command(run_dir: Path, data: Path | None, weights: str, tta: bool, as_json: bool) -> int:
    """One result per variant (runfiles.eval_variant): `eval --tta` after `eval` keeps both."""
    result = evaluate_run(run_dir, data, weights, tta)
    name, figure = eval_names(eval_variant(weights, tta, result["data"]))
    outputs.write_json(run_dir / name, checked(EvalFile, result))
    note = f"wrote {run_dir / name}"
    try:
        note += f" and {plot_confusion(result, run_dir / figure)}"
    except RecipeError:
        note += f"; {figure} needs matplotlib: {PLOT_HINT}"
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        print(format_eval(result))
        print()
    print(note, file=sys.stderr if as_json else sys.stdout)
    return 0


# ---------------------------------------------------------------- predict


def image_paths(inputs: Sequence[str]) -> list[Path]:
    """Files as given; folders walked (sorted) for image files. A missing path is an error."""
    out: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirs, files in os.walk(path):
                dirs.sort()
                out += [Path(dirpath) / f for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
        elif path.exists():
            out.append(path)
        else:
            raise RecipeError(f"no such file or folder: {path}", suggestion="give image files or folders of images")
    return out


def read_image(path: Path) -> torch.Tensor:
    """The image as training and eval read it (orientation, 16-bit and float ranges, CMYK):
    predict must see what the model was trained on, not PIL's convert("RGB")."""
    return read_rgb(path)


def predict_command(run_dir: Path, inputs: Sequence[str], topk: int, as_json: bool, tta: bool = False) -> int:
    """The top `topk` classes of each image; a `topk` above the class count lists every class."""
    if topk < 1:
        raise RecipeError(
            f"must be at least 1 (the classes shown per image), got {topk}",
            key="--topk",
            suggestion="e.g. --topk 3 (a number above the class count lists every class)",
        )
    run = load_run(run_dir)
    names = run.plan.data.class_names
    tf = val_transform(run.plan)
    k = min(topk, len(names))
    paths = image_paths(inputs)
    if not paths:
        raise RecipeError(
            "no images found in " + ", ".join(inputs), suggestion=f"image files end with {', '.join(IMG_EXTENSIONS)}"
        )
    skipped, results = [], []
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        probs = predict_proba(run.model, torch.stack([x for _, x in batch]), tta)
        values, indices = probs.topk(k, dim=1)
        for (path, _), v, i in zip(batch, values.tolist(), indices.tolist(), strict=False):
            results.append(
                {"path": str(path), "top": [{"class": names[c], "prob": p} for c, p in zip(i, v, strict=False)]}
            )
            if not as_json:
                print(f"{path}  " + "  ".join(f"{names[c]} {p:.4f}" for c, p in zip(i, v, strict=False)), flush=True)
        batch.clear()

    for path in paths:
        try:
            batch.append((path, tf(read_image(path))))
        except Exception as exc:  # noqa: BLE001 - any decoding failure: name the file, go on
            skipped.append({"path": str(path), "error": f"{type(exc).__name__}: {exc}"})
            print(f"skipped {path}: cannot read it as an image ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        if len(batch) >= run.plan.data.batch_size:
            flush()
    flush()
    if as_json:
        print(json.dumps({"run": str(run_dir), "predictions": results, "skipped": skipped}, indent=1))
    if skipped:
        print(
            f"error: {len(skipped)} of {len(paths)} image(s) could not be read (named above); the others were predicted",
            file=sys.stderr,
        )
        return 2
    return 0
