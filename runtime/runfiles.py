"""The files of a run directory, read back: one pydantic model per file kind, one reader each.

A run directory is ftcompile's own output, but anyone can edit, cut short or replace a file
in it. Every command that reads a run (runs, report, eval, predict, export, resume, curves,
the end-of-run table) reads it through here, so a file that is not what ftcompile writes is
one message naming the file, its line where it has lines, and the field (exit 2), never a
KeyError inside a command; `ftcompile runs` lists such a run as unreadable, with that message.
plan.json has its own reader (`Plan.load`, which checks the plan's hash), checkpoints theirs.

| file           | model                                   | reader        | also checked against plan.json   |
|----------------|-----------------------------------------|---------------|----------------------------------|
| summary.json   | Summary                                 | read_summary  |                                  |
| env.json       | Env                                     | read_env      |                                  |
| eval*.json     | EvalFile                                | read_eval     | classes, plan hash, its name     |
| metrics.jsonl  | StepRecord, EvalRecord, ... (by `type`) | read_records  |                                  |
| trials.csv     | (columns of logs.trials_header)         | read_trials   | trial phases, their alternatives |
| lr.csv         | (step, phase, trial, param groups)      | read_lr       | param groups, phases             |
| <export>.json  | Sidecar                                 | read_sidecar  |                                  |

Readers return what the file holds (plain JSON values; CSV text for trials.csv) once it has
passed its model, so a command reads what the run wrote. The writers of the JSON files check
what they write against the same models (`checked`): a file's shape has one home, here. metrics.jsonl and the CSV logs are
appended to while a run trains: a last line without its newline is a line being written (or
one a kill cut short, which resume cuts too) and is left out, never an error.

No torch here: `ftcompile runs` reads every run below a folder with this module and the
plan alone (STYLE 19).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ftcompile.runtime.lock import LOCK_FILE
from ftcompile.runtime.logs import trials_header
from ftcompile.runtime.trials import rung_count
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ftcompile import outputs
from ftcompile.errors import RecipeError, RecipeErrors, loc_to_key, os_error
from ftcompile.metrics import METRICS
from ftcompile.plan import Plan, TrialsPlan

SUMMARY = "summary.json"
STATUSES = ("running", "finished", "failed", "interrupted")  # what summary.json says

# What to do about a damaged file, per file: the hint of its error.
REMEDY = {
    "summary.json": "an unfinished run writes it again when resumed (`ftcompile resume`); a finished run's can be "
    "restored from a backup (nothing else depends on it)",
    "env.json": "restore it from a backup; `ftcompile rerun` needs only plan.json to start the run again",
    "eval.json": "delete it, or write it again with `ftcompile eval RUN_DIR`",
    "metrics.jsonl": "restore it from a backup; the run's own records are never edited",
    "trials.csv": "restore it from a backup; `ftcompile rerun RUN_DIR` makes the same choices again",
    "lr.csv": "restore it from a backup, or compare with `ftcompile plan --trace`",
}


class _File(BaseModel):
    """A file ftcompile writes: the field types it writes, no field it does not (STYLE 6)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# The default of a field ftcompile leaves out or writes as a number, never as null (top-5 at 5
# classes or fewer): pydantic does not validate a default, and rejects null for a float.
OMITTED: Any = None


# ---------------------------------------------------------------- summary.json (status.RunStatus)


class Metrics(_File):
    """An evaluation as summary.json records it."""

    step: int
    val_loss: float = OMITTED
    top1: float = OMITTED
    top5: float = OMITTED


class BestMetrics(Metrics):
    phase: str


class PhaseRow(_File):
    begin: int
    end: int
    done: bool
    metrics: Metrics | None


class Summary(_File):
    status: Literal[STATUSES]  # type: ignore[valid-type]
    error: str | None
    pid: int
    host: str
    recipe: str | None
    plan_hash: str
    started: str
    updated: str
    attempts: int
    wall_s: float
    step: int
    total_steps: int
    phases_done: list[str]
    phases: dict[str, PhaseRow]
    final: Metrics | None
    last: Metrics | None
    best: BestMetrics | None


# ---------------------------------------------------------------- env.json (rundir.env_record)


class GitInfo(_File):
    commit: str | None = None
    dirty: bool | None = None
    repo: str | None = None
    files: list[str] = []


