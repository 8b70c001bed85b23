"""`ftcompile eval` and `ftcompile predict` on a real tiny run, and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ftcompile.runtime.data import _digits_images
from ftcompile.runtime.evaluate import load_run, metrics, val_transform
from PIL import Image
from runtime_helpers import cli

pytestmark = pytest.mark.slow


def digits_folder(root: Path, per_class: dict[str, list[int]]) -> dict[Path, int]:
    """root/<class>/<i>.png from scikit-learn digits indices; returns file -> class index."""
    images = _digits_images()
    files = {}
    for cls, indices in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in indices:
            path = root / cls / f"{i}.png"
            Image.fromarray(images[i, 0].numpy()).convert("RGB").save(path)
            files[path] = int(cls)
    return files


def test_metrics_match_torchmetrics() -> None:
    """Our counting equals torchmetrics on random predictions, classes 3 and 4 rare / absent."""
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    g = torch.Generator().manual_seed(0)
    k = 6
    labels = torch.randint(0, 4, (200,), generator=g)  # classes 4, 5 never true
    probs = torch.rand(200, k, generator=g).softmax(1)
    ours = metrics(probs, labels, [str(i) for i in range(k)])
    pred = probs.argmax(1)
    assert ours["confusion"] == multiclass_confusion_matrix(pred, labels, k).tolist()
    for name, fn in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score)):
        theirs = fn(pred, labels, k, average="none")
        assert [c[name] for c in ours["per_class"]] == pytest.approx(theirs.tolist(), abs=1e-6), name
    present = torch.bincount(labels, minlength=k) > 0
    macro_recall = multiclass_recall(pred, labels, k, average="none")[present].mean().item()
    assert ours["balanced_accuracy"] == pytest.approx(macro_recall, abs=1e-6)
    assert ours["top1"] == pytest.approx((pred == labels).float().mean().item())


@pytest.mark.parametrize("k", [2, 5, 6])
def test_top5_only_above_5_classes(k: int) -> None:
    """With 5 classes or fewer the label is always among the top 5: no top-5 is reported."""
    labels = torch.arange(12) % k
    probs = torch.eye(k)[(labels + 1) % k]  # every prediction wrong: top-1 0
    out = metrics(probs, labels, [str(i) for i in range(k)])
    assert out["top1"] == 0.0
    assert ("top5" in out) == (k > 5)


def test_eval_table_json_png(used_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = used_run
    r = cli(capsys, "eval", run_dir)
    assert r.rc == 0, r.err
    assert "balanced accuracy" in r.out and "worst F1 first" in r.out
    assert "most confused" in r.out or "no confusions" in r.out
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["images"] == load_run(run_dir).plan.data.val_size and len(saved["per_class"]) == 10 and "top5" in saved
    assert sum(map(sum, saved["confusion"])) == saved["images"]
    # The run's own last evaluation saw the same images with the same model: same top-1.
    last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x][-1]
    assert saved["top1"] == pytest.approx(last["top1"]) and saved["loss"] == pytest.approx(last["val_loss"], rel=1e-4)
    with Image.open(run_dir / "confusion.png") as im:
        assert im.size[0] > 100
    r = cli(capsys, "eval", run_dir, "--tta", "--json")
    tta = json.loads(r.out)
    assert r.rc == 0 and tta["tta"] and "horizontal flip" in tta["tta_means"]
    assert tta["confusion"] != saved["confusion"] or tta["loss"] != saved["loss"]
    # One result per variant: eval --tta after eval kept eval.json (the report's) as it was.
    assert json.loads((run_dir / "eval.json").read_text()) == saved
    assert json.loads((run_dir / "eval-tta.json").read_text()) == tta and (run_dir / "confusion-tta.png").is_file()


def test_each_variant_has_its_file_and_a_misnamed_one_is_refused(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval, eval --tta, eval --data D: three files; the report shows eval.json and names the
    others; an eval.json holding a TTA result (what the old eval left) is an error naming tta."""
    import hashlib
    import shutil

    from ftcompile.runtime.runfiles import eval_variants

    run_dir = tmp_path / "run"
    shutil.copytree(used_run[0], run_dir)
    for f in run_dir.glob("eval*.json"):
        f.unlink()
    digits_folder(tmp_path / "d", {"3": [3, 13], "7": [7, 17]})
    for extra in ((), ("--tta",), ("--data", tmp_path / "d")):
        assert cli(capsys, "eval", run_dir, *extra).rc == 0
    folder_hash = hashlib.sha256(str((tmp_path / "d").resolve()).encode()).hexdigest()[:8]
    assert eval_variants(run_dir) == ["", f"-data-{folder_hash}", "-tta"]
    assert json.loads((run_dir / f"eval-data-{folder_hash}.json").read_text())["images"] == 4
    assert (run_dir / f"confusion-data-{folder_hash}.png").is_file()
    plain = json.loads((run_dir / "eval.json").read_text())
    r = cli(capsys, "report", run_dir, "-o", tmp_path / "r.html")
    assert r.rc == 0, r.err
    page = (tmp_path / "r.html").read_text()
    assert (
        "Shown: eval.json, the evaluation of model.pt (final weights), no TTA, on the run&#x27;s validation split"
        in page
    )
    assert f"not shown: eval-data-{folder_hash}.json, eval-tta.json" in page
    assert f"top-1 {100 * plain['top1']:.2f}%" in page
    shutil.copy(run_dir / "eval-tta.json", run_dir / "eval.json")
    r = cli(capsys, "report", run_dir, "-o", tmp_path / "r.html", "--force")
    assert r.rc == 2 and "eval.json: tta: it holds the evaluation of model.pt (final weights), with TTA" in r.err
    assert "whose file is eval-tta.json" in r.err


