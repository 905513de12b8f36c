"""Stage `distill`: train the task's student from the teacher's soft targets (Hinton et al.).

loss = alpha * CE(student, y) + (1 - alpha) * KL(teacher_T || student_T) * T^2, with both
softmaxes at temperature T. alpha = 1 is the plain-CE student, the baseline KD is judged by.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.base import StageInput, StageOutput, StageSpec, check_int, check_range
from stages.checkpoint import build_model
from stages.device import resolve_device
from stages.errors import SqueezerayError
from stages.training import fit, trained_output


@dataclass(frozen=True)
class DistillParams:
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label CE; 1 = no distillation
    epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_range("distill.temperature", self.temperature, low=0.0, low_inclusive=False)
        check_range("distill.alpha", self.alpha, low=0.0, high=1.0)
        check_int("distill.epochs", self.epochs, low=1)
        check_range("distill.lr", self.lr, low=0.0, low_inclusive=False)
        check_int("distill.batch_size", self.batch_size, low=1)


def distill(inp: StageInput, params: DistillParams) -> StageOutput:
    """A fresh `task.student()` trained against the teacher in `inp.parent` (or `inp.teacher`)."""
    task = inp.task
    teacher_ckpt = inp.parent if inp.parent is not None else inp.teacher
    if teacher_ckpt is None:
        raise SqueezerayError(
            "stage 'distill' needs a teacher checkpoint (its parent, or StageInput.teacher); "
            "put 'teacher' before 'distill' in the pipeline"
        )
    device = resolve_device(inp.device)
    # alpha = 1 never reads the teacher's logits: skip its forward passes entirely.
    teacher = build_model(task, teacher_ckpt) if params.alpha < 1.0 else None
    torch.manual_seed(inp.seed)  # the student's initial weights
    student = task.build("student")
    stats = fit(
        student,
        task.train,
        task.val,
        epochs=params.epochs,
        lr=params.lr,
        batch_size=params.batch_size,
        device=device,
        seed=inp.seed,
        teacher=teacher,
        temperature=params.temperature,
        alpha=params.alpha,
    )
    return trained_output(task, student, stats, arch="student")


SPEC = StageSpec(name="distill", params=DistillParams, run=distill)