class RecipeFile(_File):
    path: str
    sha256: str


class DataRecord(_File):
    fingerprint: str
    train: dict[str, int]
    val: dict[str, int]
    builtin: str | None


class Machine(_File):
    cpu: str | None = None
    cpu_capability: str | None = None
    threads: int | None = None
    cuda: str | None = None
    cudnn: int | None = None
    gpu: str | None = None


class Backend(_File):
    """`--backend ray` and its options (runtime/ray_backend.py); `resume` goes on with it."""

    name: Literal["ray"]
    address: str | None = None
    gpus_per_trial: int = 0
    max_parallel: int | None = None


class Env(_File):
    """Only `data_root` is needed (resume, eval and rerun find the data there); the rest is
    provenance, compared when a run is resumed or rerun."""

    data_root: str
    versions: dict[str, str] = {}
    device: str | None = None
    cuda: str | None = None
    seed: int | None = None
    processes: int = 1
    plan_hash: str | None = None
    recipe: str | None = None
    git: GitInfo | None = None
    recipe_files: list[RecipeFile] = []
    overrides: list[str] = []
    data: DataRecord | None = None
    machine: Machine | None = None
    reproducible: dict[str, Any] | None = None  # run.reproducible's record (ftcompile/portable.py)
    rerun_of: str | None = None
    backend: Backend | None = None  # where trial alternatives run; left out: one after another (sequential)


# ---------------------------------------------------------------- eval.json (evaluate.evaluate_run)

# One evaluation per variant, so `eval --tta` does not replace the plain one the report shows:
# eval.json / confusion.png are the final weights without TTA on the run's validation split;
# every other variant adds to the name, in this order: -best or -ema (--weights), -tta,
# -data-<8 hex digits of the sha256 of the --data folder's absolute path>.
OWN_DATA = "the run's validation split"  # how an evaluation on it starts its `data`
EVAL_NAME = re.compile(r"^eval(?P<variant>(-best|-ema)?(-tta)?(-data-[0-9a-f]{8})?)\.json$")


def eval_variant(weights: str, tta: bool, data: str) -> str:
    """'' or e.g. '-best-tta': the name's part for an evaluation; `data` as eval.json's field
    (the folder's absolute path, or a text starting with OWN_DATA)."""
    own = data.startswith(OWN_DATA)
    return (
        ("" if weights == "final" else f"-{weights}")
        + ("-tta" if tta else "")
        + ("" if own else f"-data-{hashlib.sha256(data.encode()).hexdigest()[:8]}")
    )


def eval_names(variant: str) -> tuple[str, str]:
    """The result's and its figure's file names: eval-tta.json, confusion-tta.png."""
    return f"eval{variant}.json", f"confusion{variant}.png"


def eval_variants(run_dir: Path) -> list[str]:
    """The variants of the evaluations in a run directory, the plain one ('') first."""
    try:
        found = [m["variant"] for p in run_dir.iterdir() if (m := EVAL_NAME.match(p.name)) and p.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda v: (v != "", v))


def describe_eval(result: dict[str, Any]) -> str:
    """What an evaluation was of, in words: `best.pt, with TTA, on the run's validation split`."""
    return (
        f"{result['weights_file']} ({result['weights']} weights), {'with' if result['tta'] else 'no'} TTA, "
        f"on {result['data']}"
    )


class ClassResult(_File):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: str = Field(alias="class")
    precision: float
    recall: float
    f1: float
    support: int


class EvalFile(_File):
    run: str
    weights: Literal["final", "best", "ema"]
    weights_file: str
    tta: bool
    tta_means: str | None
    data: str
    plan_hash: str
    images: int
    loss: float
    top1: float
    top5: float = OMITTED  # only above 5 classes
    balanced_accuracy: float
    macro_f1: float
    per_class: list[ClassResult]
    confusion: list[list[int]]
    classes: list[str]


# ---------------------------------------------------------------- metrics.jsonl (loop.Session)


class _Record(_File):
    step: int


class StepRecord(_Record):
    type: Literal["step"]
    phase: str
    loss: float
    lr: dict[str, float]
    seconds: float
    images_per_s: float
    trial: int = OMITTED
    grad_norm: float = OMITTED


