"""What summary.json, `ftcompile runs`, curves.png and the end-of-run table read of a trial
phase: the evaluations of the alternative chosen there, never of the others (alternative 0
included: its `trial` is 0, which is not "no trial")."""

from __future__ import annotations

import json
from pathlib import Path

from ftcompile.runtime.status import as_continued, best_eval, chosen_alternatives, continued_evals

EVALS = [
    {"type": "eval", "step": 2, "phase": "warm", "val_loss": 0.9, "top1": 0.5},
    {"type": "eval", "step": 4, "phase": "tune", "val_loss": 0.2, "top1": 0.9, "trial": 0},
    {"type": "eval", "step": 4, "phase": "tune", "val_loss": 0.5, "top1": 0.7, "trial": 1},
    {"type": "eval", "step": 4, "phase": "tune", "val_loss": 0.6, "top1": 0.6, "trial": 2},
    {"type": "eval", "step": 6, "phase": "last", "val_loss": 0.4, "top1": 0.8},
]


def write_run(folder: Path, chosen: int | None) -> Path:
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVALS))
    rows = ["phase,k,label,val_loss,val_top1,val_top5,chosen"]
    if chosen is not None:
        rows += [f"tune,{k},lr={k},0,0,,{'true' if k == chosen else 'false'}" for k in range(3)]
    (folder / "trials.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_chosen_alternative_stands_for_its_phase(tmp_path: Path) -> None:
    # alternative 1 was chosen (e.g. on val_loss of another metric); 0 and 2 are left out
    run = write_run(tmp_path / "run", chosen=1)
    assert chosen_alternatives(run) == {"tune": 1}
    assert [(r["phase"], r.get("trial")) for r in continued_evals(run)] == [("warm", None), ("tune", 1), ("last", None)]
    # the best evaluation of the run is not alternative 0's 0.9, which did not continue
    assert best_eval(continued_evals(run))["top1"] == 0.8


def test_alternative_0_chosen_and_a_phase_still_running(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", chosen=0)
    assert [r["top1"] for r in continued_evals(run)] == [0.5, 0.9, 0.8]
    # undecided (no trials.csv rows yet): no alternative stands for the phase
    assert [r["phase"] for r in as_continued(EVALS, {})] == ["warm", "last"]
