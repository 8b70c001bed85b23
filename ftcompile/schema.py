"""Stage 2: the recipe language as pydantic models (version 1 of the user contract).

Every model forbids unknown keys; validation errors are collected and turned into
`RecipeError`s with key paths (`phases.warmup.epochs`) and the line they sit on.
Optimizer and scheduler tables carry free keyword arguments; those are checked against
the torch class signature in `resolve`, not here, so `check` stays import-light.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ftcompile import defaults
from ftcompile.errors import RecipeError, RecipeErrors, did_you_mean, loc_to_key
from ftcompile.load import LoadedRecipe
from ftcompile.metrics import METRICS, metric

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(epoch|epochs|step|steps)\s*$")
# For the field descriptions (the JSON Schema, the docs' recipe reference).
METRIC_NAMES = ", ".join(f"`{name}`" for name in METRICS)
DURATION_HELP = '`"N epoch(s)"` (fractions allowed), `"N step(s)"` or a number of steps'
SLUG = r"^[a-z0-9][a-z0-9._-]*$"
MAX_NAME = 128  # the name is a folder name: runs/<name>/
MAX_SEED = 2**32 - 1  # numpy's seed range; the runtime seeds numpy with it


# Names Windows keeps for devices: no file or folder can have one, in any case and with any
# extension (`con`, `NUL`, `aux.txt`, `com1.d`), so a run directory holding one cannot be
# copied to Windows or made there.
WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"{port}{n}" for port in ("com", "lpt") for n in "0123456789¹²³")}
)
# Characters no Windows file name holds, besides '/', '\\' and the control characters.
WINDOWS_FORBIDDEN = '<>:"|?*'


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot name one folder inside a run directory, on any system, or None.
    The recipe name is one (runs/<name>/), and a phase name too: trials/<phase>/ (`..` or a
    `/` in it would write outside the run directory)."""
    if name in ("", ".", ".."):
        return "is not a folder name"
    if any(c in name for c in "/\\\0"):
        return "holds a '/', '\\' or NUL"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "holds a control character (a newline, a tab ...)"
    forbidden = sorted({c for c in name if c in WINDOWS_FORBIDDEN})
    if forbidden:
        return f"holds {' '.join(forbidden)}, which Windows does not allow in a folder name"
    if name[-1] in ". ":
        return "ends with '.' or a space, which Windows drops from a folder name"
    stem = name.split(".")[0].rstrip(" ")
    if stem.lower() in WINDOWS_RESERVED:
        return f"is a name Windows reserves for a device ({stem.upper()}, with any extension): no folder can have it"
    return None


def _phase_name(name: str) -> str:
    """A phase name is a folder name (trials/<phase>/); checked as a key, so the error names
    phases.<name> and its line."""
    problem = folder_name_problem(name)
    if problem:
        raise PydanticCustomError(
            "folder_name", "{text}", {"text": f"the phase name {problem} (it names the folder trials/<phase>/)"}
        )
    return name


PhaseName = Annotated[str, AfterValidator(_phase_name)]
PositiveInt = Annotated[int, Field(ge=1)]
Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
LR = Annotated[float, Field(gt=0.0)] | str
Duration = PositiveInt | str


class Strict(BaseModel):
    # TOML has inf and nan; no recipe number means either, and a plan cannot hold them (JSON).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class Head(Strict):
    """A new classifier head, fastai style (BatchNorm1d, Dropout, Linear, activation)."""

    pool: Literal["avg", "max", "concat"] | None = Field(
        defaults.HEAD_POOL,
        description=(
            "`avg`, `max` or `concat` (max and avg side by side, 2x features); unset: `avg`. CNNs only: "
            "ViT, Swin and MaxViT pool with their tokens, and `pool` is an error there"
        ),
    )
    hidden: list[PositiveInt] = Field(list(defaults.HEAD_HIDDEN), description="widths of hidden Linear layers")
    dropout: Prob | list[Prob] = Field(
        defaults.HEAD_DROPOUT, description=("one float for every Linear, or one per Linear (`len(hidden) + 1`)")
    )
    batchnorm: bool = Field(defaults.HEAD_BATCHNORM, description="BatchNorm1d before each Linear")
    activation: str = Field(
        defaults.HEAD_ACTIVATION,
        description=("any elementwise `torch.nn` activation by lower-case name (`gelu`, `silu`, `leaky_relu`, ...)"),
    )

    @model_validator(mode="after")
    def _dropout_count(self) -> Head:
        if isinstance(self.dropout, list) and len(self.dropout) != len(self.hidden) + 1:
            raise ValueError(
                f"dropout has {len(self.dropout)} values but the head has {len(self.hidden) + 1} "
                "Linear layers; give one per Linear (hidden + output) or a single float"
            )
        return self


