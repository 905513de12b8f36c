"""Weight casting modes `float16` and `bfloat16`: the model's floating weights in half width.

Meant for GPU deployment, where half-precision matmuls run on tensor cores. The cast is
`nn.Module.to(dtype)` of every floating parameter and buffer; a forward pre-hook casts the
model's floating inputs to the same dtype (so callers keep passing float32 batches) and the
logits come out in that dtype. Integer inputs (token ids) are untouched.

On a CPU without native half-precision matmul units the cast model is slower than float32
(measured in bench/quantize_modes.py, docs/quantization.md); it runs, and its latency is
recorded as measured, not refused: a sweep on CPU shows the 2x smaller checkpoint at its true
CPU speed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

CAST_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _cast_inputs(dtype: torch.dtype) -> Any:
    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if isinstance(value, (tuple, list)):
            return type(value)(cast(v) for v in value)
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        return value

    def hook(_module: nn.Module, args: Any, kwargs: Any) -> Any:
        return cast(args), cast(kwargs)

    return hook


def cast_model(model: nn.Module, mode: str, *, copy_first: bool = True) -> nn.Module:
    """`model` (a copy unless `copy_first` is false) with its floating weights and buffers in
    the dtype of `mode` ("float16" | "bfloat16") and its floating inputs cast on entry."""
    dtype = CAST_DTYPES[mode]
    if copy_first:
        model = copy.deepcopy(model)
    model.to(dtype)
    model.register_forward_pre_hook(_cast_inputs(dtype), with_kwargs=True)
    return model.eval()
