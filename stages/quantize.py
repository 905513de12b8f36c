"""Stage `quantize`: int8 weights (and activations) for CPU deployment.

Modes (`quantize.mode`):

- `none`: a copy.
- `dynamic_int8`: `torch.ao.quantization.quantize_dynamic` on every `nn.Linear`, `nn.GRU` and
  `nn.LSTM` (int8 weights, activations quantized on the fly; an RNN's packed cell objects are
  saved as their int8 weight and float bias tensors, `stages.int8.rnn_state_to_tensors`, so
  the checkpoint stays `weights_only`-loadable), Transformer feed-forward Linears included; each
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
  weights of every op its registry covers: MatMul/Gemm, attention projections included, Conv
  as `ConvInteger`, LSTM, and Embedding tables behind a Gather as uint8; biases, norms and GRU
  stay float). The checkpoint deploys to
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
buffers) and dtypes. `stages.rebuild.rebuild_quantized` re-creates the module structure from a
fresh float model (the structural int8 code both share is `stages.int8`); the stage runner
(`stages.runner`) checks that the rebuilt model reproduces the
quantized model's outputs before the checkpoint is used.

Every mode but `none` must leave some weights int8: the stage reports `quantized_fraction`
(int8 share of the weight elements, `stages.metrics.count_weights`) and raises a
SqueezerayError naming the mode's layer types and the model's when it is 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from stages.base import StageInput, StageOutput, StageSpec, check_choice, check_int, check_range
from stages.batches import as_inputs, call
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.int8 import (
    convert_int8,
    dynamic_int8,
    prepare_int8,
    quiet_ao,
    rnn_state_to_tensors,
)
from stages.layers import weight_layer_summary
from stages.masks import MaskedWeights, keep_mask, keep_zeros
from stages.metrics import quantized_fraction
from stages.names import FX_BACKEND, QUANTIZE_MODES
from stages.onnxio import ort_quantize_dynamic, to_onnx_bytes
from stages.rebuild import build_model
from stages.runtime import make_predictor
from stages.tasks import Task
from stages.training import accuracy, fit

CALIBRATION_BATCH_SIZE = 64
QAT_BATCH_SIZE = 64


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


def quantize(inp: StageInput, params: QuantizeParams) -> StageOutput:
    """Quantize the parent model per `params.mode`; metrics: val_accuracy in [0, 1]."""
    parent = inp.require_parent()  # a float model: the runner checked (SPEC.float_parent_fix)
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
        quantized = dynamic_int8(float_model)
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
    "MatMul/Gemm/Conv/LSTM nodes and Embedding lookups (Gather)",
}


def _require_some_int8(
    ckpt: ModelCheckpoint, task: Task, parent: ModelCheckpoint, mode: str
) -> float:
    """The checkpoint's quantized_fraction; a SqueezerayError when it is 0 (nothing is int8)."""
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
    prepared = prepare_int8(model, "static_int8", task.example_input(1))
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
            call(prepared, as_inputs(x))
    return convert_int8(prepared)


def _qat(
    task: Task,
    model: nn.Module,
    parent: ModelCheckpoint,
    params: QuantizeParams,
    *,
    seed: int,
) -> nn.Module:
    prepared = prepare_int8(model, "qat", task.example_input(2))
    masks = _parent_masks(prepared, parent) if parent.recipe.get("masked") else []
    keep = keep_zeros(masks)
    keep()
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
            after_step=keep if masks else None,
        )
    return convert_int8(prepared)


def _parent_masks(prepared: nn.Module, parent: ModelCheckpoint) -> MaskedWeights:
    """(QAT parameter, keep-mask) for parent weights with exact zeros, matched by name (an
    eager-wrapped inner Linear `<name>.module.weight` matches the parent's `<name>.weight`)."""
    from torch.ao.quantization import QuantWrapper

    wrapped = [n for n, m in prepared.named_modules() if isinstance(m, QuantWrapper)]
    masks: MaskedWeights = []
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
        mask = keep_mask(saved)
        if not bool(mask.all()):
            masks.append((p, mask))
    return masks


def _quantize_onnx(task: Task, parent: ModelCheckpoint) -> StageOutput:
    float_model = build_model(task, parent)
    float_onnx = to_onnx_bytes(
        float_model,
        task.example_input(2),
        what="quantize.mode=onnx_int8",
        fix="use quantize.mode=dynamic_int8 with export.runtime: eager",
    )
    int8_onnx = ort_quantize_dynamic(float_onnx)
    ckpt = replace(parent.with_recipe(quantize="onnx_int8", runtime="onnxruntime"), onnx=int8_onnx)
    fraction = _require_some_int8(ckpt, task, parent, "onnx_int8")
    predictor = make_predictor(task, ckpt)
    return StageOutput(
        ckpt,
        {
            "val_accuracy": predictor.accuracy(task.val, batch_size=task.eval_batch_size),
            "quantized_fraction": fraction,
        },
    )


def _val_accuracy(task: Task, model: nn.Module) -> float:
    return accuracy(model, task.val, device=torch.device("cpu"), batch_size=task.eval_batch_size)


SPEC = StageSpec(
    name="quantize",
    params=QuantizeParams,
    run=quantize,
    float_parent_fix="quantize a float model (one quantize stage, before export)",
    metrics=("val_accuracy", "quantized_fraction"),
)