class Model(Strict):
    """The torchvision network, its starting weights and its head."""

    arch: str = Field(
        description=("any classification builder in `torchvision.models` (`list_models(module=torchvision.models)`)")
    )
    weights: str = Field(
        "none",
        description=(
            'a weights enum member of the arch (`"IMAGENET1K_V2"`) or `"DEFAULT"`; a state_dict file '
            "(`.pt`, `.pth`, `.bin`, `.safetensors` read with safetensors, or a path with `/`), relative to the "
            "recipe; an upstream "
            'recipe `*.toml` (its run\'s final model.pt, trained first when missing); or `"none"`'
        ),
    )
    num_classes: Annotated[int, Field(ge=2)] | Literal["auto"] = Field(
        "auto", description=('`"auto"`: the number of classes in the data')
    )
    head: Head | None = Field(
        None,
        description=(
            "a new classifier head; unset: torchvision's last Linear is replaced by `Linear(in, num_classes)`"
        ),
    )
    # Checked against the model class's signature in `resolve`.
    builder_args: dict[str, Any] = Field(
        {},
        description=(
            "keyword arguments of the torchvision builder (`stochastic_depth_prob`, `dropout`, ...), "
            "checked against the model class's signature"
        ),
    )
    head_weights: Literal["new", "load"] = Field(
        defaults.HEAD_WEIGHTS,
        description=(
            '`"load"`: with weights from a file or an upstream recipe, load the head\'s tensors too '
            "(continuing a model fine-tuned on the same classes); each is checked against the file's shape"
        ),
    )


class Mix(Strict):
    """Batch-level MixUp / CutMix (torchvision.transforms.v2), trained on soft targets; timm's parameters."""

    mixup_alpha: Annotated[float, Field(ge=0.0)] = Field(0.8, description="MixUp's Beta(alpha, alpha); 0: no MixUp")
    cutmix_alpha: Annotated[float, Field(ge=0.0)] = Field(1.0, description="CutMix's Beta(alpha, alpha); 0: no CutMix")
    prob: Annotated[float, Field(ge=0.0, le=1.0)] = Field(1.0, description="the chance that a batch is mixed at all")
    switch_prob: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5, description=("the chance of CutMix rather than MixUp when both alphas are > 0")
    )

    @model_validator(mode="after")
    def _some_kind(self) -> Mix:
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0; give one > 0 or remove data.mix")
        return self


# Batch-level ops: they need the whole batch and its labels, so they live in data.mix.
BATCH_OPS = ("MixUp", "CutMix")


