"""Names of modes and runtimes that several stages (and the orchestrator) agree on.

Plain tuples of strings, no torch: `orchestrator` imports them in Tune trial coordinators.
The stage that owns each name documents what it does (`stages.quantize`, `stages.export`).
"""

from __future__ import annotations

RUNTIMES: tuple[str, ...] = ("eager", "torchscript", "onnxruntime")
"""Deployment runtimes (`export.runtime`, a checkpoint's `recipe["runtime"]`)."""

QUANTIZE_MODES: tuple[str, ...] = ("none", "dynamic_int8", "static_int8", "qat", "onnx_int8")
"""`quantize.mode` values."""

TORCH_INT8_MODES: tuple[str, ...] = ("dynamic_int8", "static_int8", "qat")
"""Modes whose model is torch-quantized: it deploys in eager/TorchScript only (quantized torch
ops do not go through `torch.export`, so not to ONNX Runtime)."""

PRUNE_METHODS: tuple[str, ...] = ("l1_unstructured", "global", "structured", "random")
"""`prune.method` values; the first is the default."""

UNSTRUCTURED_PRUNE_METHODS: tuple[str, ...] = ("l1_unstructured", "global", "random")
"""Methods that zero weights in place (the layers keep their shapes and hold the zeros):
`lowrank` leaves such layers whole, since dense SVD factors would undo the pruning."""

FX_BACKEND = "x86"
"""torch.ao backend of static_int8/qat (fbgemm + onednn kernels; x86 torch builds' default)."""

__all__ = [
    "FX_BACKEND",
    "PRUNE_METHODS",
    "QUANTIZE_MODES",
    "RUNTIMES",
    "TORCH_INT8_MODES",
    "UNSTRUCTURED_PRUNE_METHODS",
]
