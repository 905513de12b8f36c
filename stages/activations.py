"""The activation memory of training a model: what a stage task holds beyond weight copies.

A transformer's training step keeps every layer's activations for the backward pass (attention
scores, FFN inputs, norms) and at batch 64 of 32 tokens those outweigh a 30M-parameter model's
weights; a count of weight copies alone under-sizes the task's memory request. This module
measures it directly: autograd's saved tensors of one training forward pass
(`torch.autograd.graph.saved_tensors_hooks`, PyTorch's hook for exactly what backward keeps),
each storage counted once and the model's own parameters left out (they are weight copies,
counted elsewhere).
"""

from __future__ import annotations

import torch
from torch import nn

from stages.batches import Inputs, as_inputs, forward_logits, tensors
from stages.loading import batches
from stages.rebuild import skipped_random_init
from stages.tasks import Task


def training_activation_bytes(model: nn.Module, x: Inputs) -> int:
    """Bytes of the tensors autograd saves for backward in one training-mode forward pass of
    `model` on the batch `x` (each storage once; parameters and the inputs excluded), plus the
    logits. The model's weights' values do not matter (only shapes), so a model built with
    skipped initialisation measures the same. `model` is left in eval mode with no grads.

    Cost: one forward pass with autograd on; nothing is kept.
    """
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inputs = {t.untyped_storage().data_ptr() for t in tensors(x)}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in weights and ptr not in inputs:
            saved[ptr] = max(saved.get(ptr, 0), storage.nbytes())
        # Nothing is kept: no backward runs. Returning `t` made the graph hold its own output
        # (tensor -> grad_fn -> packed tensor), a cycle through C++ that Python's collector
        # cannot see: the driver kept a whole training step's activations and the model
        # (the 30M BERT's pre-flight: ~760 MiB) for the rest of the sweep.
        return None

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("training_activation_bytes measures a forward pass; no backward")

    model.train()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            logits = forward_logits(model, x)
        return sum(saved.values()) + logits.numel() * logits.element_size()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


def task_activation_bytes(task: Task, batch_size: int) -> int:
    """`training_activation_bytes` of the task's teacher on a training batch of `batch_size`
    samples (the first ones; a split smaller than the batch is scaled up linearly). The
    teacher is built without drawing random weights (`skipped_random_init`): only the shapes
    matter. The teacher is the task's larger model; a student trains on smaller activations."""
    with skipped_random_init():
        model = task.build("teacher")
    x, y = next(iter(batches(task.train, batch_size=batch_size)))
    got = len(y)
    return training_activation_bytes(model, as_inputs(x)) * batch_size // max(got, 1)


__all__ = ["task_activation_bytes", "training_activation_bytes"]