def _check_per_image(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, op in enumerate(ops):
        if not isinstance(op.get("op"), str):
            raise ValueError(f'augment[{i}] needs op = "<torchvision.transforms.v2 class>"')
        if op["op"] in BATCH_OPS:
            raise ValueError(
                f"augment[{i}]: {op['op']} mixes whole batches, not single images; "
                "use data.mix = { mixup_alpha = 0.8, cutmix_alpha = 1.0 } instead"
            )
    return ops


class ValSplit(Strict):
    """`data.val = { split = 0.15, seed = 0 }`: validation images taken from data.train's folder,
    stratified per class, chosen at compile time and listed in the plan (ftcompile/split.py)."""

    split: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        description=("the share of each class's images that is validation (at least 1, and at least 1 left to train)")
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = Field(
        0, description=("which images: another seed, another split of the same sizes")
    )


class Data(Strict):
    """The images: ImageFolder folders or a builtin set, and how they are batched and augmented."""

    train: str | None = Field(
        None, description=("an ImageFolder folder (one folder per class), relative to the recipe")
    )
    val: str | ValSplit | None = Field(
        None,
        description=(
            "the validation ImageFolder folder, relative to the recipe; or `{ split = 0.15, seed = 0 }`: a "
            "stratified split of data.train made at compile time, its file lists in the plan"
        ),
    )
    builtin: Literal["digits", "digits-10shot"] | None = Field(
        None,
        description=(
            '`"digits"`: scikit-learn\'s 1797 real 8x8 handwritten digits, upscaled; a fixed stratified '
            'split (within each class, every 5th image is val); `"digits-10shot"`: the same validation images, '
            "and only the first 10 training images of each class (few-shot)"
        ),
    )
    classes: list[str] = Field(
        [],
        description=(
            'a subset of class folder names (digits: `"0"`..`"9"`); class indices follow the sorted names; empty: all'
        ),
    )
    image_size: Annotated[int, Field(ge=8, le=2048)] = Field(
        224, description=("train and val images end as `image_size` squares")
    )
    batch_size: PositiveInt = Field(32, description="the global batch (images per optimizer step)")
    workers: Annotated[int, Field(ge=0)] = Field(2, description="DataLoader workers; results do not depend on it")
    augment: list[dict[str, Any]] = Field(
        [],
        description=(
            '`torchvision.transforms.v2` ops by name: `{ op = "RandomResizedCrop", size = 224 }`; names and '
            "arguments are checked against the class signatures, and `run` builds each op once before training, "
            "so a value the transform rejects (`p = 2`) is an error there with its key"
        ),
    )
    balance: Literal["none", "sampler", "loss"] = Field(
        "none",
        description=(
            "`sampler`: each epoch draws `len(train)` samples with replacement, weight 1/class count; "
            "`loss`: CrossEntropy class weights n / (k * count)"
        ),
    )
    label_smoothing: Prob = Field(0.0, description="CrossEntropy label smoothing")
    drop_last: bool = Field(False, description="drop the last short batch of each epoch")
    mix: Mix | None = Field(None, description="batch-level MixUp / CutMix (timm's parameters)")
    val_resize: Annotated[int, Field(ge=8, le=4096)] | None = Field(
        None,
        description=(
            "val: resize the shorter side to this, then centre crop; unset: `image_size / 0.875` "
            "(the builtin digits: `image_size`)"
        ),
    )
    val_crop: Annotated[int, Field(ge=8, le=2048)] | None = Field(
        None, description=("val: the centre crop; unset: `image_size`")
    )

    @field_validator("augment")
    @classmethod
    def _ops_named(cls, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _check_per_image(ops)

    @model_validator(mode="after")
    def _one_source(self) -> Data:
        if self.builtin and (self.train or self.val):
            raise ValueError("give either builtin or train/val folders, not both")
        if not self.builtin and not self.train:
            raise ValueError('give data.train (an ImageFolder) or builtin = "digits"')
        return self


class Optimizer(BaseModel):
    """`type` names a torch.optim class; every other key is one of its keyword arguments (`momentum`,
    `weight_decay`, `betas`, `nesterov`, ...), checked against its signature."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = Field("AdamW", description="any `torch.optim` optimizer class")
    no_decay: Literal["auto", "none"] | list[str] = Field(
        "auto",
        description=(
            "`auto`: biases, 1-d parameters and every parameter of a normalisation layer (BatchNorm, LayerNorm, "
            "GroupNorm, ...) get weight_decay 0; a list of globs over parameter names; or `none`"
        ),
    )
    # Gradient clipping: over the trainable parameters, after unscaling (fp16), before the step.
    clip_grad_norm: Annotated[float, Field(gt=0.0)] | None = Field(
        None,
        description=(
            "`torch.nn.utils.clip_grad_norm_` over the parameters that have a gradient, before each step; "
            "the pre-clip norm is logged as `grad_norm`"
        ),
    )
    clip_grad_value: Annotated[float, Field(gt=0.0)] | None = Field(
        None,
        description=("`torch.nn.utils.clip_grad_value_` over the parameters that have a gradient, before each step"),
    )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Scheduler(BaseModel):
    """`type` names a torch.optim.lr_scheduler class; other keys are its arguments, checked against its
    signature. Arguments that measure the phase default to its length; in them, `lr` is the group's LR."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = Field(
        description=(
            "a `torch.optim.lr_scheduler` class; LambdaLR, MultiplicativeLR, ReduceLROnPlateau, SequentialLR "
            "and ChainedScheduler need functions or metrics a recipe cannot give, and are errors"
        )
    )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StopEarly(Strict):
    """End the phase after `patience` evaluations without an improvement > `min_delta`."""

    metric: str = Field("val_loss", description=f"the metric compared at each evaluation: {METRIC_NAMES}")
    patience: PositiveInt = Field(2, description="evaluations in a row without an improvement that end the phase")
    min_delta: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description=("an evaluation improves only when it beats the phase's best by more than this")
    )

    @field_validator("metric")
    @classmethod
    def _known(cls, name: str) -> str:
        metric(name)
        return name


