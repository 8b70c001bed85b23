"""Stage 2: the recipe language as pydantic models (version 1 of the user contract).

Every model forbids unknown keys; validation errors are collected and turned into
`RecipeError`s with key paths (`phases.warmup.epochs`) and the line they sit on.
Optimizer and scheduler tables carry free keyword arguments; those are checked against
the torch class signature in `resolve`, not here, so `check` stays import-light.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftcompile.errors import RecipeError, RecipeErrors, did_you_mean
from ftcompile.load import LoadedRecipe
from ftcompile.metrics import metric

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(epoch|epochs|step|steps)\s*$")
SLUG = r"^[a-z0-9][a-z0-9._-]*$"
MAX_NAME = 128  # the name is a folder name: runs/<name>/
MAX_SEED = 2**32 - 1  # numpy's seed range; the runtime seeds numpy with it


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot name one folder inside a run directory, or None. A phase name is
    one: trials/<phase>/ (`..` or a `/` in it would write outside the run directory)."""
    if name in ("", ".", ".."):
        return "is not a folder name"
    if any(c in name for c in "/\\\0"):
        return "holds a '/', '\\' or NUL (it names the folder trials/<phase>/)"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    return None


PositiveInt = Annotated[int, Field(ge=1)]
Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
LR = Union[Annotated[float, Field(gt=0.0)], str]
Duration = Union[PositiveInt, str]


class Strict(BaseModel):
    # TOML has inf and nan; no recipe number means either, and a plan cannot hold them (JSON).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class Head(Strict):
    """A new classifier head, fastai style (BatchNorm1d, Dropout, Linear, activation)."""

    pool: Literal["avg", "max", "concat"] | None = None
    hidden: list[PositiveInt] = []
    dropout: Union[Prob, list[Prob]] = 0.0
    batchnorm: bool = False
    activation: str = "relu"

    @model_validator(mode="after")
    def _dropout_count(self) -> "Head":
        if isinstance(self.dropout, list) and len(self.dropout) != len(self.hidden) + 1:
            raise ValueError(
                f"dropout has {len(self.dropout)} values but the head has {len(self.hidden) + 1} "
                "Linear layers; give one per Linear (hidden + output) or a single float"
            )
        return self


class Model(Strict):
    arch: str
    weights: str = "none"
    num_classes: Union[Annotated[int, Field(ge=2)], Literal["auto"]] = "auto"
    head: Head | None = None
    # Extra keyword arguments of the torchvision builder (stochastic_depth_prob, dropout, ...),
    # checked against the model class's signature in `resolve`.
    builder_args: dict[str, Any] = {}
    # "load": the weights file's (or upstream run's) head tensors are loaded too (same classes).
    head_weights: Literal["new", "load"] = "new"


class Mix(Strict):
    """Batch-level MixUp / CutMix (torchvision.transforms.v2), trained on soft targets.

    timm's names: an alpha of 0 turns that kind off; `prob` is the chance a batch is mixed at
    all, `switch_prob` the chance of CutMix rather than MixUp when both are on.
    """

    mixup_alpha: Annotated[float, Field(ge=0.0)] = 0.8
    cutmix_alpha: Annotated[float, Field(ge=0.0)] = 1.0
    prob: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    switch_prob: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5

    @model_validator(mode="after")
    def _some_kind(self) -> "Mix":
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0; give one > 0 or remove data.mix")
        return self


# Batch-level ops: they need the whole batch and its labels, so they live in data.mix.
BATCH_OPS = ("MixUp", "CutMix")


