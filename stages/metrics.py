"""The honest metrics of a checkpoint, measured in the runtime it deploys to.

- accuracy: top-1 on the task's test split, in [0, 1], through the checkpoint's runtime
  (reported only); val_accuracy: the same on the validation split (what selects models).
- size_bytes: bytes of the zstd-compressed (level 19) deployed artifact: the ONNX model for
  ONNX Runtime, else `torch.save(state_dict)`. zstd makes zeros (sparsity) cheap and int8
  weights take a quarter of float32, so both show.
- params_total / params_nonzero: counts of weight and bias elements (int8 ones included).
- quantized_fraction: the share of those elements stored as int8, in [0, 1] (0.0 for a float
  model; for ONNX Runtime, int8/uint8 initializers of the ONNX graph).
- latency: milliseconds per call, median and p90 of many single-thread batch-1 calls after a
  warm-up (timing noise measured here: 8-11% single thread, 23-36% with two threads).
"""

from __future__ import annotations

import gc
import io
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zstandard

from stages.base import check_int
from stages.batches import Inputs, select, stack_samples
from stages.checkpoint import ModelCheckpoint
from stages.runtime import Predictor, make_predictor
from stages.tasks import Task

ZSTD_LEVEL = 19  # near-max ratio; a digits model compresses in milliseconds
_LATENCY_DISTINCT_INPUTS = 32  # cycle through this many test batches, not one cached input


@dataclass(frozen=True)
class LatencyResult:
    """Per-call wall time of `repeats` calls, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    batch_size: int
    runtime: str


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
    # the task's own metric (stages.tasks.Metric): {name: test value, "val_" + name: val value}
    custom: dict[str, float] = field(default_factory=dict)


# -- accuracy ------------------------------------------------------------------------------


def accuracy(task: Task, ckpt: ModelCheckpoint) -> float:
    """Top-1 accuracy in [0, 1] on the test split, through the checkpoint's runtime."""
    return make_predictor(task, ckpt).accuracy(task.test)


# -- size ----------------------------------------------------------------------------------


def deployed_bytes(ckpt: ModelCheckpoint) -> bytes:
    """The uncompressed deployed artifact: ONNX bytes (onnxruntime) or torch.save(state_dict)."""
    if ckpt.runtime == "onnxruntime" and ckpt.onnx is not None:
        return ckpt.onnx
    buf = io.BytesIO()
    torch.save(ckpt.state_dict, buf)
    return buf.getvalue()


def size_bytes(ckpt: ModelCheckpoint) -> int:
    """Size in bytes of the zstd(level 19)-compressed deployed artifact."""
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(deployed_bytes(ckpt)))


# -- parameter counts ----------------------------------------------------------------------

# state_dict entries that are bookkeeping, not parameters: BN statistics, quantization scales
# and zero points (per layer `net.0.scale`, per activation `net_0_input_scale_0`).
_NOT_PARAMS = {"running_mean", "running_var", "num_batches_tracked", "scale", "zero_point"}
_ACTIVATION_QPARAM = re.compile(r"_(scale|zero_point)_\d+$")
_PACKED_SUFFIX = "._packed_params._packed_params"


