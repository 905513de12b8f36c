"""Stage `distill`: train the task's student from the teacher's soft targets (Hinton et al.).

loss = alpha * CE(student, y) + (1 - alpha) * KL(teacher_T || student_T) * T^2, with both
softmaxes at temperature T. alpha = 1 is the plain-CE student, the baseline KD is judged by.

The student is a fresh `task.student()`; a task whose `student` is None gets one made from the
teacher, prune-then-distill as in Minitron (Muralidharan et al., 2024): a copy of the trained
teacher structurally pruned with torch-pruning (L2 group magnitude, the prune stage's
`structured` method) to keep `student_ratio` of the neurons/channels of every layer but the
classifier, then distilled from the teacher like any student. Its checkpoint rebuilds from the
teacher factory (recipe `arch: teacher`) by replaying the recorded pruning (recipe `pruned`,
`stages.surgery`). `student_ratio` is used
only by such tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stages.base import StageInput, StageOutput, StageSpec, check_int, check_range
from stages.checkpoint import ModelCheckpoint
from stages.prune import PruneParams, prune_module
from stages.rebuild import build_model
from stages.surgery import PruningHistory, concat_histories
from stages.tasks import Task
from stages.training import fit, trained_output


@dataclass(frozen=True)
class DistillParams:
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label CE; 1 = no distillation
    epochs: int = 60  # at most: the best validation epoch is kept, the start included
    lr: float = 3e-3  # AdamW; for small models trained here; a pretrained transformer ~1e-4
    batch_size: int = 64
    student_ratio: float = 0.5  # task without a student: the teacher's width kept, in (0, 1]

    def __post_init__(self) -> None:
        check_range("distill.temperature", self.temperature, low=0.0, low_inclusive=False)
        check_range("distill.alpha", self.alpha, low=0.0, high=1.0)
        check_int("distill.epochs", self.epochs, low=1)
        check_range("distill.lr", self.lr, low=0.0, low_inclusive=False)
        check_int("distill.batch_size", self.batch_size, low=1)
        check_range(
            "distill.student_ratio", self.student_ratio, low=0.0, high=1.0, low_inclusive=False
        )


def distill(inp: StageInput, params: DistillParams) -> StageOutput:
    """A fresh `task.student()` (or, when the task has none, the teacher pruned to
    `student_ratio`) trained against the teacher in `inp.parent` (the runner puts
    `inp.teacher` there when there is no parent: `SPEC.teacher_as_parent`)."""
    task = inp.task
    teacher_ckpt = inp.require_parent()
    device = inp.torch_device
    # alpha = 1 never reads the teacher's logits: skip its forward passes entirely. The
    # teacher only runs forward: it shares its checkpoint's tensors (no second copy).
    teacher = build_model(task, teacher_ckpt, share_weights=True) if params.alpha < 1.0 else None
    torch.manual_seed(inp.seed)  # the student's initial weights
    pruned: PruningHistory = []
    if task.student is None:
        student, pruned = student_from_teacher(
            task, teacher_ckpt, params.student_ratio, seed=inp.seed
        )
        arch = "teacher"  # rebuilt from the teacher factory, its pruning replayed
    else:
        student, arch = task.build("student"), "student"
    stats = fit(
        student,
        task.train,
        task.val,
        epochs=params.epochs,
        lr=params.lr,
        batch_size=params.batch_size,
        num_workers=task.num_workers,
        device=device,
        seed=inp.seed,
        teacher=teacher,
        temperature=params.temperature,
        alpha=params.alpha,
    )
    return trained_output(task, student, stats, arch=arch, pruned=pruned)


# The advice of a refusal of the student made from the teacher: it is cut by structured
# pruning whatever prune.method is, so an unstructured prune.method does not help
STUDENT_RATIO_FIX = (
    "set distill.student_ratio: 1 (the student starts as a copy of the teacher) or give the "
    "task its own student (Task(student=...))"
)


def student_from_teacher(
    task: Task, teacher: ModelCheckpoint, ratio: float, *, seed: int
) -> tuple[nn.Module, PruningHistory]:
    """The trained teacher structurally pruned to keep `ratio` of every layer's width, and the
    pruning history that rebuilds its structure from the teacher factory (`stages.surgery`).

    ratio 1 keeps the teacher's shape (distillation then fine-tunes a copy of the teacher).
    Raises SqueezerayError when the model has no layer torch-pruning can narrow.
    """
    model = build_model(task, teacher)
    history: PruningHistory = []
    if ratio < 1.0:
        cpu = torch.device("cpu")
        params = PruneParams(ratio=1.0 - ratio, method="structured", steps=1)
        what = f"distill.student_ratio={ratio:g} (the student made from the teacher)"
        history = prune_module(
            model, task, params, device=cpu, seed=seed, what=what, fix=STUDENT_RATIO_FIX
        )
    return model, concat_histories(teacher.recipe.get("pruned"), history)


SPEC = StageSpec(
    name="distill",
    params=DistillParams,
    run=distill,
    parent_fix="put 'teacher' before 'distill' in the pipeline",
    teacher_as_parent=True,
    metrics=("val_accuracy", "train_loss", "params_total"),
)
