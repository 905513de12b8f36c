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
        # one-hot int64 rows: said as such, with the fix (new user F18)
        (
            torch.nn.functional.one_hot(torch.arange(12) % 3, 3),
            ["a vector of 3 values = num_classes, one-hot", "y.argmax()"],
        ),
    ],
)
def test_labels_that_are_not_classes_are_refused(labels: torch.Tensor, words: list[str]) -> None:
    with pytest.raises(SqueezerayError) as info:
        check_task(_task(labels), source="t")
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "labels",
    [
        (torch.arange(12 * 16) % 3).reshape(12, 16),  # a class per token (N, 16)
        torch.where(torch.arange(12 * 16) % 5 == 0, -100, torch.arange(12 * 16) % 3).reshape(
            12, 16
        ),  # padding positions at the ignore index, as Hugging Face token labels
        (torch.arange(12 * 4 * 4) % 3).reshape(12, 4, 4),  # a class per pixel
    ],
)
def test_per_position_labels_are_refused_as_unsupported_not_as_one_hot(
    labels: torch.Tensor,
) -> None:
    """Token-classification labels (N, 16) with num_classes=3 were called "one-hot or
    per-class scores" with the advice y.argmax(), which trains a meaningless task (new user 6
    F3): the message says per-position labels are not supported and names the shape."""
    with pytest.raises(SqueezerayError) as info:
        check_task(_task(labels), source="t")
    message = str(info.value)
    shape = tuple(labels.shape[1:])
    assert f"a label of shape {shape} per sample" in message, message
    assert "per-position labels are not supported" in message
    assert "one class per sample" in message
    assert "one-hot" not in message and "argmax" not in message


def test_a_float_vector_longer_than_num_classes_is_not_called_one_hot() -> None:
    with pytest.raises(SqueezerayError) as info:
        check_task(_task(torch.rand(12, 5)), source="t")
    message = str(info.value)
    assert "shape (5,): one value per sample is expected" in message, message
    assert "one-hot" not in message


def test_a_model_instance_instead_of_a_factory_names_the_fix() -> None:
    with pytest.raises(SqueezerayError) as info:
        check_task(_task(teacher=nn.Linear(4, 3)), source="t")
    message = str(info.value)
    assert "teacher is a model instance (Linear)" in message
    assert "teacher=lambda: Linear(...)" in message


@pytest.mark.parametrize(
    "form",
    ["int32 tensor", "numpy int32", "shape (1,) per sample", "int16 column (B, 1)"],
)
def test_integer_labels_of_any_integer_type_and_a_one_value_shape_train_and_score(
    form: str,
) -> None:
    """Labels a user writes as int32 (a numpy/pandas column), np.int32 scalars or
    `torch.tensor([label])` passed the checks, then crashed every training step in Ray
    ("expected target dtype to be Long", "0D or 1D target tensor expected"; new user
    F16/F17), and a (B, 1) column scored accuracy by broadcasting (B,) against (B, 1). The one
    loader rule hands every stage int64 classes of shape (B,)."""
    from stages.loading import batches
    from stages.training import accuracy, fit

    torch.manual_seed(0)
    n = 96
    x = torch.randn(n, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 learnable classes
    data: object
    if form == "int32 tensor":
        data = TensorDataset(x, y.int())
    elif form == "numpy int32":
        data = [(x[i], np.int32(y[i])) for i in range(n)]
    elif form == "shape (1,) per sample":
        data = [(x[i], torch.tensor([int(y[i])])) for i in range(n)]
    else:
        data = TensorDataset(x, y.to(torch.int16).reshape(n, 1))
    task = Task("t", lambda: nn.Linear(4, 3), lambda: nn.Linear(4, 3), data, data, data, 3)
    check_task(task, source="t")
    _, targets = next(iter(batches(data, batch_size=8)))  # type: ignore[arg-type]
    assert targets.dtype == torch.int64 and targets.shape == (8,)
    model = nn.Linear(4, 3)
    out = fit(
        model, data, data, epochs=3, lr=0.05, batch_size=16, device=torch.device("cpu"), seed=0,
    )  # type: ignore[arg-type]  # fmt: skip
    expected = float((model(x).argmax(1) == y).float().mean())
    assert out["val_accuracy"] == pytest.approx(expected)
    assert accuracy(model, data, device=torch.device("cpu")) == pytest.approx(expected)