# An evaluation's metrics are the metrics a recipe can name (ftcompile.metrics, one table):
# val_loss and top1 always, top-5 above 5 classes, the EMA weights' with [run] ema.
EvalRecord = create_model(  # type: ignore[call-overload]  # pydantic types no **fields mapping
    "EvalRecord",
    __base__=_Record,
    __doc__="An evaluation: its step, phase, alternative (in a trial phase) and metrics.",
    type=(Literal["eval"], ...),
    epoch=(float, ...),
    phase=(str, ...),
    trial=(int, OMITTED),
    **{m.key: ((float, ...) if m.key in ("val_loss", "top1") else (float, OMITTED)) for m in METRICS.values()},
)


class SyncRecord(_Record):
    type: Literal["sync"]
    ranks: int
    digests: list[str]


class StopRecord(_Record):
    type: Literal["stop"]
    phase: str
    metric: str
    best: float
    best_step: int
    evaluations_without_improvement: int
    next_step: int


class RestoreRecord(_Record):
    type: Literal["restore"]
    phase: str
    metric: str
    value: float
    from_step: int


class MemoryRecord(_Record):
    """A phase's measured peak memory (runtime/cost.py says how each measure is taken)."""

    type: Literal["memory"]
    phase: str
    trial: int | None = None
    measure: Literal["tensors", "cuda.max_memory_allocated"] | None = None
    peak_bytes: int | None = None
    tensor_step: int | None = None  # measure "tensors": the step counted
    rss_peak_bytes: int | None = None
    rss_start_bytes: int | None = None


RECORDS: dict[str, type[_Record]] = {
    "step": StepRecord,
    "eval": EvalRecord,
    "sync": SyncRecord,
    "memory": MemoryRecord,
    "stop": StopRecord,
    "restore": RestoreRecord,
}


# ---------------------------------------------------------------- export sidecar (export.sidecar)


class Preprocessing(_File):
    resize: int
    resize_means: str
    center_crop: int
    to_float: str
    mean: list[float]
    std: list[float]
    layout: str


class Sidecar(_File):
    format: str
    classes: list[str]
    num_classes: int
    output: str
    preprocessing: Preprocessing
    arch: str
    head: dict[str, Any] | None
    plan_hash: str
    recipe: str | None
    run: str


# ---------------------------------------------------------------- errors


def _damaged(path: Path, exc: ValidationError, line: int | None = None, shown: int = 3) -> RecipeError:
    """pydantic's errors as ours: the file, the line, the field's path (`per_class[0].f1`);
    the first `shown` of them, the file's hint once, after the last."""
    found = exc.errors(include_url=False)
    errors = [_error(path, _said(err), key=loc_to_key(tuple(err["loc"])) or None, line=line) for err in found[:shown]]
    if len(found) > shown:
        errors[-1].message += f" (and {len(found) - shown} more fields)"
    for err in errors[:-1]:
        err.suggestion = None
    return errors[0] if len(errors) == 1 else RecipeErrors(errors)


