"""Float dtypes other than float32 (issue 21 item 9): a bf16/fp16/float64 model is refused when
the task loads (before Ray) with the rule and the fix; fp16/bf16 inputs are cast to float32 as
float64 inputs always were.

Before, such a model passed `validate` and failed per stage with errors about other causes
("quantized no weight", "merge check failed", "expected scalar type Float")."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput
from stages.batches import as_inputs
from stages.errors import SqueezerayError
from stages.tasks import Task, check_task
from stages.teacher import SPEC as TEACHER
from stages.teacher import TeacherParams


def _task(*, model_dtype: torch.dtype, input_dtype: torch.dtype = torch.float32) -> Task:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 3
    data = TensorDataset((torch.randn(40, 4, generator=g) + y[:, None]).to(input_dtype), y)

    def teacher() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).to(model_dtype)

    return Task("t", teacher, None, data, data, data, 3)


def bf16_teacher() -> Task:
    """The reported case: a bf16 model and bf16 data (importable as a user task)."""
    return _task(model_dtype=torch.bfloat16, input_dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_a_model_in_another_float_dtype_is_refused_with_the_rule(dtype: torch.dtype) -> None:
    name = str(dtype).replace("torch.", "")
    with pytest.raises(SqueezerayError) as info:
        check_task(_task(model_dtype=dtype, input_dtype=dtype), source="t")
    message = str(info.value)
    assert f"the teacher model has {name} weights (4 tensors, e.g. '0.weight')" in message
    assert "float32" in message and "model.float()" in message


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_half_and_double_inputs_reach_a_float32_model_as_float32(dtype: torch.dtype) -> None:
    assert as_inputs(torch.zeros(2, 3, dtype=dtype)).dtype == torch.float32
    task = _task(model_dtype=torch.float32, input_dtype=dtype)
    check_task(task, source="t")
    out = TEACHER.run(StageInput(task=task, parent=None), TeacherParams(epochs=1))
    assert out.metrics["val_accuracy"] > 0.0
