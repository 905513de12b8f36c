"""Deployment runtimes: a checkpoint as a callable `(x: Tensor) -> logits Tensor`.

- `eager`: `build_model` (torch module in eval mode, CPU), run under `torch.inference_mode`.
- `torchscript`: that module traced on two test inputs and frozen (`torch.jit.freeze` inlines
  the weights; scripting fails on FX-quantized GraphModules, tracing works for float, dynamic-
  and static-int8 models). A `forward` that branches in Python on its inputs' values is
  refused (`stages.tracing.strict_trace`): the trace would keep one branch.
- `onnxruntime`: an `InferenceSession` on `ckpt.onnx`, CPU provider, sequential execution,
  `threads` intra-op threads and one inter-op thread.

Torch's thread count is process-wide: the torch runtimes use whatever `torch.set_num_threads`
holds when they run (`stages.metrics.measure_latency` sets and restores it); only ONNX
Runtime takes `threads` at construction.

`prepare` + `run_native` split the call so latency is timed on the runtime's own call, without
the (zero-copy) tensor <-> numpy conversion ONNX Runtime needs.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stages.base import check_int
from stages.batches import LogitsOnly, as_args, as_inputs, logits_of
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.rebuild import build_model
from stages.tasks import Task
from stages.tracing import strict_trace


class Predictor:
    """Logits of a checkpoint in its runtime. x: a batch of inputs (a tensor, or a tuple of
    tensors for several model inputs; see `stages.batches`) -> (B, num_classes) logits."""

    runtime: str

    def prepare(self, x: Any) -> Any:
        """The runtime's native input for `x` (done once, outside any timing)."""
        raise NotImplementedError

    def run_native(self, native: Any) -> Any:
        """One forward pass on a prepared input; returns the runtime's native output."""
        raise NotImplementedError

    def to_tensor(self, out: Any) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, *inputs: Any) -> torch.Tensor:
        """(B, num_classes) logits of a batch given as the model's positional inputs (`p(x)`,
        `p(cat_ids, numeric)`) or as one tuple of them, the form a DataLoader yields."""
        return self.to_tensor(self.run_native(self.prepare(_one_batch(inputs))))

    def outputs(
        self, dataset: Dataset, *, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, num_classes) float32, targets (N,) int64) over a dataset of (x, y)."""
        logits, targets = [], []
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits.append(self(x).float())
            targets.append(torch.as_tensor(y).long())
        return torch.cat(logits), torch.cat(targets)

    def accuracy(self, dataset: Dataset, *, batch_size: int = 256) -> float:
        """Top-1 accuracy in [0, 1] on a dataset of (x, y) pairs."""
        correct = total = 0
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            pred = self(x).argmax(dim=1)
            correct += int((pred == y).sum())
            total += int(y.numel())
        return correct / max(total, 1)


def _one_batch(inputs: tuple[Any, ...]) -> Any:
    """The call's inputs as one batch: `(x,)` -> x; several tensors -> their tuple."""
    return inputs[0] if len(inputs) == 1 else inputs


class LoadedModule(nn.Module):
    """A deployed torch model called like the user's model, returning only its logits.

    `m(x)` or `m(cat_ids, numeric)` (or one tuple of the inputs, as a DataLoader yields it)
    -> the (B, num_classes) logits tensor, whatever form the model's own output takes (a
    dict, a tuple, an object with `.logits`). `model`: the wrapped module, the rebuilt eager
    module itself or the frozen TorchScript one; `runtime`: "eager" or "torchscript".
    """

    def __init__(self, model: nn.Module | torch.jit.ScriptModule, runtime: str) -> None:
        super().__init__()
        self.model = model
        self.runtime = runtime

    def forward(self, *inputs: Any) -> torch.Tensor:
        return logits_of(self.model(*as_args(as_inputs(_one_batch(inputs)))))


class TorchPredictor(Predictor):
    """An eager or TorchScript module (CPU)."""

    def __init__(self, module: nn.Module | torch.jit.ScriptModule, runtime: str) -> None:
        self.module = module
        self.runtime = runtime

    def prepare(self, x: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t.detach().to("cpu").contiguous() for t in as_args(as_inputs(x)))

    def run_native(self, native: tuple[torch.Tensor, ...]) -> Any:
        with torch.inference_mode():
            return self.module(*native)

    def to_tensor(self, out: Any) -> torch.Tensor:
        return logits_of(out)


class OnnxPredictor(Predictor):
    """An ONNX Runtime session on the checkpoint's ONNX bytes."""

    runtime = "onnxruntime"

    def __init__(self, onnx_bytes: bytes, *, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [self.session.get_outputs()[0].name]

    def prepare(self, x: Any) -> dict[str, np.ndarray]:
        args = as_args(as_inputs(x))
        if len(args) != len(self.input_names):
            raise SqueezerayError(
                f"the ONNX model takes {len(self.input_names)} inputs "
                f"({', '.join(self.input_names)}) but the batch has {len(args)}"
            )
        return {
            name: np.ascontiguousarray(t.detach().to("cpu").numpy())
            for name, t in zip(self.input_names, args, strict=True)
        }

    def run_native(self, native: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(self.output_names, native)[0]  # type: ignore[no-any-return]

    def to_tensor(self, out: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(out))


def make_predictor(task: Task, ckpt: ModelCheckpoint, *, threads: int = 1) -> Predictor:
    """The checkpoint's runtime as a Predictor (`threads`: ONNX Runtime intra-op threads)."""
    check_int("threads", threads, low=1)
    runtime = ckpt.runtime
    if runtime == "onnxruntime":
        if ckpt.onnx is None:
            raise SqueezerayError(
                "runtime='onnxruntime' but the checkpoint has no ONNX bytes; run the export "
                "stage with export.runtime=onnxruntime (or quantize.mode=onnx_int8)"
            )
        return OnnxPredictor(ckpt.onnx, threads=threads)
    model = build_model(task, ckpt)
    if runtime == "eager":
        return TorchPredictor(model, "eager")
    if runtime == "torchscript":
        return TorchPredictor(_trace_and_freeze(task, model, ckpt), "torchscript")
    raise SqueezerayError(
        f"runtime={runtime!r} is not a runtime; accepted: eager, torchscript, onnxruntime"
    )


def _trace_and_freeze(
    task: Task, model: nn.Module, ckpt: ModelCheckpoint
) -> torch.jit.ScriptModule:
    example = as_args(task.example_input(2))
    what = f"export.runtime='torchscript' (quantize.mode={ckpt.quantize!r})"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript deprecation, benign tracer warnings
            with strict_trace(what, inputs=len(example)):  # but a data-dependent branch is an error
                traced = torch.jit.trace(LogitsOnly(model.eval()).eval(), example)
            return torch.jit.freeze(traced.eval())
    except SqueezerayError:
        raise
    except Exception as exc:  # any tracing failure is a model/runtime mismatch to report
        raise SqueezerayError(
            f"export.runtime='torchscript' does not work for this model with "
            f"quantize.mode={ckpt.quantize!r}: {exc}; use export.runtime=eager"
        ) from exc
