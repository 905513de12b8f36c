"""Deployment runtimes: a checkpoint as a callable `(x) -> logits Tensor`.

Every runtime takes the task's inputs as the task's samples give them: a tensor, several
positional tensors, or named tensors (`p(input_ids=..., attention_mask=...)` or one dict of
them), see `stages.batches`. A traced runtime (TorchScript, ONNX) takes named inputs by name
whatever their order in the call.

- `eager`: `build_model` (torch module in eval mode, CPU), run under `torch.inference_mode`.
- `torchscript`: that module traced on two test inputs and frozen (`torch.jit.freeze` inlines
  the weights; scripting fails on FX-quantized GraphModules, tracing works for float, dynamic-
  and static-int8 models). A `forward` that branches in Python on its inputs' values is
  refused (`stages.tracing.strict_trace`): the trace would keep one branch. The traced
  forward's arguments are the card's input names (`batches.named_logits`): the module is
  called by name (`ts(**batch)`) or positionally in that order.
- `compiled`: the eager module through `torch.compile` (Inductor, CPU: generated C++ kernels;
  for PT2E int8 graphs Inductor fuses the quantize/dequantize pairs into int8 kernels, the
  path torchao intends for CPU speed). Compiled when the predictor is made, by two warm-up
  calls (batch 1, then batch 2, after which the batch axis is dynamic): that compile time is
  paid once per process that loads the model and is reported as `Predictor.compile_s`
  (seconds), apart from latency.
- `onnxruntime`: an `InferenceSession` on `ckpt.onnx`, CPU provider, sequential execution,
  `threads` intra-op threads and one inter-op thread.

Torch's thread count is process-wide: the torch runtimes use whatever `torch.set_num_threads`
holds when they run (`stages.latency.measure_latency` sets and restores it); only ONNX
Runtime takes `threads` at construction.

`prepare` + `run_native` split the call so latency is timed on the runtime's own call, without
the (zero-copy) tensor <-> numpy conversion ONNX Runtime needs.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from stages.base import check_int
from stages.batches import (
    Inputs,
    as_inputs,
    call,
    input_names,
    logits_of,
    named_logits,
    tensors,
)
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.loading import batches
from stages.names import RUNTIMES
from stages.onnxio import model_input_names
from stages.rebuild import build_model
from stages.tasks import DEFAULT_EVAL_BATCH_SIZE, Task
from stages.tracing import strict_trace


class Predictor:
    """Logits of a checkpoint in its runtime. x: a batch of inputs (a tensor, a tuple of
    tensors for several model inputs, or a dict of named tensors; see `stages.batches`) ->
    (B, num_classes) logits."""

    runtime: str
    # seconds the warm-up compile took in this process (runtime compiled; caches shorten it)
    compile_s: float | None = None

    def prepare(self, x: Any) -> Any:
        """The runtime's native input for `x` (done once, outside any timing)."""
        raise NotImplementedError

    def run_native(self, native: Any) -> Any:
        """One forward pass on a prepared input; returns the runtime's native output."""
        raise NotImplementedError

    def to_tensor(self, out: Any) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, *inputs: Any, **named: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits of a batch given as the model's positional inputs (`p(x)`,
        `p(cat_ids, numeric)`), as one tuple or dict of them (the form a DataLoader yields),
        or by keyword (`p(input_ids=ids, attention_mask=mask)`)."""
        return self.to_tensor(self.run_native(self.prepare(_one_batch(inputs, named))))

    def outputs(
        self,
        dataset: Dataset,
        *,
        batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
        num_workers: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, num_classes) float32, targets (N,) int64) over a dataset of (x, y)."""
        logits, targets = [], []
        for x, y in batches(dataset, batch_size=batch_size, num_workers=num_workers):
            logits.append(self(x).float())
            targets.append(torch.as_tensor(y).long())
        return torch.cat(logits), torch.cat(targets)

    def accuracy(
        self,
        dataset: Dataset,
        *,
        batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
        num_workers: int = 0,
    ) -> float:
        """Top-1 accuracy in [0, 1] on a dataset of (x, y) pairs, in order, in batches of
        `batch_size` (rows use their task's `eval_batch_size`)."""
        correct = total = 0
        for x, y in batches(dataset, batch_size=batch_size, num_workers=num_workers):
            pred = self(x).argmax(dim=1)
            correct += int((pred == y).sum())
            total += int(y.numel())
        return correct / max(total, 1)


