"""Zero masks of unstructured pruning: find them in a model, re-apply them, measure them.

A pruned checkpoint carries its masks implicitly, as exact zeros in the weights of its
prunable layers (recipe `"masked": True`); there are no `weight_mask` buffers to ship. Later
stages that train (finetune, lora) read the masks back with `zero_masks` and call
`apply_masks` after every optimizer step so that every pruned weight stays exactly zero.

Prunable layers are every Linear and Conv{1,2,3}d, the final classifier included; biases and
normalisation parameters are never pruned (they are few, and zeroing a bias shifts an
activation instead of removing a connection).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.rebuild import build_model
from stages.tasks import Task

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# {module name: bool tensor shaped like that module's weight; True = kept, False = pruned}
Masks = dict[str, torch.Tensor]


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear/Conv layer with a weight, in registration order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    ]


def layer_weight(module: nn.Module) -> torch.Tensor:
    """`module.weight`, typed as a tensor."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def zero_masks(model: nn.Module) -> Masks:
    """The keep-masks of the model's prunable weights: `weight != 0` (so -0.0 counts as pruned)."""
    return {name: (layer_weight(module).detach() != 0) for name, module in prunable_layers(model)}


def checkpoint_masks(task: Task, ckpt: ModelCheckpoint) -> Masks:
    """The keep-masks of a checkpoint's prunable weights (rebuilt with `build_model`, on CPU)."""
    return zero_masks(build_model(task, ckpt))


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Set every masked-out weight to exactly +0.0, in place.

    `masked_fill_` rather than multiplying: `w * 0` gives -0.0 for negative w (a different byte
    pattern, so worse compression) and NaN for a non-finite w.
    """
    for name, mask in masks.items():
        weight = layer_weight(model.get_submodule(name))
        if tuple(weight.shape) != tuple(mask.shape):
            raise SqueezerayError(
                f"mask for layer {name!r} has shape {tuple(mask.shape)} but the weight has "
                f"{tuple(weight.shape)}; masks must be taken from this model after its last "
                "structural change (a bug in the calling stage)"
            )
        weight.masked_fill_(~mask.to(weight.device), 0.0)


def keep_masks(model: nn.Module, masks: Masks) -> Callable[[], None]:
    """An `after_step` callback for `stages.training.fit` that re-applies `masks`."""
    on_device = {name: _mask_to(model, name, mask) for name, mask in masks.items()}

    def after_step() -> None:
        apply_masks(model, on_device)

    return after_step


def _mask_to(model: nn.Module, name: str, mask: torch.Tensor) -> torch.Tensor:
    return mask.to(layer_weight(model.get_submodule(name)).device)


def weight_counts(model: nn.Module) -> tuple[int, int]:
    """(number of prunable weights, how many of them are exactly zero)."""
    total = zeros = 0
    for _, module in prunable_layers(model):
        weight = layer_weight(module)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return total, zeros


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable weights, in [0, 1]."""
    total, zeros = weight_counts(model)
    return zeros / total if total else 0.0


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters) of a model (biases and norms included)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int((p != 0).sum())
    return total, nonzero
