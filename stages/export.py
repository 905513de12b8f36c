"""Stage `export`: choose the deployment runtime (`export.runtime`).

- `eager`: the torch module as `build_model` rebuilds it.
- `torchscript`: the module traced and frozen at load (`stages.runtime`); checked here, so a
  model that does not trace fails in this stage with its name rather than at measurement.
- `onnxruntime`: ONNX export (`torch.onnx.export(dynamo=True)`, the legacy TorchScript-based
  exporter as fallback) with a dynamic batch axis; the bytes travel in `ModelCheckpoint.onnx`,
  the float state_dict stays beside them. A torch-quantized model cannot be exported to ONNX
  (`torch.export` rejects quantized ops): quantize with `quantize.mode=onnx_int8` instead.
"""

from __future__ import annotations

import inspect
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from stages.base import StageInput, StageOutput, StageSpec, check_choice
from stages.batches import Inputs, LogitsOnly, as_args, batch_size, concat, forward_logits
from stages.checkpoint import RUNTIMES, ModelCheckpoint, build_model
from stages.errors import SqueezerayError
from stages.quantize import TORCH_INT8_MODES
from stages.runtime import Predictor, make_predictor
from stages.tasks import Task

ONNX_INPUT = "x"
ONNX_OUTPUT = "logits"


@dataclass(frozen=True)
class ExportParams:
    runtime: str = "eager"

    def __post_init__(self) -> None:
        check_choice("export.runtime", self.runtime, RUNTIMES)


