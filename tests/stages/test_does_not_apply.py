"""Stages on models they cannot change say so (issue 12 item 6): structured pruning.

(lowrank, LoRA and quantize: tests/stages/test_transformer.py.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.metrics import count_params
from stages.prune import PruneParams, prune
from stages.tasks import Task, load_task


def _task_of(factory: type[nn.Module] | object, name: str) -> Task:
    digits = load_task("digits")
    return Task(name, factory, factory, digits.train, digits.val, digits.test, 10)  # type: ignore[arg-type]


def _untrained(task: Task) -> ModelCheckpoint:
    torch.manual_seed(0)
    return ModelCheckpoint(
        task=task.name, state_dict=task.build("student").state_dict(), recipe={"arch": "student"}
    )


def test_structured_pruning_with_nothing_to_remove_is_an_error() -> None:
    task = _task_of(lambda: nn.Sequential(nn.Linear(64, 10)), "head-only")
    parent = _untrained(task)
    with pytest.raises(SqueezerayError, match=r"removed no channel.*Linear x1.*l1_unstructured"):
        prune(StageInput(task=task, parent=parent), PruneParams(method="structured", ratio=0.5))
    # Unstructured pruning still applies to the same layer.
    out = prune(StageInput(task=task, parent=parent), PruneParams(method="l1_unstructured"))
    assert count_params(out.checkpoint)[1] < count_params(parent)[1]
