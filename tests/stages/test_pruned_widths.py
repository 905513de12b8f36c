"""Parameters or buffers that structured pruning leaves at the old width (issue 21 item 11) are
found by pruning the model once before any work, and named with the stage and the fix.

Before, `validate` passed such a model and `distill` (a student made from the teacher) or
`prune` (structured) failed in every trial with a bare size mismatch naming neither the
buffer nor pruning. Also importable as user tasks (`tests.stages.test_pruned_widths:<name>`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput
from stages.distill import SPEC as DISTILL
from stages.distill import DistillParams
from stages.errors import SqueezerayError
from stages.precheck import check_stages_apply
from stages.prune import SPEC as PRUNE
from stages.prune import PruneParams
from stages.runner import run_stage
from stages.tasks import Task
from stages.teacher import SPEC as TEACHER
from stages.teacher import TeacherParams


class Scaled(nn.Module):
    """A per-channel scale on the hidden layer: `h * self.scale` (the reported case)."""

    def __init__(self, *, as_parameter: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 3)
        scale = torch.linspace(0.5, 1.5, 16)
        if as_parameter:  # the fix: torch-pruning prunes a trainable nn.Parameter with its channels
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)) * self.scale)


def _task(*, as_parameter: bool = False, student: bool = False) -> Task:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    data = TensorDataset(torch.randn(60, 4, generator=g) + y[:, None].float(), y)
    return Task(
        "scaled",
        lambda: Scaled(as_parameter=as_parameter),
        (lambda: Scaled(as_parameter=as_parameter)) if student else None,
        data,
        data,
        data,
        3,
    )


def scaled_buffer() -> Task:
    return _task()


def scaled_parameter() -> Task:
    return _task(as_parameter=True)


def test_a_student_made_from_the_teacher_is_refused_naming_the_buffer() -> None:
    with pytest.raises(SqueezerayError) as info:
        check_stages_apply(_task(), ["teacher", "distill"], {})
    message = str(info.value)
    assert "distill.student_ratio=0.5 (the student made from the teacher)" in message, message
    assert "buffer 'scale' (16,) kept its width" in message
    assert "nn.Parameter" in message and "Task(student=...)" in message


def test_structured_pruning_is_refused_at_the_largest_reachable_ratio() -> None:
    values = {"prune.method": ["l1_unstructured", "structured"], "prune.ratio": [0.0, 0.9]}
    with pytest.raises(SqueezerayError) as info:
        check_stages_apply(_task(student=True), ["teacher", "distill", "prune"], values)
    message = str(info.value)
    assert "prune.method='structured' prune.ratio=0.9 on the student model" in message, message
    assert "buffer 'scale'" in message and "unstructured prune.method" in message


def test_unstructured_pruning_and_the_fix_pass() -> None:
    unstructured = {"prune.method": ["l1_unstructured", "global"]}
    check_stages_apply(_task(student=True), ["teacher", "distill", "prune"], unstructured)
    fixed = _task(as_parameter=True)
    check_stages_apply(fixed, ["teacher", "distill", "prune"], {"prune.method": ["structured"]})


def test_the_stages_themselves_name_the_buffer() -> None:
    task = _task()
    teacher = TEACHER.run(StageInput(task=task, parent=None), TeacherParams(epochs=1))
    inp = StageInput(task=task, parent=teacher.checkpoint, teacher=teacher.checkpoint)
    with pytest.raises(SqueezerayError, match=r"distill.student_ratio=0.5 .*buffer 'scale'"):
        DISTILL.run(inp, DistillParams(epochs=1))
    with pytest.raises(SqueezerayError, match=r"prune.ratio=0.5: .*buffer 'scale'"):
        PRUNE.run(inp, PruneParams(ratio=0.5, method="structured"))


def test_the_fixed_model_prunes_and_rebuilds_from_its_checkpoint() -> None:
    task = _task(as_parameter=True)
    teacher = TEACHER.run(StageInput(task=task, parent=None), TeacherParams(epochs=1))
    inp = StageInput(task=task, parent=teacher.checkpoint, teacher=teacher.checkpoint)
    out, _ = run_stage(PRUNE, inp, PruneParams(ratio=0.5, method="structured"))
    assert out.checkpoint.state_dict["scale"].shape == (8,)


class FixedReshape(nn.Module):
    """A width written in forward (`view(-1, 4, 4)`): no tensor to name."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)).view(-1, 4, 4).flatten(1)
        return self.fc2(h)


def test_a_failure_with_no_tensor_to_name_is_left_to_the_stage() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 3
    data = TensorDataset(torch.randn(30, 4, generator=g), y)
    task = Task("reshape", FixedReshape, None, data, data, data, 3)
    check_stages_apply(task, ["teacher", "distill"], {})  # not refused up front
    teacher = TEACHER.run(StageInput(task=task, parent=None), TeacherParams(epochs=1))
    inp = StageInput(task=task, parent=teacher.checkpoint, teacher=teacher.checkpoint)
    with pytest.raises(SqueezerayError, match=r"a width written in forward"):
        DISTILL.run(inp, DistillParams(epochs=1))
