"""Stage `quantize`: smaller weights (int8, int4, half floats) for deployment.

Modes (`quantize.mode`; docs/quantization.md has the user's table with measured speeds):

- `none`: a copy.
- `dynamic_int8`: torch.ao's `quantize_dynamic` (`stages.torch_ao`, the one module still on
  deprecated `torch.ao.quantization`, kept because its fbgemm kernels were the fastest eager CPU
  int8 measured here) on every `nn.Linear`, `nn.GRU` and `nn.LSTM` (int8 weights, activations
  quantized on the fly); each supported `nn.MultiheadAttention` first becomes
  `stages.attention.LinearAttention`, so its projections are int8 too. Conv and Embedding stay
  float. Runtime: eager or torchscript.
- `torchao_dynamic_int8` / `int8_weight_only` / `int4_weight_only`: torchao's `quantize_` with
  `Int8DynamicActivationInt8WeightConfig` / `Int8WeightOnlyConfig` / `Int4WeightOnlyConfig` on
  every nn.Linear (`stages.torchao_quant`); int4 needs the `mslk` kernel package on CPU and is
  refused up front without it. torchao intends `torch.compile` (runtime `compiled`) for speed.
- `static_int8`: PT2E post-training quantization (`stages.pt2e`: `torch.export`, torchao's
  X86InductorQuantizer, `prepare_pt2e`, calibration on `calibration_batches` batches of 64 from
  the train split, `convert_pt2e`): int8 Linear/Conv weights (BatchNorm folded into Conv) and
  uint8 activations. Works on any model `torch.export` captures (Hugging Face models included).
  Eager it is slower than float; runtime `compiled` is its fast path.
- `qat`: PT2E quantization-aware training (`prepare_qat_pt2e`), `qat_epochs` of CE fine-tuning
  with fake quantization, then convert.
- `onnx_int8`: ONNX export of the float model, then ONNX Runtime's dynamic quantization (QInt8
  weights of every op its registry covers: MatMul/Gemm, attention projections included, Conv
  as `ConvInteger`, LSTM, and Embedding tables behind a Gather as uint8; biases, norms and GRU
  stay float).
- `onnx_static_int8`: ONNX export, then ONNX Runtime's static quantization in QDQ format
  (`quantize_static`, int8 per-channel weights, uint8 activations calibrated on
  `calibration_batches` train batches of 64) of the weight-bearing ops only (MatMul/Gemm/Conv
  with a constant weight, `stages.onnxio.weight_nodes`): attention's mask Add stays float.
  Both ONNX modes deploy to ONNX Runtime: the checkpoint's `onnx` bytes are the int8 model, its
  state_dict keeps the float weights for reference (so `build_model` still gives the float
  eager model); `stages.metrics.size_bytes` measures the ONNX bytes.
- `float16` / `bfloat16`: every floating weight cast to that dtype (`stages.casting`), for GPU
  deployment; on CPU measured as it runs (slower than float32 on CPUs without half-precision
  matmul units).

Zeros stay zeros: int8 weights are symmetric (zero point 0), so an exact float zero quantizes
to an exact int8 zero in every mode; QAT re-applies a masked parent's zero pattern after every
optimizer step (matched by parameter name).

A torch-quantized model runs on CPU only here, so this stage always works on CPU.

Checkpoints stay `weights_only`-loadable: torch.ao's packed int8 tuples, torchao's int8
tensors flattened to plain tensors (`stages.torchao_quant.flatten_state`), PT2E's int8
constants as buffers with its activation scales in the recipe (`stages.pt2e`).
`stages.rebuild.rebuild_quantized` re-creates the module structure from a fresh float model;
the stage runner (`stages.runner`) checks that the rebuilt model reproduces the quantized
model's outputs before the checkpoint is used.

Every int8/int4 mode must leave some weights int8: the stage reports `quantized_fraction`
(int8 share of the weight elements, `stages.metrics.count_weights`) and raises a
SqueezerayError naming the mode's layer types and the model's when it is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from stages.base import StageInput, StageOutput, StageSpec, check_choice, check_int, check_range
from stages.batches import Inputs, as_inputs, call, tensors
from stages.casting import cast_model
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.layers import weight_layer_summary
from stages.loading import batches as load_batches
from stages.masks import MaskedWeights, keep_mask, keep_zeros
from stages.metrics import quantized_fraction
from stages.names import CAST_MODES, PT2E_QUANTIZER, QUANTIZE_MODES
from stages.onnxio import ort_quantize_dynamic, ort_quantize_static, to_onnx_bytes
from stages.rebuild import build_model
from stages.runtime import make_predictor
from stages.tasks import Task
from stages.torchao_quant import TORCHAO_MODES, flatten_state, quantize_torchao, require_kernels
from stages.training import accuracy, fit

CALIBRATION_BATCH_SIZE = 64
QAT_BATCH_SIZE = 64


@dataclass(frozen=True)
class QuantizeParams:
    mode: str = "none"
    calibration_batches: int = 8  # static_int8 / onnx_static_int8: batches of 64 train samples
    qat_epochs: int = 3
    lr: float = 1e-4  # QAT fine-tuning: small, the float model is already trained

    def __post_init__(self) -> None:
        check_choice("quantize.mode", self.mode, QUANTIZE_MODES)
        check_int("quantize.calibration_batches", self.calibration_batches, low=1)
        check_int("quantize.qat_epochs", self.qat_epochs, low=1)
        check_range("quantize.lr", self.lr, low=0.0, low_inclusive=False)
        require_kernels(self.mode)  # int4_weight_only without its kernel package: refused now


def quantize(inp: StageInput, params: QuantizeParams) -> StageOutput:
    """Quantize the parent model per `params.mode`; metrics: val_accuracy in [0, 1] and
    quantized_fraction (int8 share of the weight elements) in [0, 1]."""
    parent = inp.require_parent()  # a float model: the runner checked (SPEC.float_parent_fix)
    task = inp.task
    mode = params.mode
    if mode == "none":
        ckpt = parent.with_recipe(quantize="none")
        model = build_model(task, ckpt)
        return StageOutput(
            ckpt,
            {"val_accuracy": _val_accuracy(task, model), "quantized_fraction": 0.0},
            model=model,
        )
    if mode in ("onnx_int8", "onnx_static_int8"):
        return _quantize_onnx(task, parent, params, seed=inp.seed)

    float_model = build_model(task, parent)  # fresh module, CPU, eval
    recipe: dict[str, Any] = {"quantize": mode}
    if mode == "dynamic_int8":
        from stages.torch_ao import dynamic_int8, state_of

        quantized = dynamic_int8(float_model)
        state = state_of(quantized)
    elif mode in TORCHAO_MODES:
        quantized = quantize_torchao(float_model, mode)
        state = flatten_state(quantized.state_dict())
    elif mode in CAST_MODES:
        quantized = cast_model(float_model, mode)
        state = {k: v.detach().clone() for k, v in quantized.state_dict().items()}
    else:  # static_int8, qat: PT2E
        from stages.pt2e import activation_qparams

        quantized = _pt2e(task, float_model, parent, params, seed=inp.seed)
        state = {k: v.detach().clone() for k, v in quantized.state_dict().items()}
        recipe["quantize_backend"] = PT2E_QUANTIZER
        recipe["activation_qparams"] = activation_qparams(quantized)  # type: ignore[arg-type]
    quantized.eval()
    ckpt = ModelCheckpoint(task=task.name, state_dict=state, recipe={**parent.recipe, **recipe})
    fraction = quantized_fraction(ckpt)
    if mode not in CAST_MODES:
        _require_some_int8(fraction, task, parent, mode)
    return StageOutput(
        ckpt,
        {"val_accuracy": _val_accuracy(task, quantized), "quantized_fraction": fraction},
        model=quantized,
    )


_LINEAR_ONLY = "nn.Linear layers (and nn.MultiheadAttention's projections) only"
_WHAT_MODES_QUANTIZE = {
    "dynamic_int8": "dynamic_int8 quantizes nn.Linear, nn.GRU and nn.LSTM layers and "
    "nn.MultiheadAttention's projections only (Conv and Embedding stay float)",
    "torchao_dynamic_int8": f"torchao_dynamic_int8 quantizes {_LINEAR_ONLY}",
    "int8_weight_only": f"int8_weight_only quantizes {_LINEAR_ONLY}",
    "int4_weight_only": f"int4_weight_only quantizes {_LINEAR_ONLY}",
    "static_int8": "static_int8 quantizes the Linear/Conv layers of the torch.export graph",
    "qat": "qat quantizes the Linear/Conv layers of the torch.export graph",
    "onnx_int8": "onnx_int8 (ONNX Runtime dynamic quantization) quantizes the weights of "
    "MatMul/Gemm/Conv/LSTM nodes and Embedding lookups (Gather)",
    "onnx_static_int8": "onnx_static_int8 (ONNX Runtime static QDQ quantization) quantizes "
    "the weights of MatMul/Gemm/Conv nodes",
}


def _require_some_int8(fraction: float, task: Task, parent: ModelCheckpoint, mode: str) -> None:
    """A SqueezerayError when `fraction` (the checkpoint's quantized_fraction) is 0."""
    if fraction == 0.0:
        layers = weight_layer_summary(build_model(task, parent))
        raise SqueezerayError(
            f"quantize.mode={mode!r} quantized no weight of this model: "
            f"{_WHAT_MODES_QUANTIZE[mode]}, and the model has {layers}; "
            "choose another quantize.mode (onnx_int8 covers the most layer types) or "
            "quantize.mode: none"
        )


def calibration_batches(task: Task, count: int, *, seed: int) -> list[Inputs]:
    """`count` shuffled batches of 64 train inputs (fixed by `seed`) for calibration."""
    loader = load_batches(
        task.train,
        batch_size=CALIBRATION_BATCH_SIZE,
        shuffle=True,
        num_workers=task.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    batches: list[Inputs] = []
    for x, _y in loader:
        if len(batches) >= count:
            break
        batches.append(as_inputs(x))
    return batches


def _pt2e(
    task: Task,
    model: nn.Module,
    parent: ModelCheckpoint,
    params: QuantizeParams,
    *,
    seed: int,
) -> nn.Module:
    """static_int8: prepare, calibrate on train batches, convert; qat: prepare for QAT,
    fine-tune with fake quantization (masked zeros kept), convert."""
    from stages.pt2e import convert, prepare, remember

    qat = params.mode == "qat"
    example = task.example_input(2)
    prepared = prepare(model, example, qat=qat, what=f"quantize.mode={params.mode}")
    if not qat:
        with torch.no_grad():
            for x in calibration_batches(task, params.calibration_batches, seed=seed):
                call(prepared, x)
        converted = convert(prepared)
        remember(model, example, converted, qat=qat)  # the runner's rebuild copies it
        return converted
    masks = _parent_masks(prepared, parent) if parent.recipe.get("masked") else []
    keep = keep_zeros(masks)
    keep()
    fit(
        prepared,
        task.train,
        task.val,
        epochs=params.qat_epochs,
        lr=params.lr,
        batch_size=QAT_BATCH_SIZE,
        num_workers=task.num_workers,
        device=torch.device("cpu"),
        seed=seed,
        after_step=keep if masks else None,
        # its fake-quant observers learn their ranges in training: the start has none
        start_is_candidate=False,
    )
    converted = convert(prepared)
    remember(model, example, converted, qat=qat)
    return converted


def _parent_masks(prepared: nn.Module, parent: ModelCheckpoint) -> MaskedWeights:
    """(QAT parameter, keep-mask) for parent weights with exact zeros, matched by name
    (`torch.export` keeps the module path of each parameter, under the wrapper's `model.`)."""
    masks: MaskedWeights = []
    for name, p in prepared.named_parameters():
        parent_name = name.removeprefix("model.")
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


def _quantize_onnx(
    task: Task, parent: ModelCheckpoint, params: QuantizeParams, *, seed: int
) -> StageOutput:
    mode = params.mode
    float_model = build_model(task, parent)
    float_onnx = to_onnx_bytes(
        float_model,
        task.example_input(2),
        what=f"quantize.mode={mode}",
        fix="use quantize.mode=dynamic_int8 with export.runtime: eager",
    )
    if mode == "onnx_int8":
        int8_onnx = ort_quantize_dynamic(float_onnx)
    else:
        batches = calibration_batches(task, params.calibration_batches, seed=seed)
        int8_onnx = ort_quantize_static(float_onnx, [tensors(x) for x in batches])
    ckpt = replace(parent.with_recipe(quantize=mode, runtime="onnxruntime"), onnx=int8_onnx)
    fraction = quantized_fraction(ckpt)
    _require_some_int8(fraction, task, parent, mode)
    predictor = make_predictor(task, ckpt)
    return StageOutput(
        ckpt,
        {
            "val_accuracy": predictor.accuracy(
                task.val, batch_size=task.eval_batch_size, num_workers=task.num_workers
            ),
            "quantized_fraction": fraction,
        },
    )


def _val_accuracy(task: Task, model: nn.Module) -> float:
    return accuracy(
        model,
        task.val,
        device=torch.device("cpu"),
        batch_size=task.eval_batch_size,
        num_workers=task.num_workers,
    )


SPEC = StageSpec(
    name="quantize",
    params=QuantizeParams,
    run=quantize,
    float_parent_fix="quantize a float model (one quantize stage, before export)",
    metrics=("val_accuracy", "quantized_fraction"),
)