def _one_batch(inputs: tuple[Any, ...], named: dict[str, Any]) -> Any:
    """The call's inputs as one batch: `(x,)` -> x; several tensors -> their tuple; keyword
    tensors -> their dict."""
    if named:
        if inputs:
            raise SqueezerayError(
                "pass the inputs either positionally or by keyword, not both "
                f"(got {len(inputs)} positional and {', '.join(named)} by keyword)"
            )
        return named
    return inputs[0] if len(inputs) == 1 else inputs


def ordered(x: Inputs, names: tuple[str, ...] | None) -> tuple[torch.Tensor, ...]:
    """`x` as the positional tensors of a traced model whose inputs are `names` (None: a model
    traced on positional inputs). Named inputs are taken by name, so their order in `x` does
    not matter; positional inputs are taken in order. Raises SqueezerayError when a named
    input is missing or unknown, or the count differs."""
    if names is not None and isinstance(x, dict):
        missing = [n for n in names if n not in x]
        extra = [k for k in x if k not in names]
        if missing or extra:
            raise SqueezerayError(
                f"the model takes inputs {', '.join(names)}; got {', '.join(x)}"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {', '.join(extra)})" if extra else "")
            )
        return tuple(x[n] for n in names)
    args = tensors(x)
    if names is not None and len(args) != len(names):
        raise SqueezerayError(
            f"the model takes {len(names)} inputs ({', '.join(names)}) but the batch has "
            f"{len(args)}; pass them by name"
        )
    if names is None and isinstance(x, dict):
        raise SqueezerayError(f"the model takes positional inputs; got named inputs {', '.join(x)}")
    return args