def _said(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return "a field ftcompile does not write"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"not a JSON object (got {type(err.get('input')).__name__}: {str(err.get('input'))[:40]})"
    text = err["msg"].removeprefix("Value error, ")
    if not isinstance(err.get("input"), (dict, list)):
        text += f" (got {err['input']!r})"
    return text


def _error(path: Path, what: str, key: str | None = None, line: int | None = None) -> RecipeError:
    remedy = REMEDY["eval.json"] if EVAL_NAME.match(path.name) else REMEDY.get(path.name)
    return RecipeError(
        f"{what}; {path.name} is damaged or was edited by hand", file=path, key=key, line=line, suggestion=remedy
    )


def _validate(model: type[BaseModel], data: Any, path: Path, line: int | None = None) -> Any:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise _damaged(path, exc, line) from None
    return data


# ---------------------------------------------------------------- JSON files


def _read_text(path: Path) -> str | None:
    """The file's text; None when there is no such file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise _error(path, "not UTF-8 text") from None
    except OSError as err:
        raise os_error(err, path, doing="read") from None


def _read_json(path: Path, model: type[BaseModel]) -> dict[str, Any] | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(path, f"not valid JSON ({exc.msg}, column {exc.colno})", line=exc.lineno) from None
    return _validate(model, data, path)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json, or None for a run that has none (a run from before summary.json existed)."""
    return _read_json(run_dir / SUMMARY, Summary)


RUNS = Path("runs")  # where runs go (runs/<recipe name>/<n>-<plan hash>), from the current folder


def open_run(run_dir: Path) -> tuple[Plan, dict[str, Any]]:
    if not outputs.is_run_dir(run_dir):
        raise RecipeError(
            f"{run_dir} is not a run directory (no plan.json / env.json)",
            file=run_dir,
            suggestion="pass a folder made by ftcompile run, e.g. runs/<name>/1-ab12cd34",
        )
    return Plan.load(run_dir / "plan.json"), read_env(run_dir)  # each checked


def finished_upstream(plan: Plan) -> Path | None:
    """model.pt of a finished run of the plan's upstream plan (weights = "other.toml"), or None."""
    weights = plan.model.weights
    if weights.kind != "recipe" or weights.plan is None or weights.value is None:
        return None
    upstream = Plan.from_dict(weights.plan, source=weights.value)
    for run in sorted(RUNS.glob(f"{upstream.recipe.name}/*-{upstream.hash[:8]}")):
        if (run / "model.pt").is_file():
            return run / "model.pt"
    return None


def read_env(run_dir: Path) -> dict[str, Any]:
    env = _read_json(run_dir / "env.json", Env)
    if env is None:
        raise RecipeError(
            f"{run_dir} is not a run directory (no env.json)",
            file=run_dir,
            suggestion="pass a folder made by ftcompile run, e.g. runs/<name>/1-ab12cd34",
        )
    return env


def read_eval(run_dir: Path, plan: Plan, variant: str = "") -> dict[str, Any] | None:
    """eval.json, or another variant's (eval-tta.json, ...): None when `ftcompile eval` has
    not written it; for this run's plan, and what its name says it is."""
    path = run_dir / eval_names(variant)[0]
    result = _read_json(path, EvalFile)
    if result is None:
        return None
    held = eval_variant(result["weights"], result["tta"], result["data"])
    if held != variant:
        parts = [re.fullmatch(r"(-best|-ema)?(-tta)?(-data-[0-9a-f]{8})?", v).groups() for v in (held, variant)]  # type: ignore[union-attr]
        key = next(k for k, a, b in zip(("weights", "tta", "data"), *parts, strict=False) if a != b)
        raise _error(
            path, f"it holds the evaluation of {describe_eval(result)}, whose file is {eval_names(held)[0]}", key=key
        )
    k = len(plan.data.class_names)
    if result["plan_hash"] != plan.hash:
        raise _error(
            path, f"the evaluation of plan {result['plan_hash'][:12]}, the run's is {plan.hash[:12]}", key="plan_hash"
        )
    if result["classes"] != list(plan.data.class_names):
        raise _error(path, "not the run's class names", key="classes")
    if [c["class"] for c in result["per_class"]] != result["classes"]:
        raise _error(path, "not one entry per class, in the order of `classes`", key="per_class")
    if len(result["confusion"]) != k or any(len(row) != k for row in result["confusion"]):
        raise _error(path, f"not a {k} x {k} matrix", key="confusion")
    return result


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """An export's `<file>.json` (None when there is none)."""
    return _read_json(path, Sidecar)


def checked(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """What ftcompile is about to write, checked against the model its reader reads it with, so
    a writer and its reader cannot drift apart: a field added to a file without its model fails
    the writer's own tests (a ValidationError: a bug, not a user error), not every later read."""
    model.model_validate(data)
    return data


# ---------------------------------------------------------------- metrics.jsonl


def _lines(path: Path, size: int | None = None) -> list[tuple[int, str]]:
    """(line number, text) of the complete lines of a log, or of its first `size` bytes."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(size if size is not None else -1)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise os_error(err, path, doing="read") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, "not UTF-8 text", line=data[: exc.start].count(b"\n") + 1) from None
    lines = text.split("\n")[:-1]  # the part after the last newline is being written
    return [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]


def read_records(run_dir: Path, kind: str | None = None, size: int | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl's records (of one `type`), or those of its first `size` bytes; every line checked."""
    path = run_dir / "metrics.jsonl"
    out = []
    for n, line in _lines(path, size):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _error(path, f"not a JSON record ({exc.msg}, column {exc.colno})", line=n) from None
        if not isinstance(rec, dict):
            raise _error(path, "not a JSON object", line=n)
        model = RECORDS.get(rec.get("type"))  # type: ignore[arg-type]
        if model is None:
            raise _error(
                path,
                f"unknown record type {rec.get('type')!r}; ftcompile writes {', '.join(RECORDS)}",
                key="type",
                line=n,
            )
        _validate(model, rec, path, line=n)
        if kind is None or rec["type"] == kind:
            out.append(rec)
    return out


def read_evals(run_dir: Path, size: int | None = None) -> list[dict[str, Any]]:
    """The eval records of metrics.jsonl (of its first `size` bytes)."""
    return read_records(run_dir, "eval", size)


# ---------------------------------------------------------------- trials.csv


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a CSV log's complete lines; its header first."""
    return [(n, next(csv.reader(io.StringIO(line)))) for n, line in _lines(path)]


def _number(path: Path, n: int, column: str, text: str, low: float | None = None, high: float | None = None) -> None:
    """A metric column: empty (not reported), nan (diverged), or a number in its range."""
    if text == "":
        return
    try:
        value = float(text)
    except ValueError:
        raise _error(path, f"{text!r} is not a number", key=column, line=n) from None
    if math.isfinite(value) and ((low is not None and value < low) or (high is not None and value > high)):
        raise _error(path, f"{text} is outside [{low:g}, {'inf' if high is None else f'{high:g}'}]", key=column, line=n)


def read_trials(run_dir: Path, plan: Plan) -> list[dict[str, str]]:
    """trials.csv's rows (text, as written), each checked against the plan: a trial phase of
    the plan, one of its alternatives (k and label), numbers, at most one row per alternative
    and one chosen per phase. A run without trial phases has no rows."""
    path = run_dir / "trials.csv"
    lines = _csv_rows(path)
    if not lines:
        return []
    (_, header), *body = lines
    # The EMA's metrics too with [run] ema; with prune, the step reached and the rung values.
    expected = trials_header(ema=plan.run.ema is not None, rungs=rung_count(plan))
    if header != expected:
        raise _error(path, f"the header is {','.join(header)}, ftcompile writes {','.join(expected)}", line=1)
    specs = {ph.name: ph.trials for ph in plan.phases if ph.trials}
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, int]] = set()
    chosen: dict[str, int] = {}
    for n, fields in body:
        if len(fields) != len(header):
            raise _error(path, f"{len(fields)} fields, the header has {len(header)}", line=n)
        row = dict(zip(header, fields, strict=False))
        spec = specs.get(row["phase"])
        if spec is None:
            listed = ", ".join(specs) or "none"
            raise _error(
                path,
                f"{row['phase']!r} is not a trial phase of plan.json (its trial phases: {listed})",
                key="phase",
                line=n,
            )
        alternatives = spec.alternatives
        if not row["k"].isdigit() or int(row["k"]) >= len(alternatives):
            raise _error(
                path,
                f"alternative {row['k']!r} is not in plan.json: phase {row['phase']} has k = 0.."
                f"{len(alternatives) - 1}",
                key="k",
                line=n,
            )
        k = int(row["k"])
        if (row["phase"], k) in seen:
            raise _error(path, f"a second row for alternative {k} of phase {row['phase']}", key="k", line=n)
        seen.add((row["phase"], k))
        if row["label"] != alternatives[k].label:
            raise _error(
                path,
                f"{row['label']!r} is not alternative {k}'s label in plan.json ({alternatives[k].label!r})",
                key="label",
                line=n,
            )
        for m in METRICS.values():  # losses are >= 0, accuracies (maximised) in [0, 1]
            if m.name in row:
                _number(path, n, m.name, row[m.name], low=0.0, high=1.0 if m.maximise else None)
        _rung_fields(path, n, row, spec)
        if row["chosen"] not in ("true", "false"):
            raise _error(path, f"{row['chosen']!r} is neither true nor false", key="chosen", line=n)
        if row["chosen"] == "true":
            if row["phase"] in chosen:
                raise _error(
                    path,
                    f"a second chosen alternative of phase {row['phase']} (k {chosen[row['phase']]} and {k})",
                    key="chosen",
                    line=n,
                )
            chosen[row["phase"]] = k
        rows.append(row)
    return rows


