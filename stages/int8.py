"""Torch int8 model structure: make a float module int8, and make the same structure again.

Shared by stage `quantize` (which quantizes, calibrates and trains) and `stages.rebuild`
(which re-creates a quantized checkpoint's module from a fresh float model, then loads the
saved int8 state over it):

- `dynamic_int8`: `quantize_dynamic` on nn.Linear/GRU/LSTM, after each supported
  nn.MultiheadAttention became `stages.attention.LinearAttention`.
- `prepare_int8` / `convert_int8`: FX graph mode (`prepare_fx`/`prepare_qat_fx`, then
  `convert_fx`) plus eager-mode `QuantWrapper`s for the plain Linears FX cannot reach inside
  built-in torch.nn modules (`inner_linears`).
- `rnn_state_to_tensors` / `rnn_state_for_load`: int8 GRU/LSTM cell objects as plain tensors,
  so the checkpoint stays `torch.load(weights_only=True)`-loadable.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from stages.attention import convert_attention
from stages.batches import Inputs, as_args
from stages.layers import is_linear, restore_slow_path
from stages.names import FX_BACKEND
from stages.surgery import set_submodule


@contextmanager
def quiet_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation (and observer) warnings for the block only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _qconfig(mode: str) -> Any:
    from torch.ao.quantization import get_default_qat_qconfig, get_default_qconfig

    return get_default_qat_qconfig(FX_BACKEND) if mode == "qat" else get_default_qconfig(FX_BACKEND)


def _qconfig_mapping(mode: str) -> Any:
    """The backend's default mapping, with Embedding/EmbeddingBag left float.

    Their int8 form needs float qparams (weight-only), which the default static/QAT qconfigs
    are not (QAT failed: 'Embedding weights requires a qscheme of per_channel_affine_float_
    qparams'); token embeddings are a lookup, not a matmul, so int8 would not speed them up.
    """
    from torch.ao.quantization import (
        get_default_qat_qconfig_mapping,
        get_default_qconfig_mapping,
    )

    if mode == "qat":
        mapping = get_default_qat_qconfig_mapping(FX_BACKEND)
    else:
        mapping = get_default_qconfig_mapping(FX_BACKEND)
    return mapping.set_object_type(nn.Embedding, None).set_object_type(nn.EmbeddingBag, None)


def dynamic_int8(model: nn.Module) -> nn.Module:
    """A dynamic-int8 copy of `model`: int8 weights of nn.Linear/GRU/LSTM (attention first
    rewritten with Linear projections), activations quantized on the fly; CPU only."""
    from torch.ao.quantization import quantize_dynamic

    model = copy.deepcopy(model)
    convert_attention(model)  # attention projections as Linears, so they become int8 too
    with quiet_ao():
        quantized = quantize_dynamic(
            model, {nn.Linear, nn.GRU, nn.LSTM}, dtype=torch.qint8, inplace=True
        )
    restore_slow_path(quantized)  # int8 Linears inside nn.TransformerEncoderLayer
    return quantized  # type: ignore[no-any-return]


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


def _is_fx_leaf(module: nn.Module) -> bool:
    """FX's default leaf rule: built-in torch.nn modules other than Sequential are not traced
    into (torch.fx.Tracer.is_leaf_module)."""
    owner = type(module).__module__
    return owner.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(module, nn.Sequential)


def inner_linears(model: nn.Module) -> list[str]:
    """Names of plain nn.Linear layers that FX graph mode cannot reach.

    They sit inside a built-in torch.nn module that FX keeps whole (a leaf), e.g. the
    feed-forward `linear1`/`linear2` of `nn.TransformerEncoderLayer` inside
    `nn.TransformerEncoder`. Linear subclasses (MultiheadAttention's `out_proj`, whose weight
    its owner reads directly) are not listed.
    """
    found: list[str] = []

    def visit(module: nn.Module, prefix: str, inside_leaf: bool) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if inside_leaf and is_linear(child, replaceable=True):
                found.append(full)
                continue
            visit(child, f"{full}.", inside_leaf or _is_fx_leaf(child))

    visit(model, "", False)
    return found


def _wrap_inner_linears(model: nn.Module) -> None:
    """Eager-mode int8 for the Linears FX cannot reach: each becomes QuantWrapper(Linear)
    (quantize its input, int8 Linear, dequantize), quantized by `prepare_int8`/`convert_int8`."""
    from torch.ao.quantization import QuantWrapper

    # Attention inside such modules first becomes Linear-based, so its projections are reached.
    convert_attention(model, inside=_is_fx_leaf)
    for name in inner_linears(model):
        set_submodule(model, name, QuantWrapper(model.get_submodule(name)))
    restore_slow_path(model)


def quant_wrappers(model: nn.Module) -> list[nn.Module]:
    """The eager-mode `QuantWrapper`s of `model` (see `_wrap_inner_linears`)."""
    from torch.ao.quantization import QuantWrapper

    return [m for m in model.modules() if isinstance(m, QuantWrapper)]


def prepare_int8(model: nn.Module, mode: str, example: Inputs) -> nn.Module:
    """FX prepare (static: observers; qat: fake-quant, model in train mode), plus the eager
    prepare of the Linears inside FX leaves (`_wrap_inner_linears`)."""
    from torch.ao.quantization import prepare, prepare_qat
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    _wrap_inner_linears(model)
    with quiet_ao():
        if mode == "qat":
            prepared = prepare_qat_fx(model.train(), _qconfig_mapping(mode), as_args(example))
        else:
            prepared = prepare_fx(model.eval(), _qconfig_mapping(mode), as_args(example))
        wrappers = quant_wrappers(prepared)
        if wrappers:
            # FX set its qconfig on every module, leaves' insides included; there only the
            # wrappers are quantized (MultiheadAttention, LayerNorm stay float).
            for module in prepared.modules():
                if _is_fx_leaf(module) and not is_linear(module):
                    for inner in module.modules():
                        inner.qconfig = None  # type: ignore[assignment]
            qconfig = _qconfig(mode)
            for wrapper in wrappers:
                for inner in wrapper.modules():
                    inner.qconfig = qconfig  # type: ignore[assignment]
                if mode == "qat":
                    prepare_qat(wrapper.train(), inplace=True)
                else:
                    prepare(wrapper, inplace=True)
    _drop_non_float_observers(prepared, example)
    return prepared  # type: ignore[no-any-return]


def _drop_non_float_observers(prepared: nn.Module, example: Inputs) -> None:
    """Remove FX's observers / fake-quants on tensors that are not floating point.

    FX inserts them by op pattern without knowing dtypes, so a mask computed in forward
    (`pad = ids == 0`; `(~pad).unsqueeze(-1)`) or an int64 index tensor got one: static
    calibration then failed ('"linspace_cpu" not implemented for Bool') and QAT's fake-quant
    did ('expected scalar type Float but found Bool'). One probe pass of `example` with every
    observer bypassed finds each observer's input dtype; the observers of non-float (and
    non-tensor) values are unlinked, so those values stay as they are and convert quantizes
    only float activations.
    """
    from torch.ao.quantization.observer import _is_activation_post_process
    from torch.fx import GraphModule, Interpreter

    if not isinstance(prepared, GraphModule):
        return
    modules = dict(prepared.named_modules(remove_duplicate=False))
    observer_targets = {
        str(node.target)
        for node in prepared.graph.nodes
        if node.op == "call_module" and _is_activation_post_process(modules.get(str(node.target)))
    }
    if not observer_targets:
        return
    seen: dict[str, bool] = {}  # observer target -> every input it saw was a float tensor

    class _Probe(Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            if str(target) in observer_targets:
                value = args[0]
                is_float = isinstance(value, torch.Tensor) and value.is_floating_point()
                seen[str(target)] = seen.get(str(target), True) and is_float
                return value
            return super().call_module(target, args, kwargs)

    was_training = prepared.training
    prepared.eval()
    try:
        with torch.no_grad(), quiet_ao():
            _Probe(prepared).run(*as_args(example))
    finally:
        prepared.train(was_training)
    graph = prepared.graph
    for node in list(graph.nodes):
        target = str(node.target)
        if node.op == "call_module" and target in observer_targets and not seen.get(target, True):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    used = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    for target in observer_targets - used:
        delattr(prepared, target)
    prepared.recompile()


def convert_int8(prepared: nn.Module) -> nn.Module:
    """The int8 module of a `prepare_int8` result (observers/fake-quants become int8 ops), in
    eval mode."""
    from torch.ao.quantization import convert
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet_ao():
        for wrapper in quant_wrappers(prepared):
            convert(wrapper.eval(), inplace=True)
        converted = convert_fx(prepared.eval())  # type: ignore[arg-type]
    restore_slow_path(converted)
    return converted.eval()


# -- rebuilding a quantized module from a fresh float model -------------------------------
