"""squeezeray's compression stages: pure PyTorch, no Ray.

Each stage module has one frozen params dataclass and one function, exposed as `SPEC` and
listed by `stage_registry()` in pipeline order; every stage runs through one runner,
`stages.runner.run_stage`, which enforces the contract its `SPEC` declares.

Layout, bottom to top (a module imports only its own layer or below; checked by
tests/test_import_graph.py):

    errors, quiet, heap          SqueezerayError; known-harmless library log lines dropped;
                                 freed heap pages back to the OS
    names, batches,              mode/runtime names; input/output forms;
    models, attention, device,   demo models; MultiheadAttention as Linears; device choice;
    layers                       Transformer fast path after layer swaps, layer summaries
    tasks                        the Task contract and the built-in tasks
    checkpoint, surgery,         the checkpoint data format; structured-pruning history;
    onnxio, fingerprint          ONNX bytes and ORT int8; what a task's stage keys hash
    base, int8                   StageInput/Output/Spec; torch int8 module structure
    rebuild                      checkpoint -> module (replays pruning, low-rank, int8)
    masks, runtime               keep pruned zeros (`keep_zeros`); a checkpoint's runtime
    training, latency, metrics,  fit/accuracy/KD loss; time-boxed latency; size, params;
    selfcheck                    checkpoint round trip, logits tolerance of int8/float
    teacher ... export           the eight stages, own behaviour only
    precheck                     stages that cannot apply, up front
    runner                       the stage contract, for every stage

`import stages` does not import torch (Tune trial coordinators import `stages.errors` and must
stay light); the public names below load their modules on first access.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

from stages.errors import SqueezerayError
from stages.quiet import install_log_filters

install_log_filters()  # known-harmless library log lines (torchao on CPU...): stages.quiet

if TYPE_CHECKING:
    from stages.base import StageInput, StageOutput, StageSpec
    from stages.checkpoint import ModelCheckpoint
    from stages.rebuild import build_model
    from stages.tasks import BUILTIN_TASKS, Metric, Task, load_task

# Canonical order: a pipeline lists a subsequence of these.
PIPELINE_ORDER: tuple[str, ...] = (
    "teacher",
    "distill",
    "prune",
    "finetune",
    "lowrank",
    "lora",
    "quantize",
    "export",
)

_LAZY = {
    "StageInput": "stages.base",
    "StageOutput": "stages.base",
    "StageSpec": "stages.base",
    "ModelCheckpoint": "stages.checkpoint",
    "build_model": "stages.rebuild",
    "BUILTIN_TASKS": "stages.tasks",
    "Task": "stages.tasks",
    "Metric": "stages.tasks",
    "load_task": "stages.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stages' has no attribute {name!r}")


@functools.cache
def stage_registry() -> dict[str, StageSpec[Any]]:
    """{stage name: StageSpec} in pipeline order."""
    return {name: importlib.import_module(f"stages.{name}").SPEC for name in PIPELINE_ORDER}


def get_stage(name: str) -> StageSpec[Any]:
    if name not in PIPELINE_ORDER:
        raise SqueezerayError(
            f"stage {name!r} does not exist; accepted: {', '.join(PIPELINE_ORDER)}"
        )
    return importlib.import_module(f"stages.{name}").SPEC  # type: ignore[no-any-return]


__all__ = [
    "BUILTIN_TASKS",
    "PIPELINE_ORDER",
    "Metric",
    "ModelCheckpoint",
    "SqueezerayError",
    "StageInput",
    "StageOutput",
    "StageSpec",
    "Task",
    "build_model",
    "get_stage",
    "load_task",
    "stage_registry",
]