class LoadedModule(nn.Module):
    """A deployed torch model called like the user's model, returning only its logits.

    `m(x)`, `m(cat_ids, numeric)`, `m(input_ids=..., attention_mask=...)` (or one tuple or
    dict of the inputs, as a DataLoader yields it) -> the (B, num_classes) logits tensor,
    whatever form the model's own output takes (a dict, a tuple, an object with `.logits`).
    `model`: the wrapped module, the rebuilt eager module itself or the frozen TorchScript
    one; `runtime`: "eager" or "torchscript"; `names`: the input names a TorchScript module
    was traced with (named inputs), None otherwise.
    """

    def __init__(
        self,
        model: nn.Module | torch.jit.ScriptModule,
        runtime: str,
        *,
        names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.runtime = runtime
        self.names = names

    def forward(self, *inputs: Any, **named: torch.Tensor) -> torch.Tensor:
        x = as_inputs(_one_batch(inputs, named))
        if self.runtime == "torchscript":
            return logits_of(self.model(*ordered(x, self.names)))
        return logits_of(call(self.model, x))


class TorchPredictor(Predictor):
    """An eager or TorchScript module (CPU). An eager module gets the inputs as the task gives
    them (named ones by keyword); a TorchScript one, traced on positional tensors, gets them
    in its traced order (`names`: its input names, for named inputs; see `ordered`)."""

    def __init__(
        self,
        module: nn.Module | torch.jit.ScriptModule,
        runtime: str,
        *,
        names: tuple[str, ...] | None = None,
    ) -> None:
        self.module = module
        self.runtime = runtime
        self.names = names

    def prepare(self, x: Any) -> Inputs | tuple[torch.Tensor, ...]:
        inputs = as_inputs(x)
        if self.runtime == "torchscript":
            return tuple(t.detach().to("cpu").contiguous() for t in ordered(inputs, self.names))
        return _contiguous_cpu(inputs)

    def run_native(self, native: Inputs | tuple[torch.Tensor, ...]) -> Any:
        with torch.inference_mode():
            if self.runtime == "torchscript":
                return self.module(*tensors(native))
            return call(self.module, native)

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
        inputs = as_inputs(x)
        # named inputs by name; positional ones in the graph's order
        names = tuple(self.input_names) if isinstance(inputs, dict) else None
        args = ordered(inputs, names)
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


def _contiguous_cpu(x: Inputs) -> Inputs:
    if isinstance(x, dict):
        return {k: t.detach().to("cpu").contiguous() for k, t in x.items()}
    args = tuple(t.detach().to("cpu").contiguous() for t in tensors(x))
    return args if isinstance(x, tuple) else args[0]


def make_predictor(
    task: Task, ckpt: ModelCheckpoint, *, threads: int = 1, share_weights: bool = False
) -> Predictor:
    """The checkpoint's runtime as a Predictor (`threads`: ONNX Runtime intra-op threads;
    `share_weights`: see `stages.rebuild.build_model`, for a checkpoint loaded only to be run)."""
    check_int("threads", threads, low=1)
    runtime = ckpt.runtime
    if runtime == "onnxruntime":
        if ckpt.onnx is None:
            raise SqueezerayError(
                "runtime='onnxruntime' but the checkpoint has no ONNX bytes; run the export "
                "stage with export.runtime=onnxruntime (or quantize.mode=onnx_int8)"
            )
        return OnnxPredictor(ckpt.onnx, threads=threads)
    model = build_model(task, ckpt, share_weights=share_weights)
    if runtime == "eager":
        return TorchPredictor(model, "eager")
    if runtime == "torchscript":
        names = input_names(task.example_input(1))
        return TorchPredictor(_trace_and_freeze(task, model, ckpt), "torchscript", names=names)
    if runtime == "compiled":
        return _compiled(task, model, ckpt)
    raise SqueezerayError(f"runtime={runtime!r} is not a runtime; accepted: {', '.join(RUNTIMES)}")


def _compiled(task: Task, model: nn.Module, ckpt: ModelCheckpoint) -> TorchPredictor:
    """`torch.compile(model)` (Inductor), compiled now by a batch-1 and a batch-2 call; the
    seconds that took are the predictor's `compile_s`: this process's cost, less than a fresh
    process pays when Inductor's in-process or on-disk caches already hold the graph."""
    compiled = torch.compile(model)
    predictor = TorchPredictor(compiled, "compiled")  # type: ignore[arg-type]
    start = time.perf_counter()
    try:
        for rows in (1, 2):
            predictor.run_native(predictor.prepare(task.example_input(rows)))
    except Exception as exc:  # a model Inductor cannot compile: name the runtime and the way out
        raise SqueezerayError(
            f"export.runtime='compiled' does not work for this model with "
            f"quantize.mode={ckpt.quantize!r}: torch.compile failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); use export.runtime=eager"
        ) from exc
    predictor.compile_s = time.perf_counter() - start
    return predictor


def _trace_and_freeze(
    task: Task, model: nn.Module, ckpt: ModelCheckpoint
) -> torch.jit.ScriptModule:
    """`model` traced on two test inputs (positionally: named inputs in the task's key order,
    passed on by keyword through `LogitsOnly`) and frozen. Its forward's arguments are the
    card's input names (`stages.onnxio.model_input_names`, `batches.named_logits`), so the
    module is called positionally in that order or by name (`ts(**batch)`)."""
    x = task.example_input(2)
    example = tensors(x)
    wrapped = named_logits(model.eval(), input_names(x), model_input_names(x, model)).eval()
    what = f"export.runtime='torchscript' (quantize.mode={ckpt.quantize!r})"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript deprecation, benign tracer warnings
            with strict_trace(what, inputs=len(example)):  # but a data-dependent branch is an error
                traced = torch.jit.trace(wrapped, example)
            return torch.jit.freeze(traced.eval())
    except SqueezerayError:
        raise
    except Exception as exc:  # any tracing failure is a model/runtime mismatch to report
        raise SqueezerayError(
            f"export.runtime='torchscript' does not work for this model with "
            f"quantize.mode={ckpt.quantize!r}: {exc}; use export.runtime=eager"
        ) from exc
