"""Stage `export`: choose the deployment runtime (`export.runtime`).

- `eager`: the torch module as `build_model` rebuilds it.
- `torchscript`: the module traced and frozen at load (`stages.runtime`); checked here, so a
  model that does not trace fails in this stage with its name rather than at measurement.
- `onnxruntime`: ONNX export (`torch.onnx.export(dynamo=True)`, the legacy TorchScript-based
  exporter as fallback) with a dynamic batch axis; the bytes travel in `ModelCheckpoint.onnx`,
  the float state_dict stays beside them. A torch-quantized (or half-cast) model is not
  exported to ONNX: quantize with `quantize.mode=onnx_int8`/`onnx_static_int8` instead.
- `compiled`: the module through `torch.compile` (Inductor) at load (`stages.runtime`);
  compiled here once too, so a model Inductor cannot compile fails in this stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from stages.base import StageInput, StageOutput, StageSpec, check_choice
from stages.batches import forward_logits
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.names import RUNTIMES, TORCH_QUANT_MODES
from stages.onnxio import to_onnx_bytes
from stages.rebuild import build_model
from stages.runtime import Predictor, make_predictor
from stages.selfcheck import logits_differ
from stages.tasks import Task


@dataclass(frozen=True)
class ExportParams:
    runtime: str = "eager"

    def __post_init__(self) -> None:
        check_choice("export.runtime", self.runtime, RUNTIMES)


def export(inp: StageInput, params: ExportParams) -> StageOutput:
    """Set the deployment runtime; metrics: val_accuracy in [0, 1] through that runtime."""
    parent = inp.require_parent()
    task = inp.task
    runtime = params.runtime
    if parent.runtime == "onnxruntime" and parent.onnx is not None:
        # an ONNX quantize mode already produced the ONNX Runtime artifact.
        if runtime != "onnxruntime":
            raise SqueezerayError(
                f"export.runtime={runtime!r} cannot deploy quantize.mode={parent.quantize!r} "
                "(an ONNX Runtime int8 model); accepted: export.runtime=onnxruntime, or another "
                "quantize.mode"
            )
        predictor = make_predictor(task, parent)
        val_acc = predictor.accuracy(
            task.val, batch_size=task.eval_batch_size, num_workers=task.num_workers
        )
        return StageOutput(parent, {"val_accuracy": val_acc})

    if runtime == "onnxruntime" and parent.quantize in TORCH_QUANT_MODES:
        raise SqueezerayError(
            f"export.runtime=onnxruntime cannot export a torch-quantized model "
            f"(quantize.mode={parent.quantize!r}): squeezeray quantizes for ONNX Runtime in "
            "ONNX itself; use quantize.mode=onnx_int8 or onnx_static_int8, or "
            "export.runtime=eager/torchscript/compiled"
        )
    model = build_model(task, parent)
    onnx_bytes = to_onnx_bytes(model, task.example_input(2)) if runtime == "onnxruntime" else None
    ckpt = replace(parent.with_recipe(runtime=runtime), onnx=onnx_bytes)
    predictor = make_predictor(task, ckpt)  # traces / opens the session: a failure names it
    if runtime != "eager":
        _check_same_outputs(task, model, predictor, ckpt)
    val_acc = predictor.accuracy(
        task.val, batch_size=task.eval_batch_size, num_workers=task.num_workers
    )
    return StageOutput(ckpt, {"val_accuracy": val_acc}, model=model)


def _check_same_outputs(
    task: Task, model: nn.Module, predictor: Predictor, ckpt: ModelCheckpoint
) -> None:
    """The exported runtime must compute what the eager model computes, up to the noise of the
    model's arithmetic (`selfcheck.logits_differ`: int8 kernels fused by Inductor round
    otherwise than the eager int8 ops, by about a quantization step)."""
    x = task.example_input(min(16, len(task.test)))  # type: ignore[arg-type]
    with torch.no_grad():
        expected = forward_logits(model, x)
    differ = logits_differ(predictor(x), expected, ckpt.quantize)
    if differ:
        raise SqueezerayError(
            f"export.runtime={ckpt.runtime!r} (quantize.mode={ckpt.quantize!r}) gives other "
            f"outputs than the eager model ({differ}); use export.runtime=eager"
        )


SPEC = StageSpec(name="export", params=ExportParams, run=export, metrics=("val_accuracy",))
