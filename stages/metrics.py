"""The honest metrics of a checkpoint, measured in the runtime it deploys to.

- accuracy: top-1 on the task's test split, in [0, 1], through the checkpoint's runtime
  (reported only); val_accuracy: the same on the validation split (what selects models).
- size_bytes: bytes of the deployed artifact (the ONNX model for ONNX Runtime, else
  `torch.save(state_dict)`) compressed with zstd at level `ZSTD_LEVEL` (1, zstd's fastest
  regular level), streamed: the artifact is never held whole a second time. zstd makes zeros
  (sparsity) cheap and int8 weights take a quarter of float32, so both show. Level 1 costs a
  few ms per MB, linear in the model, a half (float) to a third (sparse) of level 3's CPU for
  0.1-0.7% (float, int8) to 1-2% (sparse) more bytes; level 19 cost 0.2-0.6 s per MB
  (docs/scale.md).
- params_total / params_nonzero: counts of weight and bias elements (int8 ones included).
- quantized_fraction: the share of those elements stored as int8, in [0, 1] (0.0 for a float
  model; for ONNX Runtime, int8/uint8 initializers of the ONNX graph).
- latency: milliseconds per call, median and p90 of single-thread calls, time-boxed and
  stopped once the median is known to `precision` (`stages.latency`).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zstandard

from stages.checkpoint import ModelCheckpoint
from stages.latency import LATENCY_PRECISION, LATENCY_TIME_CAP_S, time_calls, torch_threads
from stages.runtime import Predictor, make_predictor
from stages.tasks import Task

ZSTD_LEVEL = 1  # linear, a few ms/MB; level 3: 2-3x the CPU for <=2% fewer bytes (docs/scale.md)


@dataclass(frozen=True)
class ModelMetrics:
    """One trial's objectives. accuracy in [0, 1]; size in bytes; latency in ms (None when
    not measured)."""

    accuracy: float  # test split (reported, never optimised)
    size_bytes: int
    params_total: int
    params_nonzero: int
    quantized_fraction: float
    latency_ms: float | None
    latency_ms_p90: float | None
    runtime: str
    val_accuracy: float | None = None  # validation split (selects models); None: not measured
    latency_repeats: int | None = None  # timed calls behind latency_ms (time-boxed)
    latency_ci: float | None = None  # half-width of latency_ms's 95% CI / latency_ms
    # seconds torch.compile took when the model was loaded (runtime "compiled"; else None):
    # paid once per process that loads the model, never part of latency_ms
    compile_s: float | None = None
    # the task's own metric (stages.tasks.Metric): {name: test value, "val_" + name: val value}
    custom: dict[str, float] = field(default_factory=dict)


# -- accuracy ------------------------------------------------------------------------------


def accuracy(task: Task, ckpt: ModelCheckpoint) -> float:
    """Top-1 accuracy in [0, 1] on the test split, through the checkpoint's runtime."""
    return make_predictor(task, ckpt).accuracy(
        task.test, batch_size=task.eval_batch_size, num_workers=task.num_workers
    )


# -- size ----------------------------------------------------------------------------------


def deployed_bytes(ckpt: ModelCheckpoint) -> bytes:
    """The uncompressed deployed artifact: ONNX bytes (onnxruntime) or torch.save(state_dict).
    (A copy of the model's bytes: `size_bytes` streams instead.)"""
    if ckpt.runtime == "onnxruntime" and ckpt.onnx is not None:
        return ckpt.onnx
    buf = io.BytesIO()
    torch.save(ckpt.state_dict, buf)
    return buf.getvalue()


