"""Names of modes and runtimes that several stages (and the orchestrator) agree on.

Plain tuples of strings, no torch: `orchestrator` imports them in Tune trial coordinators.
The stage that owns each name documents what it does (`stages.quantize`, `stages.export`,
`stages.runtime`); docs/quantization.md is the user's table of them.
"""

from __future__ import annotations

RUNTIMES: tuple[str, ...] = ("eager", "torchscript", "onnxruntime", "compiled")
"""Deployment runtimes (`export.runtime`, a checkpoint's `recipe["runtime"]`, the results'
`runtime` column). `compiled` is the eager module through `torch.compile` (Inductor, CPU),
compiled once when the model is loaded (its compile time is paid then, per process, and is
reported apart from latency)."""

QUANTIZE_MODES: tuple[str, ...] = (
    "none",
    "dynamic_int8",
    "torchao_dynamic_int8",
    "int8_weight_only",
    "int4_weight_only",
    "static_int8",
    "qat",
    "onnx_int8",
    "onnx_static_int8",
    "float16",
    "bfloat16",
)
"""`quantize.mode` values (docs/quantization.md)."""

TORCH_INT8_MODES: tuple[str, ...] = (
    "dynamic_int8",
    "torchao_dynamic_int8",
    "int8_weight_only",
    "static_int8",
    "qat",
)
"""Modes whose torch model stores int8 weights (torch.ao, torchao or PT2E)."""

PRUNE_METHODS: tuple[str, ...] = ("l1_unstructured", "global", "structured", "random")
"""`prune.method` values; the first is the default."""

UNSTRUCTURED_PRUNE_METHODS: tuple[str, ...] = ("l1_unstructured", "global", "random")
"""Methods that zero weights in place (the layers keep their shapes and hold the zeros):
`lowrank` leaves such layers whole, since dense SVD factors would undo the pruning."""

CAST_MODES: tuple[str, ...] = ("float16", "bfloat16")
"""Modes that cast the floating weights to a half-width float dtype (for GPU deployment)."""

TORCH_QUANT_MODES: tuple[str, ...] = (*TORCH_INT8_MODES, "int4_weight_only", *CAST_MODES)
"""Modes whose model is a torch module with non-float32 weights: it deploys in eager,
torchscript or compiled, never to ONNX Runtime (quantized torch models are not exported to
ONNX here; quantize for ONNX Runtime with an ONNX mode instead)."""

ONNX_QUANT_MODES: tuple[str, ...] = ("onnx_int8", "onnx_static_int8")
"""Modes whose artifact is an ONNX Runtime int8 model: they always deploy to onnxruntime."""

PT2E_MODES: tuple[str, ...] = ("static_int8", "qat")
"""Modes quantized through PT2E (`stages.pt2e`): an exported int8 graph, not a module tree."""

PT2E_QUANTIZER = "x86_inductor"
"""The PT2E quantizer of static_int8/qat (torchao's X86InductorQuantizer), recorded in the
recipe as `quantize_backend`."""

__all__ = [
    "CAST_MODES",
    "ONNX_QUANT_MODES",
    "PRUNE_METHODS",
    "PT2E_MODES",
    "PT2E_QUANTIZER",
    "QUANTIZE_MODES",
    "RUNTIMES",
    "TORCH_INT8_MODES",
    "TORCH_QUANT_MODES",
    "UNSTRUCTURED_PRUNE_METHODS",
]
