"""The defaults a recipe and a plan share, declared once (issue 18 §3).

`schema.py` gives them to a recipe that leaves the knob out; `plan.py` gives them to a
plan.json (or an export sidecar) written before the knob existed. Both must mean the same
run, so both read them here; `tests/ftcompile/test_defaults.py` checks that every knob the
two declare has one default. A leaf module: it imports nothing of the project, so schema,
plan and the runtime can all read it. `Final` keeps each value's literal type, which the
schema's `Literal[...]` fields need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

HEAD_WEIGHTS: Final = "new"  # model.head_weights: "new" initialises the head; "load" takes the file's
KEEP_CHECKPOINTS: Final = "boundaries"  # run.keep_checkpoints: the newest + the phase starts
LOG: Final[tuple[Literal["jsonl", "tensorboard"], ...]] = ("jsonl",)  # run.log (copy it into a list)
ACCUMULATE: Final = 1  # run.accumulate: micro-batches per optimizer step
SYNC_BN: Final = False  # run.sync_bn
REPRODUCIBLE: Final = "machine"  # run.reproducible: bitwise on the same kind of machine

# model.head, a new classifier head (schema.py Head; plan.py HeadSpec.of gives them to a
# sidecar or plan that leaves a key out).
HEAD_POOL: Final = None  # avg for a CNN
HEAD_HIDDEN: Final[tuple[int, ...]] = ()
HEAD_DROPOUT: Final = 0.0
HEAD_BATCHNORM: Final = False
HEAD_ACTIVATION: Final = "relu"
HEAD: Final[Mapping[str, object]] = {
    "pool": HEAD_POOL,
    "hidden": HEAD_HIDDEN,
    "dropout": HEAD_DROPOUT,
    "batchnorm": HEAD_BATCHNORM,
    "activation": HEAD_ACTIVATION,
}
