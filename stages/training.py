"""Shared training and evaluation loops (seed 000's train_ce / kd_train_student, generalised)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from stages.base import StageOutput
from stages.batches import Inputs, as_inputs, forward_logits, to_device
from stages.batches import batch_size as batch_size_of
from stages.batchnorm import normalises_over_batch
from stages.checkpoint import from_model
from stages.errors import SqueezerayError
from stages.loading import batches
from stages.masks import param_counts
from stages.progress import training_step
from stages.tasks import Task


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * CE(student, y) + (1 - alpha) * KL(softmax(t/T) || softmax(s/T)) * T^2.

    The T^2 factor keeps the soft-target gradients on the same scale as the hard ones
    (Hinton et al.). alpha = 1 is plain cross-entropy.
    """
    hard = F.cross_entropy(student_logits, labels)
    if alpha >= 1.0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    ) * (temperature**2)
    return alpha * hard + (1.0 - alpha) * soft


@torch.no_grad()
def accuracy(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 512,
    num_workers: int = 0,
) -> float:
    """Top-1 accuracy in [0, 1] of an eager model on a dataset."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches(dataset, batch_size=batch_size, num_workers=num_workers):
        pred = forward_logits(model, to_device(as_inputs(x), device)).argmax(dim=1)
        correct += int((pred.cpu() == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, x: Inputs) -> torch.Tensor:
    return forward_logits(teacher, x)


def fit(
    model: nn.Module,
    train: Dataset,
    val: Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    weight_decay: float = 0.0,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 1.0,
    params: list[nn.Parameter] | None = None,
    after_step: Callable[[], None] | None = None,
    restore_best: bool = True,
    start_is_candidate: bool = True,
    num_workers: int = 0,
) -> dict[str, float]:
    """Train `model` in place with AdamW; return {"val_accuracy", "train_loss", "epochs"}.

    With a `teacher`, the loss is `kd_loss(T, alpha)`; without one, plain CE. `params` limits
    what is trained (LoRA trains only adapters); `after_step` runs after every optimizer step
    (re-applying pruning masks). With `restore_best`, the weights of the best validation epoch
    are restored at the end (the seeds' early best-val checkpoint), the weights it started from
    included: training that only lowers validation accuracy (a learning rate too high for a
    pretrained transformer took a ViT copied from its teacher from 1.00 to 0.10 in one epoch)
    leaves the model as it came, and `epochs` is a maximum (`start_is_candidate=False`: a
    model whose start cannot be kept, QAT's observers that have seen no data). `num_workers`:
    DataLoader worker processes reading the datasets (`Task.num_workers`). Raises
    SqueezerayError on a non-finite loss rather than training on NaNs (naming the inputs when
    they hold the NaN), and on a label outside the model's classes.

    A last batch of one sample is dropped when the model normalises over the batch (a BatchNorm
    module or an exported graph's batch-norm op that trains, `drops_last_batch`): batch
    statistics of one value per channel are undefined (eager torch raises "Expected more than 1
    value per channel when training"; an exported graph writes NaN into the running variance).
    For the same reason `batch_size=1` on such a model raises SqueezerayError.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    model.train()
    _check_batch_size(model, batch_size)
    loader = batches(
        train,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        drop_last=drops_last_batch(model, _length(train), batch_size),
        num_workers=num_workers,
    )
    if teacher is not None:
        teacher.to(device).eval()
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    best_acc, best_state, start_best = -1.0, None, False
    if restore_best and start_is_candidate and epochs > 0:  # the start is a candidate too
        best_acc = accuracy(model, val, device=device, num_workers=num_workers)
        best_state, start_best = copy.deepcopy(model.state_dict()), True
    last_loss = float("nan")
    n_batches = _length(loader)  # None: an iterable dataset of unknown length
    for _epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        training_step(_epoch + 1, epochs, 0, n_batches)
        for step, (x, y) in enumerate(loader, start=1):
            x, y = to_device(as_inputs(x), device), y.to(device)
            logits = forward_logits(model, x)
            _check_labels(y, logits)
            if teacher is not None:
                loss = kd_loss(
                    logits, _teacher_logits(teacher, x), y, temperature=temperature, alpha=alpha
                )
            else:
                loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise _diverged(loss, x, epoch=_epoch + 1, lr=lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += loss.item() * int(y.numel())
            n += int(y.numel())
            training_step(_epoch + 1, epochs, step, n_batches)
        last_loss = total / max(n, 1)
        if restore_best:
            acc = accuracy(model, val, device=device, num_workers=num_workers)
            # the start keeps its place only when strictly better: on a tie training wins
            if acc > best_acc or (start_best and acc >= best_acc):
                best_state = None  # freed before the new copy: one best copy at a time
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
                start_best = False
    # The last step's gradients and AdamW's two moments are not part of the model: freed
    # before the stage serialises and rebuilds it (3 model copies otherwise held to the end).
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
        del best_state
    model.eval()
    return {
        "val_accuracy": accuracy(model, val, device=device, num_workers=num_workers),
        "train_loss": last_loss,
        "epochs": float(epochs),
    }


def _length(sized: Any) -> int | None:
    """len(sized) (a dataset's samples, a DataLoader's batches), or None for one without a
    length (a stream)."""
    try:
        return len(sized)
    except TypeError:
        return None


def drops_last_batch(model: nn.Module, size: int | None, batch_size: int) -> bool:
    """Whether training `model` on `size` samples in batches of `batch_size` drops the last
    batch: only when it would hold one sample and the model normalises over the batch
    (`stages.batchnorm.normalises_over_batch`: a BatchNorm module in training mode, or a
    training batch-norm op of an exported graph, as PT2E QAT trains). One value per channel has
    no batch variance. One sample in all is left to fail: dropping it would leave nothing to
    train on; a dataset without a length (a stream) is left as it is."""
    if size is None or size % batch_size != 1 or size == 1:
        return False
    return normalises_over_batch(model)


def _check_batch_size(model: nn.Module, batch_size: int) -> None:
    """Batches of one sample on a model that normalises over the batch (in the mode it trains
    in): every step would fail (eager BatchNorm) or write NaN statistics (an exported graph)."""
    if batch_size < 2 and normalises_over_batch(model):
        raise SqueezerayError(
            f"batch_size={batch_size} trains a model with BatchNorm in training mode, which "
            "needs more than one sample per batch (batch statistics of one sample are "
            "undefined); set the stage's batch_size to 2 or more"
        )


def _check_labels(y: torch.Tensor, logits: torch.Tensor) -> None:
    """A label outside the logits' classes: cross-entropy would raise a bare IndexError (the
    whole-split check before a sweep, `stages.datacheck`, normally catches it first)."""
    classes = int(logits.shape[-1])
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        bad = y[(y < 0) | (y >= classes)]
        raise SqueezerayError(
            f"a training label is {int(bad[0])}, outside [0, {classes}) (the model's "
            f"{classes} logits); labels are integer classes 0..{classes - 1}: map them "
            "(e.g. y - 1 for labels counted from 1) or set num_classes to cover them"
        )


def _diverged(loss: torch.Tensor, x: Inputs, *, epoch: int, lr: float) -> SqueezerayError:
    """The error for a non-finite loss: the inputs' NaN/inf when the batch has any (no
    learning rate fixes those), else a divergence."""
    from stages.datacheck import non_finite_rows

    rows = non_finite_rows(x, batch_size_of(x))
    if rows is not None and bool(rows.any()):
        return SqueezerayError(
            f"the loss is {loss.item()} at epoch {epoch} because {int(rows.sum())} samples of "
            "the batch have NaN or inf inputs; drop or impute those samples (e.g. "
            "torch.nan_to_num) before building the Task"
        )
    return SqueezerayError(
        f"training diverged: loss is {loss.item()} at epoch {epoch}; "
        f"lower the learning rate (lr={lr:g})"
    )


def trained_output(
    task: Task,
    model: nn.Module,
    stats: dict[str, float],
    *,
    arch: str,
    pruned: list[list[Any]] | None = None,
) -> StageOutput:
    """The StageOutput of a stage that trained a fresh `arch` model (`pruned`: the structured
    pruning history that made it from that factory's model, `stages.surgery`)."""
    total, _ = param_counts(model)
    recipe: dict[str, Any] = {"arch": arch}
    if pruned:
        recipe["pruned"] = pruned
    return StageOutput(
        checkpoint=from_model(task, model, recipe),
        metrics={
            "val_accuracy": stats["val_accuracy"],
            "train_loss": stats["train_loss"],
            "params_total": float(total),
        },
        model=model,
    )