def _rung_fields(path: Path, n: int, row: dict[str, str], spec: TrialsPlan) -> None:
    """With prune: `reached` is the phase's end or one of its rung points; rung<i> a metric
    value (empty past the rung the alternative reached, or the phase's rungs)."""
    if "reached" not in row:
        return
    if row["reached"] and not row["reached"].isdigit():
        raise _error(path, f"{row['reached']!r} is not a step", key="reached", line=n)
    maximise = METRICS[spec.select].maximise
    for column in (c for c in row if c.startswith("rung")):
        _number(path, n, column, row[column], low=0.0, high=1.0 if maximise else None)


def chosen_alternatives(run_dir: Path, plan: Plan) -> dict[str, int]:
    """phase -> the alternative chosen there (trials.csv), for the trial phases decided so far."""
    return {row["phase"]: int(row["k"]) for row in read_trials(run_dir, plan) if row["chosen"] == "true"}


def as_continued(evals: list[dict[str, Any]], chosen: dict[str, int]) -> list[dict[str, Any]]:
    """The evaluations of the run as it went on: those outside trial phases, and in each
    decided trial phase its chosen alternative's. (The other alternatives, and those of a
    trial phase still running, are left out; `trial` 0 is an alternative like the others.)"""
    return [r for r in evals if r.get("trial") is None or chosen.get(r["phase"]) == r["trial"]]


