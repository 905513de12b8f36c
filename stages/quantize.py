"""Stage `quantize`: int8 weights (and activations) for CPU deployment.

Modes (`quantize.mode`):

- `none`: a copy.
- `dynamic_int8`: `torch.ao.quantization.quantize_dynamic` on every `nn.Linear`, `nn.GRU` and
  `nn.LSTM` (int8 weights, activations quantized on the fly; an RNN's packed cell objects are
  saved as their int8 weight and float bias tensors, `rnn_state_to_tensors`, so the checkpoint
  stays `weights_only`-loadable), Transformer feed-forward Linears included; each
  supported `nn.MultiheadAttention` first becomes `stages.attention.LinearAttention` (the same
  function with Linear projections), so its projections are int8 too. Conv and Embedding
  stay float.
- `static_int8`: FX graph mode post-training quantization (`prepare_fx`/`convert_fx`, the x86
  backend's default qconfig mapping) calibrated on `calibration_batches` batches of 64 from the
  train split. FX fuses Conv+BN+ReLU and Linear+ReLU itself, so plain `nn.Sequential` models
  and conv nets need no QuantStub edits. FX does not trace into built-in torch.nn modules
  (`nn.TransformerEncoder` is one opaque call): the plain Linears inside them (the
  feed-forward `linear1`/`linear2`) are quantized in eager mode instead, each wrapped as
  `QuantWrapper` (quantize input, int8 Linear, dequantize output); attention inside such
  modules first becomes `LinearAttention`, so its projections are wrapped the same way.
  Embedding stays float.
- `qat`: FX quantization-aware training (`prepare_qat_fx`; the inner Linears as above with
  eager `prepare_qat`), `qat_epochs` of CE fine-tuning with fake quantization, then convert.
- `onnx_int8`: ONNX export of the float model, then ONNX Runtime's dynamic quantization (QInt8
  weights of MatMul/Gemm nodes: attention projections included). The checkpoint deploys to
  ONNX Runtime: its `onnx` bytes are the int8 model, its
  state_dict keeps the float weights for reference (so `build_model` still gives the float
  eager model); `stages.metrics.size_bytes` measures the ONNX bytes.

Zeros stay zeros: int8 weights are symmetric (zero point 0), so an exact float zero quantizes
to an exact int8 zero in every mode; QAT re-applies a masked parent's zero pattern after every
optimizer step (matched by parameter name; best effort for user models whose fused modules
rename parameters).

A torch-quantized model runs on CPU only, so this stage always works on CPU.

Checkpoints stay `weights_only`-loadable: a quantized state_dict holds int8 tensors, packed
(weight, bias) tuples, scales/zero points (activation ones included, as FX registers them as
buffers) and dtypes. `rebuild_quantized` re-creates the module structure from a fresh float
model; the stage runner (`stages.selfcheck`) checks that the rebuilt model reproduces the
quantized model's outputs before the checkpoint is used.

Every mode but `none` must leave some weights int8: the stage reports `quantized_fraction`
(int8 share of the weight elements, `stages.metrics.count_weights`) and raises a
SqueezerayError naming the mode's layer types and the model's when it is 0.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from stages.attention import convert_attention
from stages.base import StageInput, StageOutput, StageSpec, check_choice, check_int, check_range
from stages.batches import Inputs, as_args, as_inputs
from stages.checkpoint import ModelCheckpoint, build_model, set_submodule
from stages.errors import SqueezerayError
from stages.layers import restore_slow_path, weight_layer_summary
from stages.tasks import Task
from stages.training import accuracy, fit

QUANTIZE_MODES = ("none", "dynamic_int8", "static_int8", "qat", "onnx_int8")
TORCH_INT8_MODES = ("dynamic_int8", "static_int8", "qat")  # torch-quantized: eager/TorchScript only
FX_BACKEND = "x86"  # fbgemm + onednn kernels; the default engine of x86 torch builds
CALIBRATION_BATCH_SIZE = 64
QAT_BATCH_SIZE = 64
_PACKED_SUFFIX = "._packed_params._packed_params"  # quantized Linear: (int8 weight, bias)


@dataclass(frozen=True)
class QuantizeParams:
    mode: str = "none"
    calibration_batches: int = 8  # static_int8: batches of 64 train samples
    qat_epochs: int = 3
    lr: float = 1e-4  # QAT fine-tuning: small, the float model is already trained

    def __post_init__(self) -> None:
        check_choice("quantize.mode", self.mode, QUANTIZE_MODES)
        check_int("quantize.calibration_batches", self.calibration_batches, low=1)
        check_int("quantize.qat_epochs", self.qat_epochs, low=1)
        check_range("quantize.lr", self.lr, low=0.0, low_inclusive=False)


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


def _dynamic(model: nn.Module) -> nn.Module:
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
            if inside_leaf and type(child) is nn.Linear:
                found.append(full)
                continue
            visit(child, f"{full}.", inside_leaf or _is_fx_leaf(child))

    visit(model, "", False)
    return found


def _wrap_inner_linears(model: nn.Module) -> None:
    """Eager-mode int8 for the Linears FX cannot reach: each becomes QuantWrapper(Linear)
    (quantize its input, int8 Linear, dequantize), quantized by `_prepare`/`_convert`."""
    from torch.ao.quantization import QuantWrapper

    # Attention inside such modules first becomes Linear-based, so its projections are reached.
    convert_attention(model, inside=_is_fx_leaf)
    for name in inner_linears(model):
        set_submodule(model, name, QuantWrapper(model.get_submodule(name)))
    restore_slow_path(model)


def _wrappers(model: nn.Module) -> list[nn.Module]:
    from torch.ao.quantization import QuantWrapper

    return [m for m in model.modules() if isinstance(m, QuantWrapper)]


def _prepare(model: nn.Module, mode: str, example: Inputs) -> nn.Module:
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
        wrappers = _wrappers(prepared)
        if wrappers:
            # FX set its qconfig on every module, leaves' insides included; there only the
            # wrappers are quantized (MultiheadAttention, LayerNorm stay float).
            for module in prepared.modules():
                if _is_fx_leaf(module) and not isinstance(module, nn.Linear):
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


def _convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization import convert
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet_ao():
        for wrapper in _wrappers(prepared):
            convert(wrapper.eval(), inplace=True)
        converted = convert_fx(prepared.eval())  # type: ignore[arg-type]
    restore_slow_path(converted)
    return converted.eval()


# -- rebuilding a quantized module from a fresh float model -------------------------------


def rebuild_quantized(
    task: Task, float_model: nn.Module, state_dict: dict[str, Any], mode: str
) -> nn.Module:
    """The quantized module structure of `mode`, ready for `load_state_dict(state_dict)`.

    `float_model` is the task's fresh model with the recipe's structural changes already
    replayed (structured pruning, low-rank factors); it is quantized again the same way.
    Values do not matter here: weights, biases and every scale and zero point (activations
    included) are in `state_dict` and load over it.
    """
    check_choice("quantize.mode", mode, QUANTIZE_MODES)
    model = float_model.eval()
    if mode in ("none", "onnx_int8"):  # onnx_int8 keeps the float weights in its state_dict
        return model
    if mode == "dynamic_int8":
        return _dynamic(model)
    example = task.example_input(1)
    prepared = _prepare(model, mode, example)
    # One pass so the observers hold finite values (else convert warns); the values are
    # replaced by the saved scales and zero points right after.
    prepared.eval()
    with torch.no_grad(), quiet_ao():
        prepared(*as_args(example))
    return _convert(prepared)


# -- the stage ------------------------------------------------------------------------------


def quantize(inp: StageInput, params: QuantizeParams) -> StageOutput:
    """Quantize the parent model per `params.mode`; metrics: val_accuracy in [0, 1]."""
    parent = inp.parent
    if parent is None:
        raise SqueezerayError("stage quantize needs a parent checkpoint (a trained model)")
    if parent.quantize != "none" or parent.onnx is not None:
        raise SqueezerayError(
            f"quantize.mode={params.mode!r}: the parent is already quantized or exported "
            f"(quantize={parent.quantize!r}, runtime={parent.runtime!r}); quantize a float model"
        )
    task = inp.task
    if params.mode == "none":
        ckpt = parent.with_recipe(quantize="none")
        model = build_model(task, ckpt)
        return StageOutput(
            ckpt,
            {"val_accuracy": _val_accuracy(task, model), "quantized_fraction": 0.0},
            model=model,
        )
    if params.mode == "onnx_int8":
        return _quantize_onnx(task, parent)

    float_model = build_model(task, parent)  # fresh module, CPU, eval
    if params.mode == "dynamic_int8":
        quantized = _dynamic(float_model)
    elif params.mode == "static_int8":
        quantized = _static(task, float_model, params, seed=inp.seed)
    else:
        quantized = _qat(task, float_model, parent, params, seed=inp.seed)
    quantized.eval()
    recipe: dict[str, Any] = {"quantize": params.mode}
    if params.mode != "dynamic_int8":
        recipe["quantize_backend"] = FX_BACKEND
    with quiet_ao():  # deep-copying int8 tensors warns of TypedStorage deprecation
        state = copy.deepcopy(quantized.state_dict())  # holds packed tuples: no .detach()
        state = rnn_state_to_tensors(quantized, state)
    ckpt = ModelCheckpoint(task=task.name, state_dict=state, recipe={**parent.recipe, **recipe})
    fraction = _require_some_int8(ckpt, task, parent, params.mode)
    return StageOutput(
        ckpt,
        {"val_accuracy": _val_accuracy(task, quantized), "quantized_fraction": fraction},
        model=quantized,
    )


_WHAT_MODES_QUANTIZE = {
    "dynamic_int8": "dynamic_int8 quantizes nn.Linear, nn.GRU and nn.LSTM layers and "
    "nn.MultiheadAttention's projections only (Conv and Embedding stay float)",
    "static_int8": "static_int8 quantizes the Linear/Conv layers FX graph mode can trace, plus "
    "the Linears and attention inside built-in torch.nn modules (e.g. nn.TransformerEncoder)",
    "qat": "qat quantizes the Linear/Conv layers FX graph mode can trace, plus the Linears and "
    "attention inside built-in torch.nn modules (e.g. nn.TransformerEncoder)",
    "onnx_int8": "onnx_int8 (ONNX Runtime dynamic quantization) quantizes the weights of "
    "MatMul/Gemm/Conv nodes",
}


def _require_some_int8(
    ckpt: ModelCheckpoint, task: Task, parent: ModelCheckpoint, mode: str
) -> float:
    """The checkpoint's quantized_fraction; a SqueezerayError when it is 0 (nothing is int8)."""
    from stages.metrics import quantized_fraction

    fraction = quantized_fraction(ckpt)
    if fraction == 0.0:
        layers = weight_layer_summary(build_model(task, parent))
        raise SqueezerayError(
            f"quantize.mode={mode!r} quantized no weight of this model: "
            f"{_WHAT_MODES_QUANTIZE[mode]}, and the model has {layers}; "
            "choose another quantize.mode (onnx_int8 covers the most layer types) or "
            "quantize.mode: none"
        )
    return fraction