class _ByteCounter(io.RawIOBase):
    """A write-only sink that keeps only the number of bytes written to it."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.count += n
        return n


def size_bytes(ckpt: ModelCheckpoint) -> int:
    """Size in bytes of the deployed artifact compressed with zstd at `ZSTD_LEVEL` (1).

    The artifact (the ONNX bytes, or `torch.save(state_dict)` written straight into the
    compressor) is streamed through zstd into a byte counter, so it is never held in memory a
    second time; the cost is linear in the model's bytes (a few ms per MB).
    """
    sink = _ByteCounter()
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    # zstandard takes any object with write(); its stubs name IO[bytes]
    with compressor.stream_writer(sink, closefd=False) as writer:  # type: ignore[arg-type]
        if ckpt.runtime == "onnxruntime" and ckpt.onnx is not None:
            writer.write(ckpt.onnx)
        else:
            torch.save(ckpt.state_dict, writer)
    return sink.count


# -- parameter counts ----------------------------------------------------------------------

# state_dict entries that are bookkeeping, not parameters: BN statistics, quantization scales
# and zero points (per layer `net.0.scale`, per activation `net_0_input_scale_0`).
_NOT_PARAMS = {"running_mean", "running_var", "num_batches_tracked", "scale", "zero_point"}
_ACTIVATION_QPARAM = re.compile(r"_(scale|zero_point)_\d+$")
_PACKED_SUFFIX = "._packed_params._packed_params"
# Plain int8 tensors that hold weights: torchao's flattened tensors (`<layer>.weight:qdata`,
# stages.torchao_quant) and PT2E's folded int8 constants (`_frozen_param0`, stages.pt2e).
_INT8_WEIGHT = re.compile(r"(:qdata|(^|\.)_frozen_param\d+)$")
_TORCHAO_INNER = ":"  # other inner tensors of a flattened torchao tensor: scales, zero points


@dataclass(frozen=True)
class WeightCounts:
    """Element counts of a checkpoint's deployed weights and biases.

    total: every weight/bias element; nonzero: those not (de)quantizing to 0; int8: those
    stored as 8-bit integers (torch qint8/quint8 tensors, torchao's and PT2E's int8 weight
    tensors, ONNX int8/uint8 initializers).
    """

    total: int
    nonzero: int
    int8: int

    @property
    def quantized_fraction(self) -> float:
        """int8 / total in [0, 1]; 0.0 for a model without weights."""
        return self.int8 / self.total if self.total else 0.0


def count_weights(ckpt: ModelCheckpoint) -> WeightCounts:
    """Total, nonzero and int8 element counts of the deployed weights and biases.

    torch checkpoints: every float or quantized tensor of the state_dict except BN statistics
    and quantization scales/zero points; packed quantized Linear (weight, bias) tuples are
    unpacked; an int8 element counts as zero when it dequantizes to 0 (its int value equals the
    zero point), so weights that int8 rounds to zero count as zeros. ONNX checkpoints: the
    float and int8 initializers of rank >= 1 except `*_scale`/`*_zero_point`.
    """
    if ckpt.runtime == "onnxruntime" and ckpt.onnx is not None:
        return _count_onnx(ckpt.onnx)
    total = nonzero = int8 = 0
    for key, value in ckpt.state_dict.items():
        if isinstance(value, torch.Tensor) and _INT8_WEIGHT.search(key):
            n = value.numel()  # symmetric int8 (zero point 0): an int 0 is a zero weight
            total, nonzero, int8 = total + n, nonzero + int(torch.count_nonzero(value)), int8 + n
            continue
        if _TORCHAO_INNER in key:
            continue
        if key.endswith(_PACKED_SUFFIX) and isinstance(value, tuple):
            tensors = [t for t in value if isinstance(t, torch.Tensor)]
        elif isinstance(value, torch.Tensor):
            leaf = key.rsplit(".", 1)[-1]
            if leaf in _NOT_PARAMS or _ACTIVATION_QPARAM.search(leaf):
                continue
            tensors = [value]
        else:
            continue  # dtypes and other packed metadata
        for t in tensors:
            n, nz = _count_tensor(t)
            total += n
            nonzero += nz
            if t.is_quantized and t.dtype in (torch.qint8, torch.quint8):
                int8 += n
    return WeightCounts(total=total, nonzero=nonzero, int8=int8)


def count_params(ckpt: ModelCheckpoint) -> tuple[int, int]:
    """(params_total, params_nonzero) of `count_weights`."""
    counts = count_weights(ckpt)
    return counts.total, counts.nonzero


def quantized_fraction(ckpt: ModelCheckpoint) -> float:
    """The share of weight/bias elements stored as int8, in [0, 1] (`count_weights`)."""
    return count_weights(ckpt).quantized_fraction


def _count_tensor(t: torch.Tensor) -> tuple[int, int]:
    # count_nonzero allocates nothing; `(t != 0).sum()` summed an int64 copy (2x a float32 model)
    if t.is_quantized:
        return t.numel(), int(torch.count_nonzero(t.dequantize()))
    if not t.is_floating_point():
        return 0, 0  # integer buffers (counters, indices) are not parameters
    return t.numel(), int(torch.count_nonzero(t))


def _count_onnx(onnx_bytes: bytes) -> WeightCounts:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    total = nonzero = int8 = 0
    for init in model.graph.initializer:
        if init.name.endswith(("_scale", "_zero_point")):
            continue
        array = numpy_helper.to_array(init)
        # int64 initializers are shapes/axes; rank-0 ones are constants, not weights
        if array.ndim == 0 or array.dtype.kind not in "fiu" or array.dtype == np.int64:
            continue
        total += int(array.size)
        nonzero += int(np.count_nonzero(array))
        if array.dtype in (np.int8, np.uint8):
            int8 += int(array.size)
    return WeightCounts(total=total, nonzero=nonzero, int8=int8)


def evaluate(
    task: Task,
    ckpt: ModelCheckpoint,
    *,
    latency: bool = True,
    threads: int = 1,
    batch_size: int = 1,
    warmup: int = 50,
    repeats: int = 300,
    time_cap_s: float = LATENCY_TIME_CAP_S,
    precision: float = LATENCY_PRECISION,
) -> ModelMetrics:
    """All trial metrics of a checkpoint, one predictor built for accuracy and latency (the
    model runs on the checkpoint's own tensors: `make_predictor(share_weights=True)`).

    accuracy on the test split and val_accuracy on the validation split, in [0, 1], in
    batches of `task.eval_batch_size`;
    size_bytes (zstd of the deployed artifact); params; quantized_fraction (share of weight
    elements stored as int8, in [0, 1]); latency_ms / latency_ms_p90 = median / p90 ms of
    single-thread calls on `batch_size` rows (`latency.batch_size`, as the final latency
    phase times them), time-boxed to `time_cap_s` seconds of timed calls and stopped once known
    to +-`precision` (`measure_latency`), latency_repeats = the calls timed and latency_ci =
    the median's 95% CI half-width / median (None when `latency=False`).
    """
    with torch_threads(threads):
        predictor = make_predictor(task, ckpt, threads=threads, share_weights=True)
        acc, val_acc, custom = split_scores(task, predictor)
        timing = (
            time_calls(
                predictor,
                task,
                batch_size=batch_size,
                warmup=warmup,
                repeats=repeats,
                time_cap_s=time_cap_s,
                precision=precision,
            )
            if latency
            else None
        )
    counts = count_weights(ckpt)
    return ModelMetrics(
        accuracy=acc,
        size_bytes=size_bytes(ckpt),
        params_total=counts.total,
        params_nonzero=counts.nonzero,
        quantized_fraction=counts.quantized_fraction,
        latency_ms=timing.median_ms if timing else None,
        latency_ms_p90=timing.p90_ms if timing else None,
        latency_repeats=timing.repeats if timing else None,
        latency_ci=timing.ci if timing else None,
        runtime=predictor.runtime,
        compile_s=predictor.compile_s,
        val_accuracy=val_acc,
        custom=custom,
    )


def split_scores(task: Task, predictor: Predictor) -> tuple[float, float, dict[str, float]]:
    """(test accuracy, validation accuracy, the task's own metric) through the checkpoint's
    runtime, each split run through the model once. The metric's dict is {name: value on the
    test split, "val_" + name: on the validation split}, empty when the task has none (then
    accuracy streams and no logits are kept)."""
    metric = task.metric
    batch = task.eval_batch_size
    if metric is None:
        test = predictor.accuracy(task.test, batch_size=batch, num_workers=task.num_workers)
        val = predictor.accuracy(task.val, batch_size=batch, num_workers=task.num_workers)
        return test, val, {}
    accuracy: dict[str, float] = {}
    custom: dict[str, float] = {}
    for prefix, split in (("", task.test), ("val_", task.val)):
        logits, targets = predictor.outputs(split, batch_size=batch, num_workers=task.num_workers)
        correct = int((logits.argmax(dim=1) == targets).sum())
        accuracy[prefix] = correct / max(int(targets.numel()), 1)
        custom[prefix + metric.name] = metric(logits, targets)
    return accuracy[""], accuracy["val_"], custom
