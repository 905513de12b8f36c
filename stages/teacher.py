"""Stage `teacher`: train the task's teacher model with cross-entropy (seed 000's train_ce).

AdamW with weight decay; the weights of the best validation epoch are restored at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.base import StageInput, StageOutput, StageSpec, check_int, check_range
from stages.device import resolve_device
from stages.training import fit, trained_output


@dataclass(frozen=True)
class TeacherParams:
    epochs: int = 40  # digits [256,128] reaches ~0.97 in 40 epochs (1-3 s on a laptop CPU)
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        check_int("teacher.epochs", self.epochs, low=1)
        check_range("teacher.lr", self.lr, low=0.0, low_inclusive=False)
        check_int("teacher.batch_size", self.batch_size, low=1)
        check_range("teacher.weight_decay", self.weight_decay, low=0.0)


def train_teacher(inp: StageInput, params: TeacherParams) -> StageOutput:
    """A freshly initialised `task.teacher()` trained with CE; `inp.parent` is ignored."""
    task = inp.task
    device = resolve_device(inp.device)
    torch.manual_seed(inp.seed)  # the initial weights
    model = task.build("teacher")
    stats = fit(
        model,
        task.train,
        task.val,
        epochs=params.epochs,
        lr=params.lr,
        batch_size=params.batch_size,
        device=device,
        seed=inp.seed,
        weight_decay=params.weight_decay,
    )
    return trained_output(task, model, stats, arch="teacher")


SPEC = StageSpec(name="teacher", params=TeacherParams, run=train_teacher, needs_parent=False)
