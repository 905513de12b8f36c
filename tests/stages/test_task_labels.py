"""Labels and model factories are checked when a task loads, before any Ray work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.errors import SqueezerayError
from stages.tasks import Task, check_task


def _task(y: torch.Tensor | None = None, teacher=None) -> Task:
    x = torch.randn(12, 4)
    y = torch.arange(12) % 3 if y is None else y
    data = TensorDataset(x, y)
    return Task(
        name="t",
        teacher=teacher or (lambda: nn.Linear(4, 3)),
        student=lambda: nn.Linear(4, 3),
        train=data,
        val=data,
        test=data,
        num_classes=3,
    )


def test_integer_labels_pass_as_tensors_ints_and_numpy_scalars() -> None:
    check_task(_task(), source="t")
    x = torch.randn(6, 4)
    ds = [(x[i], np.int64(i % 3)) for i in range(6)]
    task = Task("t", lambda: nn.Linear(4, 3), lambda: nn.Linear(4, 3), ds, ds, ds, 3)
    check_task(task, source="t")


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ((torch.arange(12) % 3).float(), ["train[0] has label float32", "integer classes"]),
        (torch.arange(12) % 3 + 3, ["train[0] has label 3, outside [0, 3)"]),
        ((torch.arange(12) % 2).bool(), ["label bool", "integer classes"]),
    ],
)
def test_labels_that_are_not_classes_are_refused(labels: torch.Tensor, words: list[str]) -> None:
    with pytest.raises(SqueezerayError) as info:
        check_task(_task(labels), source="t")
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_model_instance_instead_of_a_factory_names_the_fix() -> None:
    with pytest.raises(SqueezerayError) as info:
        check_task(_task(teacher=nn.Linear(4, 3)), source="t")
    message = str(info.value)
    assert "teacher is a model instance (Linear)" in message
    assert "teacher=lambda: Linear(...)" in message
