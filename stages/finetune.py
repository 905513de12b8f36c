"""Stage `finetune`: recover accuracy after pruning, with CE or distillation from the teacher.

Every weight that is zero in a masked parent (recipe `"masked": True`) stays exactly zero: the
masks are re-applied after every optimizer step (`stages.masks.keep_masks`). The recipe is
kept, so a structurally pruned parent keeps its smaller shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.base import StageInput, StageOutput, StageSpec, check_choice, check_int, check_range
from stages.checkpoint import from_model
from stages.masks import keep_masks, param_counts, sparsity, zero_masks
from stages.rebuild import build_model
from stages.training import accuracy, fit

MODES = ("ce", "kd")


@dataclass(frozen=True)
class FinetuneParams:
    epochs: int = 15  # at most (best validation epoch, start included); 0 = no-op copy
    lr: float = 1e-3  # AdamW; a pretrained transformer wants ~1e-4 or less
    batch_size: int = 64
    mode: str = "kd"  # kd distils from StageInput.teacher
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label CE in kd mode

    def __post_init__(self) -> None:
        check_int("finetune.epochs", self.epochs, low=0)
        check_range("finetune.lr", self.lr, low=0.0, low_inclusive=False)
        check_int("finetune.batch_size", self.batch_size, low=1)
        check_choice("finetune.mode", self.mode, MODES)
        check_range("finetune.temperature", self.temperature, low=0.0, low_inclusive=False)
        check_range("finetune.alpha", self.alpha, low=0.0, high=1.0)


def finetune(inp: StageInput, params: FinetuneParams) -> StageOutput:
    """Train a copy of `inp.parent` for `epochs` epochs, keeping its pruned zeros."""
    task = inp.task
    parent = inp.require_parent()
    device = inp.torch_device
    torch.manual_seed(inp.seed)
    model = build_model(task, parent).to(device)
    metrics: dict[str, float] = {}
    if params.epochs > 0:
        masked = bool(parent.recipe.get("masked", False))
        teacher = (  # forward only: it shares its checkpoint's tensors
            build_model(task, inp.require_teacher(), share_weights=True)
            if params.mode == "kd"
            else None
        )
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
            teacher=teacher,
            temperature=params.temperature,
            alpha=params.alpha,
            after_step=keep_masks(model, zero_masks(model)) if masked else None,
        )
        metrics["train_loss"] = stats["train_loss"]
    model.eval()
    total, nonzero = param_counts(model)
    metrics.update(
        val_accuracy=accuracy(model, task.val, device=device, num_workers=task.num_workers),
        sparsity=sparsity(model),
        params_total=float(total),
        params_nonzero=float(nonzero),
    )
    return StageOutput(
        checkpoint=from_model(task, model, parent.recipe), metrics=metrics, model=model
    )


def _reads_teacher(params: FinetuneParams) -> str | None:
    return "finetune.mode='kd'" if params.mode == "kd" and params.epochs > 0 else None


SPEC = StageSpec(
    name="finetune",
    params=FinetuneParams,
    run=finetune,
    needs_teacher=_reads_teacher,
    teacher_fix="accepted: a pipeline with a 'teacher' stage, or finetune.mode='ce'",
    metrics=("val_accuracy", "sparsity", "params_total", "params_nonzero"),
)
