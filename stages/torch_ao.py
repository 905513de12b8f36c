"""The one module that imports `torch.ao.quantization`: `dynamic_int8` on torch.ao's kernels.

Why it is still here: PyTorch 2.13 deprecates eager `torch.ao.quantization` (and slates it for
deletion) in favour of torchao, but torchao has no equivalent of its fast eager CPU kernels.
Measured on this project's CPU (2-vCPU AMD EPYC, one thread, batch 1, a BERT of 3.9M params):
float eager 7.7-8.4 ms, `quantize_dynamic` 4.3 ms, torchao's
`Int8DynamicActivationInt8WeightConfig` eager 12.0 ms (slower than float). So `dynamic_int8`
keeps `torch.ao.quantization.quantize_dynamic` (fbgemm kernels) as a documented choice, and
torchao's dynamic int8 is the separate mode `torchao_dynamic_int8` (`stages.torchao_quant`).
When torch deletes `torch.ao.quantization`, this module is what goes (a test keeps every other
module off `torch.ao.quantization`: tests/stages/test_torch_ao_imports.py).

torch.ao's deprecation warnings are silenced for the calls below (`stages.quiet.deprecated_ao`):
the deprecation is this module's documented reason to exist, not news for every trial. (Saving
and loading a checkpoint silences only the two that torch raises for its int8 tensors.)

- `dynamic_int8`: `quantize_dynamic` on nn.Linear/GRU/LSTM, after each supported
  nn.MultiheadAttention became `stages.attention.LinearAttention` (its projections as Linears).
- `state_of` / `rnn_state_for_load`: the quantized state_dict, with int8 GRU/LSTM cell objects
  (TorchScript objects) as plain tensors, so the checkpoint stays
  `torch.load(weights_only=True)`-loadable.
- `is_dynamic_int8_layer`: a layer `dynamic_int8` made int8 (for tests and fault replays).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import nn

from stages.attention import convert_attention
from stages.layers import restore_slow_path
from stages.quiet import deprecated_ao


def dynamic_int8(model: nn.Module, *, copy: bool = True) -> nn.Module:
    """A dynamic-int8 copy of `model`: int8 weights of nn.Linear/GRU/LSTM (attention first
    rewritten with Linear projections), activations quantized on the fly per batch, run by
    torch.ao's fbgemm/onednn kernels; CPU only. Source: `torch.ao.quantization.quantize_dynamic`.
    `copy=False` converts `model` itself (a rebuild's fresh structure: no copy of its weights).
    """
    from torch.ao.quantization import quantize_dynamic

    if copy:
        model = deepcopy(model)
    convert_attention(model)  # attention projections as Linears, so they become int8 too
    with deprecated_ao():
        quantized = quantize_dynamic(
            model, {nn.Linear, nn.GRU, nn.LSTM}, dtype=torch.qint8, inplace=True
        )
    restore_slow_path(quantized)  # int8 Linears inside nn.TransformerEncoderLayer
    return quantized  # type: ignore[no-any-return]


def is_dynamic_int8_layer(module: nn.Module) -> bool:
    """Whether `module` is a torch.ao dynamic-int8 Linear (what `dynamic_int8` makes)."""
    from torch.ao.nn.quantized.dynamic import Linear

    return isinstance(module, Linear)


def state_of(model: nn.Module) -> dict[str, Any]:
    """A detached copy of a `dynamic_int8` model's state_dict, weights_only-safe: packed
    (weight, bias) tuples kept, GRU/LSTM cells as tensors (`rnn_state_to_tensors`)."""
    with deprecated_ao():  # deep-copying int8 tensors warns of TypedStorage deprecation
        state = deepcopy(model.state_dict())  # holds packed tuples: no .detach()
    return rnn_state_to_tensors(model, state)


_RNN_PACKED = "._all_weight_values."  # quantized dynamic GRU/LSTM: TorchScript cell objects
_RNN_WEIGHTS = "._int8_rnn."  # our weights_only-safe form of them: <rnn>._int8_rnn.<name>


def _quantized_rnns(model: nn.Module) -> dict[str, Any]:
    from torch.ao.nn.quantized.dynamic import GRU, LSTM

    return {n: m for n, m in model.named_modules() if isinstance(m, (GRU, LSTM))}


def rnn_state_to_tensors(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` with each int8 GRU/LSTM's packed cell objects (TorchScript objects, which
    `torch.load(weights_only=True)` refuses) replaced by its tensors:
    `<rnn>._int8_rnn.weight_ih_l0` (qint8), `<rnn>._int8_rnn.bias_ih_l0` (float), ..."""
    rnns = _quantized_rnns(model)
    if not rnns:
        return state
    out = {
        k: v for k, v in state.items() if not any(k.startswith(f"{n}{_RNN_PACKED}") for n in rnns)
    }
    for name, rnn in rnns.items():
        for group in rnn._weight_bias().values():
            for key, tensor in group.items():
                out[f"{name}{_RNN_WEIGHTS}{key}"] = tensor
    return out


def rnn_state_for_load(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `rnn_state_to_tensors` for a rebuilt `model`: its int8 GRU/LSTMs take
    the saved tensors (`set_weight_bias`), and `state` gets their packed cell objects back, so
    `model.load_state_dict` sees the keys the modules expect."""
    rnns = _quantized_rnns(model)
    if not rnns:
        return state
    out = {
        k: v for k, v in state.items() if not any(k.startswith(f"{n}{_RNN_WEIGHTS}") for n in rnns)
    }
    for name, rnn in rnns.items():
        prefix = f"{name}{_RNN_WEIGHTS}"
        saved = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if saved:
            rnn.set_weight_bias(saved)  # flat {weight_ih_l0: ..., bias_ih_l0: ...}
        for key, value in rnn.state_dict(prefix=f"{name}.").items():
            if _RNN_PACKED in key:
                out[key] = value
    return out