def _static(task: Task, model: nn.Module, params: QuantizeParams, *, seed: int) -> nn.Module:
    prepared = _prepare(model, "static_int8", task.example_input(1))
    loader = DataLoader(
        task.train,
        batch_size=CALIBRATION_BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad(), quiet_ao():
        for i, (x, _y) in enumerate(loader):
            if i >= params.calibration_batches:
                break
            prepared(*as_args(as_inputs(x)))
    return _convert(prepared)


def _qat(
    task: Task,
    model: nn.Module,
    parent: ModelCheckpoint,
    params: QuantizeParams,
    *,
    seed: int,
) -> nn.Module:
    prepared = _prepare(model, "qat", task.example_input(2))
    masks = _zero_masks(prepared, parent) if parent.recipe.get("masked") else {}

    def keep_zeros() -> None:
        with torch.no_grad():
            for p, mask in masks.values():
                p.mul_(mask)

    keep_zeros()
    with quiet_ao():
        fit(
            prepared,
            task.train,
            task.val,
            epochs=params.qat_epochs,
            lr=params.lr,
            batch_size=QAT_BATCH_SIZE,
            device=torch.device("cpu"),
            seed=seed,
            after_step=keep_zeros if masks else None,
        )
    return _convert(prepared)


def _zero_masks(
    prepared: nn.Module, parent: ModelCheckpoint
) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """{name: (QAT parameter, 0/1 mask)} for parent weights with exact zeros, matched by name
    (an eager-wrapped inner Linear `<name>.module.weight` matches the parent's `<name>.weight`)."""
    from torch.ao.quantization import QuantWrapper

    wrapped = [n for n, m in prepared.named_modules() if isinstance(m, QuantWrapper)]
    masks: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}
    for name, p in prepared.named_parameters():
        parent_name = name
        for w in wrapped:
            if name.startswith(f"{w}.module."):
                parent_name = f"{w}.{name[len(w) + len('.module.') :]}"
        # LinearAttention's packed projection was MultiheadAttention's in_proj_weight/_bias.
        if parent_name not in parent.state_dict and ".in_proj." in parent_name:
            parent_name = parent_name.replace(".in_proj.", ".in_proj_")
        saved = parent.state_dict.get(parent_name)
        if saved is None or saved.dim() < 2 or tuple(saved.shape) != tuple(p.shape):
            continue
        mask = (saved != 0).to(p.dtype)
        if bool((mask == 0).any()):
            masks[name] = (p, mask)
    return masks