def _check_per_image(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, op in enumerate(ops):
        if not isinstance(op.get("op"), str):
            raise ValueError(f"augment[{i}] needs op = \"<torchvision.transforms.v2 class>\"")
        if op["op"] in BATCH_OPS:
            raise ValueError(
                f"augment[{i}]: {op['op']} mixes whole batches, not single images; "
                "use data.mix = { mixup_alpha = 0.8, cutmix_alpha = 1.0 } instead"
            )
    return ops


class Data(Strict):
    train: str | None = None
    val: str | None = None
    builtin: Literal["digits"] | None = None
    classes: list[str] = []
    image_size: Annotated[int, Field(ge=8, le=2048)] = 224
    batch_size: PositiveInt = 32
    workers: Annotated[int, Field(ge=0)] = 2
    augment: list[dict[str, Any]] = []
    balance: Literal["none", "sampler", "loss"] = "none"
    label_smoothing: Prob = 0.0
    drop_last: bool = False
    mix: Mix | None = None
    val_resize: Annotated[int, Field(ge=8, le=4096)] | None = None  # shorter side before the centre crop
    val_crop: Annotated[int, Field(ge=8, le=2048)] | None = None  # default: image_size

    @field_validator("augment")
    @classmethod
    def _ops_named(cls, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _check_per_image(ops)

    @model_validator(mode="after")
    def _one_source(self) -> "Data":
        if self.builtin and (self.train or self.val):
            raise ValueError("give either builtin or train/val folders, not both")
        if not self.builtin and not self.train:
            raise ValueError("give data.train (an ImageFolder) or builtin = \"digits\"")
        return self


class Optimizer(BaseModel):
    """`type` names a torch.optim class; every other key is one of its arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = "AdamW"
    no_decay: Union[Literal["auto", "none"], list[str]] = "auto"
    # Gradient clipping over the trainable parameters, after unscaling (fp16), before the step.
    clip_grad_norm: Annotated[float, Field(gt=0.0)] | None = None
    clip_grad_value: Annotated[float, Field(gt=0.0)] | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Scheduler(BaseModel):
    """`type` names a torch.optim.lr_scheduler class; other keys are its arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StopEarly(Strict):
    """End the phase after `patience` evaluations without an improvement > `min_delta`."""

    metric: str = "val_loss"
    patience: PositiveInt = 2
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0

    @field_validator("metric")
    @classmethod
    def _known(cls, name: str) -> str:
        metric(name)
        return name


class PhaseData(Strict):
    """Per-phase data overrides (progressive resizing, a last phase without mixing)."""

    image_size: Annotated[int, Field(ge=8, le=2048)] | None = None
    batch_size: PositiveInt | None = None
    augment: list[dict[str, Any]] | None = None
    mix: Union[Mix, Literal[False]] | None = None  # false: no mixing in this phase

    @field_validator("augment")
    @classmethod
    def _ops_named(cls, ops: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return None if ops is None else _check_per_image(ops)
class Trials(BaseModel):
    """Alternatives of a phase: dotted paths to its fields (`"lr.layer4"`) -> lists of values.

    The keys are checked in `trials.py`, against the phase they belong to. A nested table
    (`lr = { layer4 = [...] }`, or TOML's unquoted `lr.layer4 = [...]`) reads as dotted keys.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    select: str = "val_top1"  # a metric of ftcompile/metrics.py: val_top1 | val_top5 | val_loss (| *_ema)

    @field_validator("select")
    @classmethod
    def _select_metric(cls, name: str) -> str:
        metric(name)
        return name
    mode: Literal["grid", "zip"] = "grid"
    keep: Literal["winner", "all"] = "winner"

    @property
    def keys(self) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value

        walk("", dict(self.model_extra or {}))
        return out


class Phase(Strict):
    after: list[str] = []
    train: Annotated[list[str], Field(min_length=1)]
    epochs: Annotated[float, Field(gt=0)] | None = None
    steps: PositiveInt | None = None
    lr: Union[LR, dict[str, LR]] = {}
    lr_decay: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    scheduler: Scheduler | None = None
    bn: Literal["train", "frozen"] = "train"
    optimizer_state: Literal["keep", "reset"] = "keep"
    weight_decay: dict[str, Annotated[float, Field(ge=0.0)]] = {}
    momentum: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = {}
    cache_features: bool | None = None  # None: cache when provably safe; true: also with augmentation
    stop_early: StopEarly | None = None  # metric-driven: the window becomes an upper bound
    restore_best: bool = False  # at the phase end, go back to the phase's best evaluation
    data: PhaseData | None = None
    trials: Trials | None = None  # alternatives of this phase, all from the same state (trials.py)

    @model_validator(mode="after")
    def _one_duration(self) -> "Phase":
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs = N or steps = N")
        return self

    @field_validator("lr")
    @classmethod
    def _lr_values(cls, value: Any) -> Any:
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            if isinstance(v, (int, float)) and v <= 0:
                raise ValueError("learning rates must be > 0")
        return value


class Ema(Strict):
    """An exponential moving average of the weights (timm's ModelEma): evaluated and saved too."""

    decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9998
    every: Duration = 1  # update every N steps ("N steps" / "N epochs")
    warmup: bool = False  # decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates

    @field_validator("every")
    @classmethod
    def _duration(cls, value: Duration) -> Duration:
        if isinstance(value, str) and not DURATION.match(value):
            raise ValueError('use "N epoch(s)", "N step(s)" or a number of steps')
        return value


class Run(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    deterministic: bool = True
    compile: bool = False  # torch.compile the model (recompiles when the trainable set changes)
    # "never": no periodic checkpoints, only the phase ends that keep_checkpoints keeps.
    checkpoint_every: Duration = "1 epoch"
    eval_every: Duration = "1 epoch"
    # Which checkpoints stay on disk (see README "What a run costs on disk").
    keep_checkpoints: Literal["boundaries", "all", "last", "none"] = "boundaries"
    keep_best: str | None = None  # a metric: also write best.pt at the run's best evaluation

    @field_validator("keep_best")
    @classmethod
    def _metric(cls, name: str | None) -> str | None:
        if name is not None:
            metric(name)
        return name
    # metrics.jsonl is always written (resume relies on it); "tensorboard" adds event files.
    log: list[Literal["jsonl", "tensorboard"]] = ["jsonl"]
    accumulate: PositiveInt = 1  # micro-batches per optimizer step; data.batch_size stays the step's batch
    ema: Ema | None = None
    sync_bn: bool = False  # BatchNorm -> SyncBatchNorm under several processes

    @field_validator("checkpoint_every", "eval_every")
    @classmethod
    def _duration(cls, value: Duration, info: Any) -> Duration:
        if value == "never" and info.field_name == "checkpoint_every":
            return value
        if isinstance(value, str) and not DURATION.match(value):
            never = ', or "never"' if info.field_name == "checkpoint_every" else ""
            raise ValueError(f'use "N epoch(s)", "N step(s)" or a number of steps{never}')
        return value


class Recipe(Strict):
    name: Annotated[str, Field(pattern=SLUG, max_length=MAX_NAME)]
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    model: Model
    data: Data
    optimizer: Optimizer = Optimizer()
    groups: dict[str, Annotated[list[str], Field(min_length=1)]] = {}
    phases: Annotated[dict[str, Phase], Field(min_length=1)]
    run: Run = Run()

    @field_validator("phases")
    @classmethod
    def _phase_names(cls, phases: dict[str, Phase]) -> dict[str, Phase]:
        for name in phases:
            problem = folder_name_problem(name)
            if problem:
                raise ValueError(f"phase name {name!r} {problem}; use letters, digits, '.', '_' and '-'")
        return phases

    @field_validator("groups")
    @classmethod
    def _no_rest(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        if "rest" in groups:
            raise ValueError('"rest" is the group of unmatched parameters; choose another name')
        return groups


def parse_duration(value: Duration | float, steps_per_epoch: int) -> int:
    """`"2 epochs"`, `"0.5 epoch"`, `"300 steps"` or a plain number of steps -> steps (>= 1)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(1, int(value))
    match = DURATION.match(str(value))
    if not match:
        raise ValueError(f'{value!r} is not a duration; use "N epoch(s)" or "N step(s)"')
    amount, unit = float(match.group(1)), match.group(2)
    if unit.startswith("epoch"):
        return max(1, round(amount * steps_per_epoch))
    return max(1, int(amount))


_TYPE_TAG = re.compile(r"[\[\](),]|^(int|float|str|bool|list|dict)$|^(function|constrained|lax|literal|union)")


def loc_to_key(loc: tuple[Any, ...]) -> str:
    """pydantic's loc ('phases', 'warmup', 'lr', 'head') -> 'phases.warmup.lr.head'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TYPE_TAG.search(str(part)):
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of loc, to suggest valid keys."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            if model is Recipe and str(part) not in Recipe.model_fields:
                return None
            # inside a dict of models, e.g. phases.<name>
            continue
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    import typing

    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for sub in typing.get_args(arg):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                return sub
    return None


def _to_error(err: dict[str, Any], loaded: LoadedRecipe) -> RecipeError:
    loc = tuple(err["loc"])
    key = loc_to_key(loc)
    kind = err["type"]
    suggestion = None
    if kind == "extra_forbidden":
        model = _model_at(loc)
        valid = sorted(model.model_fields) if model else []
        message = "unknown key"
        suggestion = did_you_mean(str(loc[-1]), valid) or (f"valid keys: {', '.join(valid)}" if valid else None)
    elif kind == "missing":
        message = "missing required key"
        suggestion = f"add {loc[-1]} = ..."
    else:
        message = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], (dict, list)):
            message += f" (got {err['input']!r})"
        suggestion = _hint(kind, err.get("ctx") or {})
    return RecipeError(message, file=loaded.source_of(key), key=key, line=loaded.line_of(key), suggestion=suggestion)


_HINTS = {
    "greater_than": "use a number > {gt}",
    "greater_than_equal": "use a number >= {ge}",
    "less_than": "use a number < {lt}",
    "less_than_equal": "use a number <= {le}",
    "too_short": "give at least {min_length} item(s)",
    "literal_error": "use one of: {expected}",
    "string_pattern_mismatch": "use lower-case letters, digits, '.', '_' and '-' (a slug)",
    "int_parsing": "write a whole number, without quotes",
    "int_type": "write a whole number, without quotes",
    "int_from_float": "write a whole number",
    "float_parsing": "write a number, without quotes",
    "float_type": "write a number, without quotes",
    "finite_number": "write a finite number (not inf or nan)",
    "bool_parsing": "write true or false, without quotes",
    "bool_type": "write true or false, without quotes",
    "string_type": "write a string, in quotes",
    "list_type": "write a list: [ ... ]",
    "dict_type": "write a table: { key = value }",
    "model_type": "write a table: { key = value }",
}


def _hint(kind: str, ctx: dict[str, Any]) -> str:
    """What to write instead; `ftcompile schema` is the reference where no short hint fits."""
    try:
        return _HINTS[kind].format(**ctx)
    except (KeyError, IndexError):
        return "`ftcompile schema` lists every key with its type and allowed values"


def validate(loaded: LoadedRecipe) -> Recipe:
    """Validate a loaded recipe; all errors are reported together."""
    try:
        return Recipe.model_validate(loaded.data)
    except ValidationError as exc:
        errors = _one_per_key([_to_error(e, loaded) for e in exc.errors(include_url=False)])
        raise (errors[0] if len(errors) == 1 else RecipeErrors(errors)) from None


def _one_per_key(errors: list[RecipeError]) -> list[RecipeError]:
    """A union type fails once per alternative; keep the first, most specific error per key."""
    keys = [e.key or "" for e in errors]
    kept: dict[str, RecipeError] = {}
    for err, key in zip(errors, keys):
        deeper = any(k != key and k.startswith(key + ".") for k in keys)
        if not deeper and key not in kept:
            kept[key] = err
    return list(kept.values())


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "ftcompile recipe (version 1)"
    props = schema.setdefault("properties", {})
    props["extends"] = {"type": "string", "description": "path of a base recipe, relative to this file"}
    return schema
