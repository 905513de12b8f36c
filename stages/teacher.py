"""Stage `teacher`: train the task's teacher model with cross-entropy (seed 000's train_ce),
or take it as given.

AdamW with weight decay; the weights of the best validation epoch are restored at the end.

`epochs = 0` uses `task.teacher()` exactly as the factory returns it (a model the user trained
elsewhere, e.g. one that loads a state dict with `weights_only=True`): no optimizer step, no
BatchNorm statistics update; the stage only evaluates it (val accuracy) and checkpoints it, so
the baseline row is the user's own model. New weights give new stage keys because the task
fingerprint in the teacher's key hashes the weights the factory returns (`stages.fingerprint`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from stages.base import StageInput, StageOutput, StageSpec, check_int, check_range
from stages.checkpoint import from_model
from stages.errors import SqueezerayError
from stages.masks import param_counts
from stages.tasks import Task
from stages.training import accuracy, fit, trained_output
from stages.weightfiles import load_weights


@dataclass(frozen=True)
class TeacherParams:
    epochs: int = 40  # digits [256,128] reaches ~0.97 in 40 epochs; 0 = use as given
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    # Weights loaded into task.teacher() before anything else (`stages.weightfiles`: a
    # torch.save state_dict read with weights_only=True, a .safetensors file or a
    # save_pretrained directory); "" = none. `squeezeray sweep --teacher-weights PATH` sets
    # it (absolute) and `weights_sha256` from its bytes, so new weights get new stage keys
    # and weights changed since the sweep started are refused.
    weights: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        check_int("teacher.epochs", self.epochs, low=0)
        if not isinstance(self.weights, str) or not isinstance(self.weights_sha256, str):
            raise SqueezerayError(
                f"teacher.weights={self.weights!r}, teacher.weights_sha256="
                f"{self.weights_sha256!r}: accepted: strings (a file path, its sha256 hex)"
            )
        check_range("teacher.lr", self.lr, low=0.0, low_inclusive=False)
        check_int("teacher.batch_size", self.batch_size, low=1)
        check_range("teacher.weight_decay", self.weight_decay, low=0.0)


def train_teacher(inp: StageInput, params: TeacherParams) -> StageOutput:
    """A freshly initialised `task.teacher()` trained with CE; `inp.parent` is ignored.

    With `params.epochs == 0` the teacher is used as given (see the module docstring).
    """
    task = inp.task
    device = inp.torch_device
    torch.manual_seed(inp.seed)  # the initial weights
    # the user's weights fit the factory's own module (a GPT-2 Conv1D layout, say): load them
    # before Task.build swaps Conv1D for Linear
    model = task.build(
        "teacher",
        prepare=(
            functools.partial(load_weights, path=params.weights, sha256=params.weights_sha256)
            if params.weights
            else None
        ),
    )
    if params.epochs == 0:
        return pretrained_output(task, model, device=device)
    stats = fit(
        model,
        task.train,
        task.val,
        epochs=params.epochs,
        lr=params.lr,
        batch_size=params.batch_size,
        num_workers=task.num_workers,
        device=device,
        seed=inp.seed,
        weight_decay=params.weight_decay,
    )
    return trained_output(task, model, stats, arch="teacher")


def pretrained_output(task: Task, model: nn.Module, *, device: torch.device) -> StageOutput:
    """The teacher exactly as given: evaluated (val accuracy, eval mode) and checkpointed."""
    model.eval().to(device)
    total, _ = param_counts(model)
    return StageOutput(
        checkpoint=from_model(task, model, {"arch": "teacher"}),
        metrics={
            "val_accuracy": accuracy(model, task.val, device=device, num_workers=task.num_workers),
            "params_total": float(total),
        },
        model=model,
    )


SPEC = StageSpec(
    name="teacher",
    params=TeacherParams,
    run=train_teacher,
    needs_parent=False,
    metrics=("val_accuracy", "params_total"),
)