def _quantize_onnx(task: Task, parent: ModelCheckpoint) -> StageOutput:
    from stages.export import to_onnx_bytes
    from stages.runtime import make_predictor

    float_model = build_model(task, parent)
    float_onnx = to_onnx_bytes(float_model, task.example_input(2))
    int8_onnx = ort_quantize_dynamic(float_onnx)
    ckpt = replace(parent.with_recipe(quantize="onnx_int8", runtime="onnxruntime"), onnx=int8_onnx)
    fraction = _require_some_int8(ckpt, task, parent, "onnx_int8")
    predictor = make_predictor(task, ckpt)
    return StageOutput(
        ckpt, {"val_accuracy": predictor.accuracy(task.val), "quantized_fraction": fraction}
    )


def ort_quantize_dynamic(onnx_bytes: bytes) -> bytes:
    """ONNX Runtime dynamic quantization (per-tensor QInt8 weights) of an ONNX model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from stages.export import quiet_logging

    model = onnx.load_from_string(onnx_bytes)
    # Intermediate shape annotations are hints, and some exporters leave stale ones after
    # structured pruning (torch 2.11's dynamo exporter kept a pruned Linear's old width, and
    # ORT's shape inference then refused the model): drop them, ORT infers them again.
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp, quiet_logging():
        out = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(model, out, weight_type=QuantType.QInt8)
        with open(out, "rb") as f:
            return f.read()


def _val_accuracy(task: Task, model: nn.Module) -> float:
    return accuracy(model, task.val, device=torch.device("cpu"))


SPEC = StageSpec(name="quantize", params=QuantizeParams, run=quantize)
