"""What replacing layers inside PyTorch's Transformer needs, and a summary of a model's layers.

`nn.TransformerEncoderLayer` has an inference fast path (`torch._transformer_encoder_layer_fwd`)
that reads `linear1.weight`, `linear2.weight` and the attention's `in_proj_weight` /
`out_proj.weight` as tensors, bypassing the submodules' own `forward`. When a stage replaces
`linear1` (a low-rank `Sequential`, a dynamic-int8 `Linear` whose `weight` is a method, an int8
`QuantWrapper`), that path fails (`'Sequential' object has no attribute 'weight'`) or would skip
the replacement. `restore_slow_path` turns the fast path off for exactly those layers (and for
`nn.TransformerEncoder`'s nested-tensor path over them), so they run their submodules; layers
nobody replaced keep the fast path. The flags it sets are plain attributes, not state, so
`stages.rebuild.build_model` applies it to every rebuilt model.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeGuard

import torch
from torch import nn


def _is_float_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _fast_path_intact(layer: nn.TransformerEncoderLayer) -> bool:
    """True when every tensor the fast path reads is still a float tensor of a plain module."""
    attn = layer.self_attn
    return (
        type(layer.linear1) is nn.Linear
        and type(layer.linear2) is nn.Linear
        and isinstance(attn, nn.MultiheadAttention)
        and isinstance(attn.out_proj, nn.Linear)
        and _is_float_tensor(getattr(attn.out_proj, "weight", None))
        and (attn.in_proj_weight is None or _is_float_tensor(attn.in_proj_weight))
    )


def restore_slow_path(model: nn.Module) -> int:
    """Turn the fast path off in every Transformer encoder layer whose layers were replaced.

    Returns how many layers were switched. Idempotent; outputs are unchanged (the fast path
    and the regular path compute the same function).
    """
    switched = 0
    for module in model.modules():
        if (
            isinstance(module, nn.TransformerEncoderLayer)
            and module.activation_relu_or_gelu
            and not _fast_path_intact(module)
        ):
            module.activation_relu_or_gelu = 0  # the fast path's first gate we control
            switched += 1
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
            isinstance(layer, nn.TransformerEncoderLayer) and not layer.activation_relu_or_gelu
            for layer in module.layers
        ):
            module.use_nested_tensor = False
    return switched


def is_linear(module: object, *, replaceable: bool = False) -> TypeGuard[nn.Linear]:
    """Whether `module` is a Linear layer to the stages: the one test every stage uses.

    An `nn.Linear` or a subclass (MultiheadAttention's `out_proj`, a lowrank factor): its
    weight can be pruned, adapted (LoRA) or counted in place. `replaceable=True`: exactly
    `nn.Linear`, the layers a stage may swap for another module (lowrank's two factors, an
    int8 Linear); a subclass's owner reads its `.weight` directly, so it must stay.
    transformers' `Conv1D` (GPT-2) counts: `Task.build` has made it an `nn.Linear` before any
    stage sees it (`stages.conv1d`).
    """
    return type(module) is nn.Linear if replaceable else isinstance(module, nn.Linear)


def weight_layer_summary(model: nn.Module) -> str:
    """The model's weight-carrying layer types with counts, e.g. 'Conv2d x3, BatchNorm2d x3'."""
    counts: Counter[str] = Counter()
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            counts[type(module).__name__] += 1
    if not counts:
        return "no layer with parameters"
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())


def tied_holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(parameter) -> every (module, attribute) that holds that very Parameter, for the
    parameters held by more than one module attribute (tied weights)."""
    seen: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                seen.setdefault(id(param), []).append((module, attr))
    return {key: where for key, where in seen.items() if len(where) > 1}


__all__ = ["is_linear", "restore_slow_path", "tied_holders", "weight_layer_summary"]
