"""squeezeray's compression stages: pure PyTorch, no Ray.

Each stage module has one frozen params dataclass and one function, exposed as `SPEC` and
registered in `STAGES` in pipeline order. The Task contract lives in `stages.tasks`;
checkpoints in `stages.checkpoint`. Stage modules are imported on first use of `STAGES`, so
`import stages` stays light.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from stages.base import StageInput, StageOutput, StageSpec
from stages.checkpoint import ModelCheckpoint, build_model
from stages.errors import SqueezerayError
from stages.tasks import BUILTIN_TASKS, Task, load_task

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


@functools.cache
def stage_registry() -> dict[str, StageSpec[Any]]:
    """{stage name: StageSpec} in pipeline order."""
    specs = {}
    for name in PIPELINE_ORDER:
        module = importlib.import_module(f"stages.{name}")
        specs[name] = module.SPEC
    return specs


def get_stage(name: str) -> StageSpec[Any]:
    registry = stage_registry()
    if name not in registry:
        raise SqueezerayError(
            f"stage {name!r} does not exist; accepted: {', '.join(PIPELINE_ORDER)}"
        )
    return registry[name]


__all__ = [
    "BUILTIN_TASKS",
    "PIPELINE_ORDER",
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