def test_eval_other_folder_and_class_mismatch(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = used_run
    # Digits 3 and 7 only: labels follow the run's class order, not the folder's.
    digits_folder(tmp_path / "d", {"3": [3, 13, 23], "7": [7, 17, 27]})
    r = cli(capsys, "eval", run_dir, "--data", tmp_path / "d", "--json")
    assert r.rc == 0, r.err
    result = json.loads(r.out)
    support = {c["class"]: c["support"] for c in result["per_class"]}
    assert support["3"] == 3 and support["7"] == 3 and sum(support.values()) == 6
    before = (run_dir / "eval.json").read_bytes()
    (tmp_path / "d" / "cat").mkdir()
    r = cli(capsys, "eval", run_dir, "--data", tmp_path / "d")
    assert r.rc == 2 and "cat" in r.err and "does not know" in r.err
    assert "Traceback" not in r.err and (run_dir / "eval.json").read_bytes() == before


def test_eval_bad_run_dirs(used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "eval", tmp_path)
    assert r.rc == 2 and "is not a run directory" in r.err
    # A run that has not finished: a copy without model.pt.
    run_dir, _ = used_run
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("plan.json", "env.json"):
        (unfinished / name).write_bytes((run_dir / name).read_bytes())
    r = cli(capsys, "eval", unfinished)
    assert r.rc == 2 and "no model.pt" in r.err and "resume" in r.err
    r = cli(capsys, "eval", run_dir, "--weights", "best")
    assert r.rc == 2 and "best.pt" in r.err


def test_predict_uses_val_transforms_and_skips_bad_images(
    used_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = used_run
    files = digits_folder(tmp_path / "imgs", {"4": [4, 14], "9": [9]})
    (tmp_path / "imgs" / "9" / "broken.png").write_bytes(b"not a png")
    r = cli(capsys, "predict", run_dir, tmp_path / "imgs", "--topk", "3", "--json")
    assert r.rc == 2 and "broken.png" in r.err and "could not be read" in r.err
    out = json.loads(r.out)
    assert [s["path"] for s in out["skipped"]] == [str(tmp_path / "imgs" / "9" / "broken.png")]
    assert len(out["predictions"]) == 3 and all(len(p["top"]) == 3 for p in out["predictions"])
    # Same probabilities as the model on the run's own val pipeline of the same digits.
    run = load_run(run_dir)
    tf = val_transform(run.plan)
    images = _digits_images()
    for pred in out["predictions"]:
        index = int(Path(pred["path"]).stem)
        x = tf(images[index].repeat(3, 1, 1))[None]
        probs = run.model(x).softmax(1)[0]
        top = probs.topk(3)
        assert [p["class"] for p in pred["top"]] == [run.plan.data.class_names[i] for i in top.indices.tolist()]
        assert np.allclose([p["prob"] for p in pred["top"]], top.values.tolist(), atol=1e-6)
    r = cli(capsys, "predict", run_dir, *sorted(files)[:1])
    assert r.rc == 0 and str(sorted(files)[0]) in r.out
    r = cli(capsys, "predict", run_dir, tmp_path / "missing.png")
    assert r.rc == 2 and "missing.png" in r.err
