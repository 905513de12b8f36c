"""Weight quantization with torchao's `quantize_(model, config)`: the maintained eager API.

Source: torchao (`torchao.quantization.quantize_` and its configs), the replacement PyTorch
2.13 names for the deprecated `torch.ao.quantization.quantize_dynamic`. Each mode is one config
applied to every `nn.Linear` (after attention became `stages.attention.LinearAttention`, so its
projections are Linears too); Conv, Embedding and RNN layers stay float:

- `torchao_dynamic_int8`: `Int8DynamicActivationInt8WeightConfig` (int8 per-channel weights,
  activations quantized per row at run time). Measured slower than float eager on this CPU;
  torchao intends it for `torch.compile` (runtime `compiled`).
- `int8_weight_only`: `Int8WeightOnlyConfig` (int8 per-channel weights dequantized in the
  matmul; activations float): a 4x smaller Linear at about float speed.
- `int4_weight_only`: `Int4WeightOnlyConfig(group_size=32)`. On CPU its kernels come from the
  `mslk` package (torchao: "Requires mslk >= 1.0.0"); without it the mode is refused up front
  (`require_kernels`), naming the package.

The quantized weights are torchao tensor subclasses (`Int8Tensor`), which
`torch.load(weights_only=True)` refuses unless torchao is imported first. Checkpoints therefore
store each as its plain inner tensors under `<key>:<inner>` (`<layer>.weight:qdata` int8,
`:scale`, `:zero_point`; `flatten_state`), and `unflatten_state` puts them back into the
subclass tensors of a freshly quantized model (same config, so the same metadata).
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import torch
from torch import nn

from stages.attention import convert_attention
from stages.errors import SqueezerayError
from stages.layers import restore_slow_path

TORCHAO_MODES: tuple[str, ...] = ("torchao_dynamic_int8", "int8_weight_only", "int4_weight_only")
INT4_GROUP_SIZE = 32  # weights share one scale per 32 input features (torchao's common choice)
INNER = ":"  # <state key>:<inner tensor name> of a flattened torchao tensor
KERNEL_PACKAGES = {"int4_weight_only": "mslk"}  # mode -> the package its CPU kernels need


def require_kernels(mode: str) -> None:
    """Refuse `mode` up front when the package its CPU kernels come from is not installed
    (SqueezerayError naming the package and what to choose instead)."""
    package = KERNEL_PACKAGES.get(mode)
    if package is not None and importlib.util.find_spec(package) is None:
        raise SqueezerayError(
            f"quantize.mode={mode!r} needs the {package!r} package for its CPU kernels "
            f"(torchao's Int4WeightOnlyConfig: 'Requires {package} >= 1.0.0'), which is not "
            f"installed; PyPI has no CPU build of {package} for this platform, so install it "
            "from its project if you have one, or choose quantize.mode int8_weight_only "
            "(int8 weights, same API) or dynamic_int8"
        )


def _config(mode: str) -> Any:
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
    )

    if mode == "torchao_dynamic_int8":
        return Int8DynamicActivationInt8WeightConfig()
    if mode == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if mode == "int4_weight_only":
        return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    raise SqueezerayError(
        f"quantize.mode={mode!r} is not a torchao mode; accepted: {TORCHAO_MODES}"
    )


def quantize_torchao(model: nn.Module, mode: str) -> nn.Module:
    """A copy of `model` with every nn.Linear weight quantized per `mode` (`_config`), in
    eval mode; the input model is unchanged."""
    from torchao.quantization import quantize_

    require_kernels(mode)
    model = copy.deepcopy(model).eval()
    convert_attention(model)  # attention projections as Linears, so they are quantized too
    quantize_(model, _config(mode))
    restore_slow_path(model)  # the encoder fast path reads plain float weights
    return model


def _is_subclass(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and type(value) is not torch.Tensor
        and hasattr(value, "__tensor_flatten__")
    )


def flatten_state(state: dict[str, Any]) -> dict[str, Any]:
    """A detached copy of `state` with each torchao tensor as its plain inner tensors
    (`<key>:qdata`, `<key>:scale`, ...), so `torch.load(weights_only=True)` takes it."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if _is_subclass(value):
            names, _meta = value.__tensor_flatten__()
            for name in names:
                out[f"{key}{INNER}{name}"] = getattr(value, name).detach().clone()
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().clone()
        else:
            out[key] = value
    return out


def unflatten_state(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten_state` for a freshly quantized `model`: each `<key>:<inner>`
    group becomes the model's own tensor subclass at `key` (its metadata) holding the saved
    inner tensors."""
    if not any(INNER in k for k in state):
        return state
    current = model.state_dict()
    out = {k: v for k, v in state.items() if INNER not in k}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if INNER in key:
            owner, _, inner = key.rpartition(INNER)
            groups.setdefault(owner, {})[inner] = value
    for key, tensors in groups.items():
        template: Any = current.get(key)
        if not _is_subclass(template):
            raise SqueezerayError(
                f"the checkpoint stores {key!r} as a torchao tensor but the rebuilt model's is "
                f"a {type(template).__name__}: the recipe does not rebuild this model"
            )
        _names, meta = template.__tensor_flatten__()
        out[key] = type(template).__tensor_unflatten__(
            tensors, meta, template.size(), template.stride()
        )
    return out