def continued_evals(run_dir: Path, plan: Plan, size: int | None = None) -> list[dict[str, Any]]:
    """read_evals(), as the run went on (see as_continued)."""
    return as_continued(read_evals(run_dir, size), chosen_alternatives(run_dir, plan))


# ---------------------------------------------------------------- lr.csv


def read_lr(run_dir: Path, plan: Plan) -> list[dict[str, Any]]:
    """lr.csv's rows as numbers: {"step", "phase", "trial" (None outside trials), <param group>: lr}."""
    path = run_dir / "lr.csv"
    lines = _csv_rows(path)
    if not lines:
        return []
    (_, header), *body = lines
    expected = ["step", "phase", "trial", *plan.param_group_names]
    if header != expected:
        raise _error(
            path, f"the header is {','.join(header)}, the plan's param groups give {','.join(expected)}", line=1
        )
    phases = {ph.name for ph in plan.phases}
    out = []
    for n, fields in body:
        if len(fields) != len(header):
            raise _error(path, f"{len(fields)} fields, the header has {len(header)}", line=n)
        step, phase, trial, *lrs = fields
        if not step.isdigit() or int(step) >= plan.total_steps:
            raise _error(path, f"{step!r} is not a step of the plan (0..{plan.total_steps - 1})", key="step", line=n)
        if phase not in phases:
            raise _error(path, f"{phase!r} is not a phase of plan.json", key="phase", line=n)
        if trial and not trial.isdigit():
            raise _error(path, f"{trial!r} is not an alternative number", key="trial", line=n)
        row: dict[str, Any] = {"step": int(step), "phase": phase, "trial": int(trial) if trial else None}
        for name, text in zip(plan.param_group_names, lrs, strict=False):
            try:
                row[name] = float(text)
            except ValueError:
                raise _error(path, f"{text!r} is not a number", key=name, line=n) from None
        out.append(row)
    return out


# ---------------------------------------------------------------- status


def status_of(run_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """finished | running | interrupted | failed | unknown (no summary.json: an older run)."""
    summary = read_summary(run_dir)
    if summary is None:
        return ("finished" if (run_dir / "model.pt").is_file() else "unknown"), None
    status = summary["status"]
    if status == "running" and not is_live(run_dir, summary):
        status = "interrupted"
    return status, summary


def is_live(run_dir: Path, summary: dict[str, Any] | None) -> bool:
    """Whether a live process holds the run directory.

    Exact where the run-directory lock exists (`.lock`, flock held by the running process:
    the kernel drops it when that process dies, however it dies). Otherwise: the PID that
    summary.json recorded is alive on this host (a recycled PID could fool this fallback).
    """
    lock = run_dir / LOCK_FILE
    if lock.is_file():
        held = _flock_held(lock)
        if held is not None:
            return held
    if not summary or summary.get("host") != socket.gethostname():
        return False
    pid = summary.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _flock_held(lock: Path) -> bool | None:
    """True / False: another process holds / nobody holds the lock; None: cannot tell."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without flock
        return None
    finally:
        os.close(fd)  # closing drops the shared lock at once
    return False