class PhaseData(Strict):
    """Per-phase data overrides (progressive resizing, a last phase without mixing)."""

    image_size: Annotated[int, Field(ge=8, le=2048)] | None = Field(
        None, description=("this phase's train image size; unset: `data.image_size`")
    )
    batch_size: PositiveInt | None = Field(
        None, description=("this phase's global batch (its `epochs` count its own batches); unset: `data.batch_size`")
    )
    augment: list[dict[str, Any]] | None = Field(None, description="this phase's train ops; unset: `data.augment`")
    mix: Mix | Literal[False] | None = Field(
        None, description=("this phase's MixUp / CutMix; `false`: no mixing in this phase; unset: `data.mix`")
    )

    @field_validator("augment")
    @classmethod
    def _ops_named(cls, ops: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return None if ops is None else _check_per_image(ops)


def _rung_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise PydanticCustomError(
            "rung_point",
            "{text}",
            {"text": f"a rung point is a fraction of the phase's window between 0 and 1, exclusive (got {value!r})"},
        )
    return value


def _kept_share(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise PydanticCustomError(
            "kept_share",
            "{text}",
            {"text": f"keep is the share of the alternatives that go on at each rung, between 0 and 1 (got {value!r})"},
        )
    return value


_OPEN_UNIT = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
RungPoint = Annotated[float, AfterValidator(_rung_fraction), WithJsonSchema(_OPEN_UNIT)]
KeptShare = Annotated[float, AfterValidator(_kept_share), WithJsonSchema(_OPEN_UNIT)]


class Prune(Strict):
    """Successive halving inside a trial phase: at each rung point every alternative still
    running is evaluated and the best `keep` share of them on `select` goes on; the others
    stop there. A survivor trains exactly as it would without `prune` (same steps, same LR
    window: the schedule is not compressed); pruning only decides who continues.

    The compiler turns each fraction into a step of the window, the phase start plus
    round(at x window steps), halves rounding up; each must be a step strictly inside the
    window, after the one before. At each rung max(1, floor(n x keep)) of the n alternatives
    running go on (floor, as successive halving keeps n / eta: 4 -> 2 -> 1 with keep = 0.5,
    3 -> 1); a rung reached by a single alternative would prune nothing and is an error.
    `prune` ends alternatives by their rung evaluations, so a phase with `stop_early` or
    `restore_best` (which end or rewind an alternative by its own evaluations) cannot prune;
    `[run] keep_best` sees the rung evaluations like any other.
    """

    at: list[RungPoint] = Field(
        min_length=1,
        description=(
            "the rung points, as increasing fractions of the phase's window (0.25: a quarter of its steps); "
            "every alternative still running is evaluated there"
        ),
    )
    keep: KeptShare = Field(
        description=("the share of the alternatives running that goes on at each rung: max(1, floor(n x keep))")
    )

    @field_validator("at")
    @classmethod
    def _increasing(cls, at: list[float]) -> list[float]:
        for i in range(1, len(at)):
            if at[i] <= at[i - 1]:
                raise PydanticCustomError(
                    "rung_order",
                    "{text}",
                    {
                        "text": f"rung points must increase: at[{i}] = {at[i]!r} is not after at[{i - 1}] = {at[i - 1]!r}"
                    },
                )
        return at


class Trials(BaseModel):
    """Alternatives of a phase, each run from the phase's start state; the best one continues.

    Every other key is a dotted path to a field of the phase (`"lr.<group>"`, `lr_decay`,
    `"weight_decay.<group>"`, `"momentum.<group>"`, `scheduler`, `"scheduler.<arg>"`, `train`,
    `bn`, `optimizer_state`) with a list of at least 2 values; with several keys, `mode` says
    how they combine. The keys are checked in `trials.py`, against the phase they belong to. A
    nested table (`lr = { layer4 = [...] }`, or TOML's unquoted `lr.layer4 = [...]`) reads as
    dotted keys.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    select: str = Field(
        "val_top1",
        description=(
            "the metric of each alternative's last evaluation that decides (with `prune`, also its evaluation at "
            f"each rung): {METRIC_NAMES}"
        ),
    )

    @field_validator("select")
    @classmethod
    def _select_metric(cls, name: str) -> str:
        metric(name)
        return name

    mode: Literal["grid", "zip"] = Field(
        "grid",
        description=(
            "`grid`: every combination of the keys' values; `zip`: the lists paired element-wise (same lengths)"
        ),
    )
    keep: Literal["winner", "all"] = Field(
        "winner",
        description=("`winner`: only the winner's end state stays in `trials/<phase>/<k>/end.pt`; `all`: every one's"),
    )
    prune: Prune | None = Field(
        None,
        description=(
            "successive halving: `{ at = [0.25, 0.5], keep = 0.5 }` evaluates every alternative still running at "
            "each rung point (a fraction of the window) and lets the best `keep` share go on; unset: every "
            "alternative runs the whole window"
        ),
    )

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
    """One stage of training: which groups train, for how long, at which learning rates."""

    after: list[str] = Field([], description="phases this one runs after (the edges of the phase graph)")
    train: Annotated[
        list[str], Field(min_length=1, description=("the groups trained in this phase; every other group is frozen"))
    ]
    epochs: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description=(
            "the phase's length in epochs (fractions allowed; they become steps once); give `epochs` or `steps`"
        ),
    )
    steps: PositiveInt | None = Field(None, description="the phase's length in optimizer steps")
    lr: LR | dict[str, LR] = Field(
        {},
        description=(
            '`{ group = number or expression }` (`"head / 10"`), or one number for every trained group; '
            "every trained group needs one, unless `lr_decay` gives it"
        ),
    )
    lr_decay: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None,
        description=(
            "layer-wise decay: walking `train` from its last group toward its first, each group without an "
            "explicit LR gets the LR of the group after it times this"
        ),
    )
    scheduler: Scheduler | None = Field(
        None, description=('`{ type = "<torch.optim.lr_scheduler class>", ...its arguments }`; unset: constant LR')
    )
    bn: Literal["train", "frozen"] = Field(
        "train",
        description=(
            "`frozen`: BatchNorm layers in the phase's frozen groups stay in eval mode (running statistics unchanged)"
        ),
    )
    optimizer_state: Literal["keep", "reset"] = Field(
        "keep", description=("`reset`: clear momentum / Adam moments of the trained groups at the phase start")
    )
    weight_decay: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        {}, description=("per-group overrides for this phase (the decayed part only); other phases use `[optimizer]`'s")
    )
    momentum: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        {}, description=("per-group overrides (`momentum`, or `betas[0]` for Adam-like optimizers)")
    )
    cache_features: bool | None = Field(
        None,
        description=(
            "the feature cache: unset: on when provably safe; `true`: also with random augmentation or dropout "
            "below the head (applied once); `false`: off"
        ),
    )
    stop_early: StopEarly | None = Field(
        None, description=("end the phase early when a metric stops improving; the window becomes an upper bound")
    )
    restore_best: bool = Field(
        False,
        description=(
            "at the phase end (planned or early), model and optimizer moments go back to the phase's best evaluation"
        ),
    )
    data: PhaseData | None = Field(None, description="this phase's own data settings (progressive resizing)")
    trials: Trials | None = Field(
        None, description=("alternatives of this phase, each from the same start state; the best continues")
    )

    @model_validator(mode="after")
    def _one_duration(self) -> Phase:
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

    decay: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.9998, description="the average's decay per update")
    every: Duration = Field(1, description=f"update every: {DURATION_HELP}")
    warmup: bool = Field(
        False, description=("timm's ramp: the decay is `min(decay, (1 + n) / (10 + n))` over the first updates")
    )

    @field_validator("every")
    @classmethod
    def _duration(cls, value: Duration) -> Duration:
        if isinstance(value, str) and not DURATION.match(value):
            raise ValueError('use "N epoch(s)", "N step(s)" or a number of steps')
        return value


class Run(Strict):
    """How the plan is carried out: device, precision, evaluations, checkpoints, logs."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto`: CUDA when present")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description=("`bf16`, `fp16`: autocast (fp16 with a GradScaler)")
    )
    channels_last: bool = Field(False, description="NHWC memory format for model and inputs")
    deterministic: bool = Field(
        True, description=("`torch.use_deterministic_algorithms`; `false` turns on cudnn.benchmark")
    )
    compile: bool = Field(
        False, description=("`torch.compile` the model (it recompiles when the trainable set changes)")
    )
    checkpoint_every: Duration = Field(
        "1 epoch",
        description=(
            f'{DURATION_HELP}, counted from each phase\'s start; and always at each phase end. `"never"`: '
            "no periodic checkpoints, only the phase ends `keep_checkpoints` keeps"
        ),
    )
    eval_every: Duration = Field(
        "1 epoch", description=(f"{DURATION_HELP}, counted from each phase's start; and always at each phase end")
    )
    keep_checkpoints: Literal["boundaries", "all", "last", "none"] = Field(
        defaults.KEEP_CHECKPOINTS,
        description=(
            "which checkpoints stay on disk: `boundaries` (the newest + the phase starts), `all`, `last` "
            "(the newest) or `none` (none once finished)"
        ),
    )
    keep_best: str | None = Field(
        None, description=(f"a metric ({METRIC_NAMES}): also write `best.pt` at the run's best evaluation")
    )

    @field_validator("keep_best")
    @classmethod
    def _metric(cls, name: str | None) -> str | None:
        if name is not None:
            metric(name)
        return name

    # metrics.jsonl is always written: resume relies on it.
    log: list[Literal["jsonl", "tensorboard"]] = Field(
        list(defaults.LOG),
        description=(
            '`["jsonl", "tensorboard"]` adds TensorBoard event files in `RUN_DIR/tensorboard/` (needs the '
            "`tensorboard` extra; without it, a compile error); metrics.jsonl is always written"
        ),
    )
    accumulate: PositiveInt = Field(
        defaults.ACCUMULATE,
        description=("micro-batches per optimizer step; `data.batch_size` stays the images per step"),
    )
    ema: Ema | None = Field(
        None,
        description=("an exponential moving average of the weights, evaluated beside them and saved as `model_ema.pt`"),
    )
    sync_bn: bool = Field(
        defaults.SYNC_BN,
        description=("BatchNorm becomes SyncBatchNorm when several processes run on GPUs; a no-op with one process"),
    )
    reproducible: Literal["machine", "portable"] = Field(
        defaults.REPRODUCIBLE,
        description=(
            '`machine`: bitwise repeatable on the same kind of machine; `"portable"`: oneDNN, ATen and MKL pinned '
            "to AVX2 and one thread, so the run gives the same bits on any x86-64 CPU with AVX2 (CPU only, fp32; "
            "slower, see docs/starting.md)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _portable_on_cpu(cls, data: Any) -> Any:
        """A portable run is a CPU run: device "auto" means the CPU there."""
        if isinstance(data, dict) and data.get("reproducible") == "portable" and data.get("device", "auto") == "auto":
            return {**data, "device": "cpu"}
        return data

    @model_validator(mode="after")
    def _portable_pins(self) -> Run:
        if self.reproducible != "portable":
            return self
        clashes = [
            why
            for bad, why in (
                (self.device == "cuda", 'device = "cuda" (GPU kernels are not pinned: use "cpu")'),
                (self.precision != "fp32", f'precision = "{self.precision}" (use "fp32")'),
                (self.compile, "compile = true (torch.compile generates kernels for this CPU)"),
                (not self.deterministic, "deterministic = false"),
            )
            if bad
        ]
        if clashes:
            raise ValueError('reproducible = "portable" pins CPU kernels; it cannot go with ' + "; ".join(clashes))
        return self

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
    """A fine-tuning recipe: model, data, optimizer, parameter groups and the phases of training."""

    name: Annotated[
        str, Field(pattern=SLUG, max_length=MAX_NAME, description=("names the run directory `runs/<name>/`"))
    ]
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = Field(
        0, description=("seeds python, numpy, torch, the data order and the augmentation")
    )
    model: Model = Field(description="the network and its weights")
    data: Data = Field(description="the images")
    optimizer: Optimizer = Field(Optimizer(), description="the one optimizer that holds every parameter group")
    groups: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(
        {},
        description=(
            "`name = [selectors]`: an alias (`head`, `stem`, `stage1`.., `backbone`), a module name (`layer4.1`) "
            'or a glob over module and parameter names; unset: `head = ["head"]`, `backbone = ["backbone"]`; '
            "parameters no group selects form the group `rest`"
        ),
    )
    phases: Annotated[
        dict[PhaseName, Phase],
        Field(
            min_length=1,
            description=("`[phases.<name>]`: the phases of training, in the order their `after` edges give"),
        ),
    ]
    run: Run = Field(Run(), description="how the plan is carried out")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        problem = folder_name_problem(name)
        if problem:
            raise PydanticCustomError(
                "folder_name",
                "{text}",
                {"text": f"the recipe name {problem} (it names the run directory runs/<name>/)"},
            )
        return name

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
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for sub in typing.get_args(arg):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                return sub
    return None


def _to_error(err: Mapping[str, Any], loaded: LoadedRecipe) -> RecipeError:
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
    "folder_name": "choose another name: letters, digits, '.', '_' and '-', and not one Windows reserves "
    "(con, prn, aux, nul, com0-com9, lpt0-lpt9, also with an extension)",
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
    # str.format: a brace that is text is doubled
    "dict_type": "write a table: {{ key = value }}",
    "model_type": "write a table: {{ key = value }}",
    "rung_point": "e.g. at = [0.25, 0.5]: evaluate and prune at a quarter and at half of the window",
    "kept_share": "e.g. keep = 0.5: the best half goes on at each rung",
    "rung_order": "list the rung points once each, in increasing order: at = [0.25, 0.5]",
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
    for err, key in zip(errors, keys, strict=False):
        deeper = any(k != key and k.startswith(key + ".") for k in keys)
        if not deeper and key not in kept:
            kept[key] = err
    return list(kept.values())


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "ftcompile recipe (version 1)"
    props = schema.setdefault("properties", {})
    props["extends"] = {
        "type": "string",
        "description": (
            "path of a base recipe, relative to this file; this recipe is deep-merged over it: tables merge key "
            "by key, arrays and values are replaced; the base's data and weights paths are rebased"
        ),
    }
    return schema
