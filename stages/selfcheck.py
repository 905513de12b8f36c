"""The checkpoint round trip of the stage contract: a stage's output must rebuild from its bytes.

`stages.runner.run_stage` calls `check_output` after every stage. It serializes the stage's
checkpoint (into memory, or straight into the file a `CheckpointFile` names: then the bytes
on disk are what is checked), loads the bytes back as the stage cache and every later stage
will (`torch.load(weights_only=True)`), rebuilds the model in the
checkpoint's runtime and compares its logits with the stage's in-memory model on a batch of
test inputs. A checkpoint that does not rebuild, or rebuilds into another function, is the
stage's own `SqueezerayError`, raised before anything is cached or reported.

Tolerances (max |rebuilt - in-memory| over the batch, relative to max(1, max |logits|)):
`FLOAT_TOLERANCE` for float models (TorchScript freezing and ONNX Runtime reorder float
sums), `INT8_TOLERANCE` for torch-quantized and half-cast ones (a rounding flip moves a value
by one quantization step).
"""

from __future__ import annotations

from typing import Protocol

import torch

from stages.base import StageOutput
from stages.batches import forward_logits, logits_of
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.names import TORCH_QUANT_MODES
from stages.onnxio import varying_axes
from stages.runtime import make_predictor
from stages.tasks import Task

FLOAT_TOLERANCE = 1e-4
INT8_TOLERANCE = 1e-2
CHECK_BATCH = 8  # test inputs run through both models

_REPORT = "this is a bug in how the stage records its changes: please report it with the model"
# Known limits with a workaround: PT2E state that a fresh export does not reproduce.
_PT2E_FIX = "use quantize.mode=dynamic_int8, int8_weight_only or onnx_int8 for this model"
_FIXES = {("quantize", "static_int8"): _PT2E_FIX, ("quantize", "qat"): _PT2E_FIX}


class CheckpointFile(Protocol):
    """A local file a stage's checkpoint is serialised into (a stage task's cache file before
    it is renamed into place)."""

    def write(self, ckpt: ModelCheckpoint) -> str:
        """Serialise `ckpt` (`ModelCheckpoint.save`) into the file; return its path."""
        ...


@torch.no_grad()
def check_output(
    task: Task, stage: str, out: StageOutput, *, into: CheckpointFile | None = None
) -> memoryview | None:
    """The checkpoint's bytes (a read-only view, serialised once: these are the bytes that are
    cached and passed on), once its rebuild from them reproduces `out.model`; with `into`,
    None: the bytes were written to its file, and the file is what was loaded and checked
    (its tensors mapped, not copied: `ModelCheckpoint.from_file`).

    Cost: one serialisation, one load and one rebuild of the model (linear in its bytes), and
    two forward passes on `CHECK_BATCH` inputs; the loaded copy is released before the
    in-memory model runs.

    Raises SqueezerayError naming `stage` when the bytes do not load, the model does not
    rebuild or run, or its logits differ from the in-memory model's by more than the tolerance.
    Errors writing `into`'s file pass through as they are.
    """
    ckpt = out.checkpoint
    data = ckpt.to_buffer() if into is None else None
    path = into.write(ckpt) if into is not None else None
    x = task.example_input(min(CHECK_BATCH, len(task.test)))  # type: ignore[arg-type]
    what = f"stage {stage!r} (quantize={ckpt.quantize!r}, runtime={ckpt.runtime!r})"
    fix = _FIXES.get((stage, ckpt.quantize), _REPORT)
    try:
        loaded = ModelCheckpoint.from_file(path) if path else ModelCheckpoint.from_bytes(data)
        got = make_predictor(task, loaded, share_weights=True)(x)
        del loaded  # its tensors: no second copy of the model alive beside the stage's
    except Exception as exc:  # a checkpoint that does not rebuild is this stage's fault
        raise SqueezerayError(
            f"{what} wrote a checkpoint that does not rebuild: {type(exc).__name__}: {exc}; {fix}"
        ) from exc
    if out.model is not None:
        model = out.model.to("cpu").eval()
        expected = forward_logits(model, x)
    else:  # an ONNX artifact: the in-memory checkpoint in its runtime
        expected = make_predictor(task, ckpt)(x)
    differ = logits_differ(got, expected, ckpt.quantize)
    if differ:
        raise SqueezerayError(
            f"{what}: the model rebuilt from its checkpoint computes other logits than the "
            f"stage's model ({differ} on {int(expected.shape[0])} test inputs); the checkpoint "
            f"is not cached; {fix}"
        )
    return data


def logits_differ(got: torch.Tensor, expected: torch.Tensor, quantize: str) -> str:
    """Why `got` is not `expected` up to the noise of `quantize`'s arithmetic ("" when it is):
    max |got - expected| above `FLOAT_TOLERANCE` (or `INT8_TOLERANCE` for torch-quantized and
    half-cast models) x max(1, max |expected|), or NaNs in other places. Used for the
    checkpoint round trip and for a runtime's outputs against the eager model's (export)."""
    got, expected = got.detach().float().cpu(), expected.detach().float().cpu()
    if got.shape != expected.shape:
        return f"logits of shape {tuple(got.shape)}, not {tuple(expected.shape)}"
    tolerance = INT8_TOLERANCE if quantize in TORCH_QUANT_MODES else FLOAT_TOLERANCE
    scale = max(1.0, float(expected.abs().nan_to_num(0.0).max()))
    diff = (got - expected).abs().nan_to_num(0.0)
    same_nan = bool((got.isnan() == expected.isnan()).all())
    worst = float(diff.max()) if diff.numel() else 0.0
    if not same_nan:
        return "NaN logits in other places"
    if worst > tolerance * scale:
        return f"max abs difference {worst:.3g} > {tolerance:g} x {scale:.3g}"
    return ""


def traced_axes(
    traced: torch.jit.ScriptModule,
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    quantize: str,
) -> list[list[int]]:
    """Per input, the non-batch axes at which `traced`, a TorchScript trace of `model` (both
    called on the positional tensors `args`: `batches.LogitsOnly`), gives `model`'s logits at
    another length too (`onnxio.varying_axes`, each probe compared by `logits_differ`). A trace
    keeps a size it read as a constant: there the export states the traced size."""

    def same_as_model(probe: tuple[torch.Tensor, ...], got: torch.Tensor) -> bool:
        return not logits_differ(got, logits_of(model(*probe)), quantize)

    return varying_axes(traced, args, check=same_as_model)
