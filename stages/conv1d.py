"""transformers' `Conv1D` (GPT-2's layer) as `nn.Linear`, so every stage treats it as a Linear.

`transformers.pytorch_utils.Conv1D(nf, nx)` is a Linear whose weight is stored transposed,
(in=nx, out=nf), and applied as `addmm(bias, x, weight)`. The stages that act on Linears
(prune, lowrank, LoRA, dynamic/static int8, torch-pruning's dependency graph) know
`nn.Linear` only: before this module, LoRA and dynamic int8 skipped every GPT-2 block,
lowrank listed only the classifier and structured pruning failed inside torch-pruning.

`Task.build` hands every stage the task's model with each Conv1D replaced by the
`nn.Linear(nx, nf)` computing the same function (`linear_form`: weight transposed, bias
copied, same parameter names, so state_dict keys are unchanged and only those weights'
layout changes). The swap is exact (checked: max logit difference 0.0 on a tiny GPT-2) and
happens in the factory call, so rebuilding any checkpoint (`stages.rebuild.build_model`)
replays it with no recipe entry. Each swapped Linear carries `CONV1D_MARK`, so a Hugging Face
export can put Conv1D back (`conv1d_form`) where `save_pretrained` files must hold the
original layout; weights a user saved from the original model are loaded into it before the
swap (`Task.build(..., prepare=...)`).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from stages.layers import is_linear

CONV1D_MARK = "squeezeray_from_conv1d"
"""Attribute (True) on an nn.Linear that `linear_form` made from a transformers Conv1D."""


def is_conv1d(module: nn.Module) -> bool:
    """True for a `transformers.pytorch_utils.Conv1D` (without importing transformers: a
    model that holds one has imported it already)."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


@torch.no_grad()
def linear_form(model: nn.Module) -> int:
    """Replace every Conv1D of `model` by the equivalent nn.Linear, in place; returns how many.

    Parameter names stay (`weight`, `bias`); the weight becomes (out, in) = Conv1D's
    transposed, on the same device and dtype; the module keeps its training mode.
    """
    names = [name for name, module in model.named_modules() if is_conv1d(module) and name]
    for name in names:
        old = model.get_submodule(name)
        weight = old.weight
        assert isinstance(weight, torch.Tensor)
        nx, nf = weight.shape
        new = nn.Linear(int(nx), int(nf), device=weight.device, dtype=weight.dtype)
        new.weight.copy_(weight.t())
        bias = old.bias
        assert isinstance(bias, torch.Tensor)
        new.bias.copy_(bias)
        setattr(new, CONV1D_MARK, True)
        new.train(old.training)
        _replace(model, name, new)
    return len(names)


@torch.no_grad()
def conv1d_form(model: nn.Module) -> int:
    """Put transformers' Conv1D back for every Linear `linear_form` made (in place); returns
    how many. Structured pruning keeps the mark (it slices the Linear in place), so the
    Conv1D gets the pruned sizes. Needs transformers (the model came from it)."""
    from transformers.pytorch_utils import Conv1D

    names = [
        name
        for name, module in model.named_modules()
        if is_linear(module, replaceable=True) and getattr(module, CONV1D_MARK, False)
    ]
    for name in names:
        old = model.get_submodule(name)
        assert isinstance(old, nn.Linear)
        new = Conv1D(old.out_features, old.in_features).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        new.weight.copy_(old.weight.t())
        if old.bias is not None:
            new.bias.copy_(old.bias)
        else:
            new.bias.zero_()
        new.train(old.training)
        _replace(model, name, new)
    return len(names)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


__all__ = ["CONV1D_MARK", "conv1d_form", "is_conv1d", "linear_form"]