@dataclass(frozen=True)
class WeightCounts:
    """Element counts of a checkpoint's deployed weights and biases.

    total: every weight/bias element; nonzero: those not (de)quantizing to 0; int8: those
    stored as 8-bit integers (torch qint8/quint8 tensors, ONNX int8/uint8 initializers).
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
    if t.is_quantized:
        return t.numel(), int((t.dequantize() != 0).sum())
    if not t.is_floating_point():
        return 0, 0  # integer buffers (counters, indices) are not parameters
    return t.numel(), int((t != 0).sum())


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


# -- latency -------------------------------------------------------------------------------


def measure_latency(
    task: Task,
    ckpt: ModelCheckpoint,
    *,
    batch_size: int = 1,
    warmup: int = 50,
    repeats: int = 300,
    threads: int = 1,
) -> LatencyResult:
    """Milliseconds per forward call in the checkpoint's runtime (median, p90, mean).

    Runs with `threads` torch threads (restored afterwards) and `threads` ONNX Runtime intra-op
    threads; inputs are `batch_size` rows of the test split (cycling through a few batches);
    `warmup` untimed calls first, then `repeats` calls each timed with `perf_counter_ns`.
    """
    check_int("threads", threads, low=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = make_predictor(task, ckpt, threads=threads)
        return _time_calls(predictor, task, batch_size=batch_size, warmup=warmup, repeats=repeats)
    finally:
        torch.set_num_threads(previous)


def throughput(
    task: Task,
    ckpt: ModelCheckpoint,
    *,
    batch_size: int = 256,
    warmup: int = 5,
    repeats: int = 30,
    threads: int = 1,
) -> float:
    """Samples per second at `batch_size` (from the median call time)."""
    result = measure_latency(
        task, ckpt, batch_size=batch_size, warmup=warmup, repeats=repeats, threads=threads
    )
    return batch_size / (result.median_ms / 1e3)


def _time_calls(
    predictor: Predictor, task: Task, *, batch_size: int, warmup: int, repeats: int
) -> LatencyResult:
    check_int("latency.batch_size", batch_size, low=1)
    check_int("latency.warmup", warmup, low=0)
    check_int("latency.repeats", repeats, low=1)
    inputs = [predictor.prepare(x) for x in _test_batches(task, batch_size)]
    times_ms = _timed_ms(predictor, inputs, warmup=warmup, repeats=repeats)
    return LatencyResult(
        median_ms=float(np.median(times_ms)),
        p90_ms=float(np.percentile(times_ms, 90)),
        mean_ms=float(times_ms.mean()),
        repeats=repeats,
        batch_size=batch_size,
        runtime=predictor.runtime,
    )


def _timed_ms(predictor: Predictor, inputs: list[Any], *, warmup: int, repeats: int) -> np.ndarray:
    """`warmup` untimed calls, then `repeats` calls each timed (ms), GC off while timing."""
    for i in range(warmup):
        predictor.run_native(inputs[i % len(inputs)])
    times_ns = np.empty(repeats, dtype=np.int64)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not the model's latency
    try:
        for i in range(repeats):
            native = inputs[i % len(inputs)]
            start = time.perf_counter_ns()
            predictor.run_native(native)
            times_ns[i] = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return times_ns / 1e6


@dataclass(frozen=True)
class RoundsLatency:
    """One model's latency over interleaved rounds (`interleaved_latency`), in milliseconds.

    median_ms: the median over rounds of each round's median call time; p90_ms: the 90th
    percentile of every timed call of every round; cv: the robust coefficient of variation of
    the round medians (`robust_cv`: scaled median absolute deviation / median, so one round in
    a slow spell of the machine does not flag a steady model); speedup: the median over rounds
    of reference / this model's round median (paired per round, so a slow spell of the machine
    that hits both cancels out; 1.0 for the reference itself); round_medians_ms: each round's
    median.
    """

    median_ms: float
    p90_ms: float
    cv: float
    speedup: float
    rounds: int
    round_medians_ms: tuple[float, ...]
    runtime: str


def robust_cv(values: np.ndarray) -> float:
    """The spread of `values` relative to their median: 1.4826 * MAD / median (the median
    absolute deviation scaled to estimate the standard deviation of normal data; Rousseeuw &
    Croux 1993). Unlike stdev / mean, one outlier among >= 3 values barely moves it. 0.0 for a
    median of 0."""
    median = float(np.median(values))
    if median <= 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - median))) / median


def interleaved_latency(
    task: Task,
    ckpts: list[ModelCheckpoint],
    *,
    rounds: int = 7,
    warmup: int = 50,
    repeats: int = 300,
    batch_size: int = 1,
    threads: int = 1,
) -> list[RoundsLatency]:
    """Time `ckpts` side by side: every round times each model in turn (ckpts[0], the
    reference, first), `repeats` calls each after a short re-warm; one `RoundsLatency` per
    checkpoint, in order.

    Interleaving puts every model under the same conditions within a round, and the paired
    per-round ratio to the reference cancels a drift of the machine's speed between rounds
    (on shared hosts batch-1 latency has slow spells of seconds: bench/RESULTS.md §3). Each
    predictor is built once and warmed up with `warmup` calls before the first round.
    """
    check_int("latency.rounds", rounds, low=1)
    check_int("latency.warmup", warmup, low=0)
    check_int("latency.repeats", repeats, low=1)
    check_int("threads", threads, low=1)
    if not ckpts:
        return []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictors = [make_predictor(task, c, threads=threads) for c in ckpts]
        batches = _test_batches(task, batch_size)
        inputs = [[p.prepare(x) for x in batches] for p in predictors]
        for p, xs in zip(predictors, inputs, strict=True):
            _timed_ms(p, xs, warmup=warmup, repeats=1)
        rewarm = min(warmup, 10)
        times: list[list[np.ndarray]] = [[] for _ in ckpts]
        for _ in range(rounds):
            for i, (p, xs) in enumerate(zip(predictors, inputs, strict=True)):
                times[i].append(_timed_ms(p, xs, warmup=rewarm, repeats=repeats))
    finally:
        torch.set_num_threads(previous)
    medians = np.array([[float(np.median(t)) for t in per_model] for per_model in times])
    out = []
    for i, p in enumerate(predictors):
        m = medians[i]
        ratios = medians[0] / m
        out.append(
            RoundsLatency(
                median_ms=float(np.median(m)),
                p90_ms=float(np.percentile(np.concatenate(times[i]), 90)),
                cv=robust_cv(m),
                speedup=float(np.median(ratios)),
                rounds=rounds,
                round_medians_ms=tuple(float(v) for v in m),
                runtime=p.runtime,
            )
        )
    return out


def _test_batches(task: Task, batch_size: int) -> list[Inputs]:
    """A few distinct batches of `batch_size` test samples (wrapping); tuple inputs stay
    tuples and dtypes are kept (`stages.batches`)."""
    n = len(task.test)  # type: ignore[arg-type]
    xs = stack_samples([task.test[i][0] for i in range(n)])
    count = max(1, min(_LATENCY_DISTINCT_INPUTS, n // batch_size))
    return [select(xs, (torch.arange(batch_size) + j * batch_size) % n) for j in range(count)]


# -- everything at once --------------------------------------------------------------------


def evaluate(
    task: Task,
    ckpt: ModelCheckpoint,
    *,
    latency: bool = True,
    threads: int = 1,
    warmup: int = 50,
    repeats: int = 300,
) -> ModelMetrics:
    """All trial metrics of a checkpoint, one predictor built for accuracy and latency.

    accuracy on the test split and val_accuracy on the validation split, in [0, 1];
    size_bytes (zstd of the deployed artifact); params; quantized_fraction (share of weight
    elements stored as int8, in [0, 1]); latency_ms / latency_ms_p90 = median / p90 ms of
    single-thread batch-1 calls (None when `latency=False`).
    """
    check_int("threads", threads, low=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = make_predictor(task, ckpt, threads=threads)
        acc = predictor.accuracy(task.test)
        val_acc = predictor.accuracy(task.val)
        custom = task_metric_values(task, predictor)
        timing = (
            _time_calls(predictor, task, batch_size=1, warmup=warmup, repeats=repeats)
            if latency
            else None
        )
    finally:
        torch.set_num_threads(previous)
    counts = count_weights(ckpt)
    return ModelMetrics(
        accuracy=acc,
        size_bytes=size_bytes(ckpt),
        params_total=counts.total,
        params_nonzero=counts.nonzero,
        quantized_fraction=counts.quantized_fraction,
        latency_ms=timing.median_ms if timing else None,
        latency_ms_p90=timing.p90_ms if timing else None,
        runtime=predictor.runtime,
        val_accuracy=val_acc,
        custom=custom,
    )


def task_metric_values(task: Task, predictor: Predictor) -> dict[str, float]:
    """{name: value on the test split, "val_" + name: on the validation split} of the task's
    own metric (empty when it has none), through the checkpoint's runtime."""
    metric = task.metric
    if metric is None:
        return {}
    out = {}
    for prefix, split in (("", task.test), ("val_", task.val)):
        logits, targets = predictor.outputs(split)
        out[prefix + metric.name] = metric(logits, targets)
    return out