@contextmanager
def quiet_logging() -> Iterator[None]:
    """Mute warnings and WARNING-level log lines (the ONNX exporter's 'torchvision is not
    installed', ORT's 'consider pre-processing') for the block; the previous state returns."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def onnx_input_names(count: int, *, model: nn.Module | None = None) -> list[str]:
    """The ONNX input names of a model called with `count` positional inputs.

    The names of `model.forward`'s first `count` positional parameters (`inspect.signature`)
    when it has that many; else "x" for one input, "x0", "x1", ... for several.
    """
    if model is not None:
        try:
            params = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):
            params = []
        positional = [
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != ONNX_OUTPUT
        ]
        if len(positional) >= count and len(set(positional[:count])) == count:
            return positional[:count]
    return [ONNX_INPUT] if count == 1 else [f"{ONNX_INPUT}{i}" for i in range(count)]


def _varying_axes(t: torch.Tensor) -> list[int]:
    """Non-batch axes left dynamic in the ONNX model: every axis >= 1 of an integer (token
    id) input, so a text model takes other sequence lengths; float inputs keep their shape."""
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return []
    return list(range(1, t.dim()))


def to_onnx_bytes(model: nn.Module, example_input: Inputs) -> bytes:
    """Serialized ONNX model of `model` (eval mode): one input per model argument (named as
    in `model.forward`, see `onnx_input_names`; dtypes as given, so int64 ids stay int64), each
    with a dynamic batch axis, and one output, the logits (a tuple or `.logits` output is
    reduced to them). Integer inputs' other axes (a sequence length) are dynamic too where the
    model allows: with the dynamo exporter they are `Dim.AUTO`, so a model that needs a fixed
    length (e.g. a learned position table added whole) keeps the example's length instead of
    failing; with the legacy exporter they are named dynamic axes.

    The dynamo exporter comes first (it folds BatchNorm into Conv and was the fastest in ONNX
    Runtime here); a model it cannot export goes through the legacy exporter.
    """
    wrapped = LogitsOnly(model.eval()).eval()
    if batch_size(example_input) < 2:  # torch.export specializes a size-1 dim: use >= 2 rows
        example_input = concat([example_input, example_input])
    args = as_args(example_input)
    names = onnx_input_names(len(args), model=model)
    tensors = [a if isinstance(a, torch.Tensor) else torch.empty(0) for a in args]
    try:
        batch = torch.export.Dim("batch")
        # LogitsOnly.forward(*args): the specs of all inputs nest in one tuple, for `args`.
        dynamic_shapes = (
            tuple(
                {0: batch, **{axis: torch.export.Dim.AUTO for axis in _varying_axes(t)}}
                for t in tensors
            ),
        )
        with quiet_logging():
            program = torch.onnx.export(
                wrapped,
                args,
                dynamo=True,
                input_names=names,
                output_names=[ONNX_OUTPUT],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
        if program is None:
            raise RuntimeError("the dynamo exporter returned no program")
        return bytes(program.model_proto.SerializeToString())
    except Exception as dynamo_error:
        buf = io.BytesIO()
        try:
            with quiet_logging():
                torch.onnx.export(
                    wrapped,
                    args,
                    buf,  # type: ignore[arg-type]  # file-like works (legacy exporter)
                    dynamo=False,
                    input_names=names,
                    output_names=[ONNX_OUTPUT],
                    dynamic_axes={
                        **{
                            name: {
                                0: "batch",
                                **{axis: f"{name}_dim{axis}" for axis in _varying_axes(t)},
                            }
                            for name, t in zip(names, tensors, strict=True)
                        },
                        ONNX_OUTPUT: {0: "batch"},
                    },
                )
        except Exception as legacy_error:
            raise SqueezerayError(
                f"export.runtime=onnxruntime: ONNX export failed with both exporters "
                f"(dynamo: {dynamo_error}; legacy: {legacy_error}); use export.runtime=eager "
                "or torchscript for this model"
            ) from legacy_error
        return buf.getvalue()


def export(inp: StageInput, params: ExportParams) -> StageOutput:
    """Set the deployment runtime; metrics: val_accuracy in [0, 1] through that runtime."""
    parent = inp.parent
    if parent is None:
        raise SqueezerayError("stage export needs a parent checkpoint (a trained model)")
    task = inp.task
    runtime = params.runtime
    if parent.runtime == "onnxruntime" and parent.onnx is not None:
        # quantize.mode=onnx_int8 already produced the ONNX Runtime artifact.
        if runtime != "onnxruntime":
            raise SqueezerayError(
                f"export.runtime={runtime!r} cannot deploy quantize.mode={parent.quantize!r} "
                "(an ONNX Runtime int8 model); accepted: export.runtime=onnxruntime, or another "
                "quantize.mode"
            )
        predictor = make_predictor(task, parent)
        return StageOutput(parent, {"val_accuracy": predictor.accuracy(task.val)})

    if runtime == "onnxruntime" and parent.quantize in TORCH_INT8_MODES:
        raise SqueezerayError(
            f"export.runtime=onnxruntime cannot export a torch-quantized model "
            f"(quantize.mode={parent.quantize!r}): quantized torch ops do not go through "
            "torch.export; use quantize.mode=onnx_int8 to quantize for ONNX Runtime, or "
            "export.runtime=eager/torchscript"
        )
    model = build_model(task, parent)
    onnx_bytes = to_onnx_bytes(model, task.example_input(2)) if runtime == "onnxruntime" else None
    ckpt = replace(parent.with_recipe(runtime=runtime), onnx=onnx_bytes)
    predictor = make_predictor(task, ckpt)  # traces / opens the session: a failure names it
    if runtime != "eager":
        _check_same_outputs(task, model, predictor, ckpt)
    return StageOutput(ckpt, {"val_accuracy": predictor.accuracy(task.val)}, model=model)


def _check_same_outputs(
    task: Task, model: nn.Module, predictor: Predictor, ckpt: ModelCheckpoint
) -> None:
    """The exported runtime must compute what the eager model computes (up to float noise)."""
    x = task.example_input(min(16, len(task.test)))  # type: ignore[arg-type]
    with torch.no_grad():
        expected = forward_logits(model, x)
    got = predictor(x)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else "shape"
        raise SqueezerayError(
            f"export.runtime={ckpt.runtime!r} (quantize.mode={ckpt.quantize!r}) gives other "
            f"outputs than the eager model (max abs diff {diff}); use export.runtime=eager"
        )


SPEC = StageSpec(name="export", params=ExportParams, run=export)
