"""squeezeray's compression stages: pure PyTorch, no Ray.

Each stage module has one frozen params dataclass and one function, registered in `STAGES` in
pipeline order. The Task contract lives in `stages.tasks`; checkpoints in `stages.checkpoint`.
"""

from __future__ import annotations

from typing import Any

from stages import distill, export, finetune, lora, lowrank, prune, quantize, teacher
from stages.base import StageInput, StageOutput, StageSpec
from stages.checkpoint import ModelCheckpoint, build_model
from stages.errors import SqueezerayError
from stages.tasks import BUILTIN_TASKS, Task, load_task

# Canonical order: a pipeline lists a subsequence of these.
STAGES: dict[str, StageSpec[Any]] = {
    spec.name: spec
    for spec in (
        teacher.SPEC,
        distill.SPEC,
        prune.SPEC,
        finetune.SPEC,
        lowrank.SPEC,
        lora.SPEC,
        quantize.SPEC,
        export.SPEC,
    )
}
PIPELINE_ORDER: tuple[str, ...] = tuple(STAGES)

__all__ = [
    "BUILTIN_TASKS",
    "PIPELINE_ORDER",
    "STAGES",
    "ModelCheckpoint",
    "SqueezerayError",
    "StageInput",
    "StageOutput",
    "StageSpec",
    "Task",
    "build_model",
    "load_task",
]
