"""Zero masks of unstructured pruning: find them in a model, keep them, measure them.

A pruned checkpoint carries its masks implicitly, as exact zeros in the weights of its
prunable layers (recipe `"masked": True`); there are no `weight_mask` buffers to ship. A
weight's keep-mask is `keep_mask(weight)` (`weight != 0`: -0.0 counts as pruned).

Keeping pruned weights at exactly +0.0 while training is one helper, `keep_zeros`: an
`after_step` callback for `stages.training.fit` that `zero_pruned`s (weight, keep-mask) pairs.
Every stage that trains a masked model uses it: prune (gradual steps' fine-tuning) and
finetune and lowrank (the layers of the model, `keep_masks(model, zero_masks(model))`), and
quantize's QAT (the fake-quantized parameters matched to the parent's zeros). LoRA keeps the
zeros in its function instead (W + M ⊙ (s·B A), `stages.lora.LoRAUpdate`, with
M = `keep_mask(W)`), so its merge keeps them with no re-zeroing.

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
from stages.layers import is_linear
from stages.rebuild import build_model
from stages.tasks import Task

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# {module name: bool tensor shaped like that module's weight; True = kept, False = pruned}
Masks = dict[str, torch.Tensor]


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear/Conv layer with a weight, in registration order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if (is_linear(module) or isinstance(module, CONV_TYPES))
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    ]


def layer_weight(module: nn.Module) -> torch.Tensor:
    """`module.weight`, typed as a tensor."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def keep_mask(weight: torch.Tensor) -> torch.Tensor:
    """The keep-mask of one weight: a bool tensor of its shape, False where it is pruned (an
    exact zero, -0.0 included)."""
    return weight.detach() != 0


def zero_masks(model: nn.Module) -> Masks:
    """The keep-masks (`keep_mask`) of the model's prunable weights, by layer name."""
    return {name: keep_mask(layer_weight(module)) for name, module in prunable_layers(model)}


def checkpoint_masks(task: Task, ckpt: ModelCheckpoint) -> Masks:
    """The keep-masks of a checkpoint's prunable weights (rebuilt with `build_model`, on CPU)."""
    return zero_masks(build_model(task, ckpt))


# [(weight, bool keep-mask of its shape)]: weights of any module, matched by the caller
MaskedWeights = list[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def zero_pruned(weights: MaskedWeights) -> None:
    """Set every pruned weight (keep-mask False) to exactly +0.0, in place.

    `masked_fill_` rather than multiplying: `w * 0` gives -0.0 for negative w (a different byte
    pattern, so worse compression) and NaN for a non-finite w.
    """
    for weight, mask in weights:
        weight.masked_fill_(~mask, 0.0)


def keep_zeros(weights: MaskedWeights) -> Callable[[], None]:
    """The keep-zeros helper: an `after_step` callback for `stages.training.fit` that keeps
    every pruned weight of `weights` at exactly +0.0 (`zero_pruned` after each optimizer
    step). The masks are moved to their weights' devices once, here; a mask whose shape
    differs from its weight's is a SqueezerayError (masks taken before a structural change)."""
    on_device: MaskedWeights = []
    for weight, mask in weights:
        if tuple(weight.shape) != tuple(mask.shape):
            raise SqueezerayError(
                f"a keep-mask has shape {tuple(mask.shape)} but its weight has "
                f"{tuple(weight.shape)}; masks must be taken from this model after its last "
                "structural change (a bug in the calling stage)"
            )
        on_device.append((weight, mask.to(device=weight.device, dtype=torch.bool)))

    def after_step() -> None:
        zero_pruned(on_device)

    return after_step


def layer_masks(model: nn.Module, masks: Masks) -> MaskedWeights:
    """`masks` ({layer name: keep-mask}) as (that layer's weight, keep-mask) pairs; a mask
    whose shape differs from its layer's weight is a SqueezerayError naming the layer."""
    pairs: MaskedWeights = []
    for name, mask in masks.items():
        weight = layer_weight(model.get_submodule(name))
        if tuple(weight.shape) != tuple(mask.shape):
            raise SqueezerayError(
                f"mask for layer {name!r} has shape {tuple(mask.shape)} but the weight has "
                f"{tuple(weight.shape)}; masks must be taken from this model after its last "
                "structural change (a bug in the calling stage)"
            )
        pairs.append((weight, mask))
    return pairs


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Set every masked-out weight of the named layers to exactly +0.0, in place (once)."""
    keep_zeros(layer_masks(model, masks))()


def keep_masks(model: nn.Module, masks: Masks) -> Callable[[], None]:
    """`keep_zeros` for the named layers' weights: re-applies `masks` after every step."""
    return keep_zeros(layer_masks(model, masks))


def weight_counts(model: nn.Module) -> tuple[int, int]:
    """(number of prunable weights, how many of them are exactly zero)."""
    total = zeros = 0
    for _, module in prunable_layers(model):
        weight = layer_weight(module)
        total += weight.numel()
        zeros += weight.numel() - int(torch.count_nonzero(weight))
    return total, zeros


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable weights, in [0, 1]."""
    total, zeros = weight_counts(model)
    return zeros / total if total else 0.0


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters) of a model (biases and norms included)."""
    # count_nonzero allocates nothing; `(p != 0).sum()` summed an int64 copy (2x the weights)
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return total, nonzero
