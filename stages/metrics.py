"""The honest metrics of a checkpoint, measured in the runtime it deploys to.

- accuracy: top-1 on the task's test split, in [0, 1], through the checkpoint's runtime
  (reported only); val_accuracy: the same on the validation split (what selects models).
- size_bytes: bytes of the deployed artifact (the ONNX model for ONNX Runtime, else
  `torch.save(state_dict)`) compressed with zstd at level `ZSTD_LEVEL` (3, zstd's default),
  streamed: the artifact is never held whole a second time. zstd makes zeros (sparsity) cheap
  and int8 weights take a quarter of float32, so both show. Level 3 costs a few ms per MB,
  linear in the model; level 19 (used before) cost 0.2-0.6 s per MB, superlinear, and was at
  most 0.02% smaller on float/int8 models and 5-15% smaller on 70%-sparse ones (docs/scale.md).
- params_total / params_nonzero: counts of weight and bias elements (int8 ones included).
- quantized_fraction: the share of those elements stored as int8, in [0, 1] (0.0 for a float
  model; for ONNX Runtime, int8/uint8 initializers of the ONNX graph).
- latency: milliseconds per call, median and p90 of single-thread batch-1 calls after a
  warm-up (timing noise measured here: 8-11% single thread, 23-36% with two threads),
  time-boxed: the warm-up's last calls time the model, and the timed calls are as many as fit
  in `time_cap_s` seconds (at most `repeats`, at least `MIN_REPEATS`), stopping sooner once
  the median is known to `precision` (its 95% confidence interval within +-precision of it,
  `median_ci`); single-thread calls during which the OS descheduled the measuring thread are
  dropped (`running_calls`); `LatencyResult.repeats` (the row's `latency_repeats_sweep`) says
  how many counted and `LatencyResult.ci` (`latency_ci_sweep`) how precise the median is.
"""

from __future__ import annotations

import gc
import io
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zstandard

from stages.base import check_int
from stages.batches import Inputs, stack_samples
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.runtime import Predictor, make_predictor
from stages.tasks import Task

ZSTD_LEVEL = 3  # zstd's default: linear, a few ms/MB (level 19: 0.2-0.6 s/MB, docs/scale.md)
_LATENCY_DISTINCT_INPUTS = 32  # cycle through this many test batches, not one cached input
LATENCY_TIME_CAP_S = 0.5  # seconds of timed calls per measurement (`latency.time_cap`)
MIN_REPEATS = 5  # timed calls taken even when one call is longer than the time cap
# Stop timing once the median's 95% confidence interval is within +-2% of it (`latency.precision`):
# run-to-run noise of single-thread latency is 8-11% here, so more calls sharpen a figure the
# next run would not repeat; a noisy machine never reaches it and runs to the time cap.
LATENCY_PRECISION = 0.02
MIN_PRECISION_REPEATS = 20  # timed calls before precision may stop the timing
PRECISION_CHECK_EVERY = 10  # timed calls between two checks of the precision
MIN_ROUND_REPEATS = 3  # the same per round of `interleaved_latency` (7 rounds: 21 calls)
WARMUP_SHARE = 0.25  # the warm-up stops after this share of the time cap
PREEMPTED_SHARE = 0.1  # a call whose thread was off the CPU this share of its wall time: dropped


@dataclass(frozen=True)
class LatencyResult:
    """Per-call wall time of `repeats` calls, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    batch_size: int
    runtime: str
    ci: float = math.nan  # half-width of the median's 95% CI / median (`median_ci`)


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
    """Size in bytes of the deployed artifact compressed with zstd at `ZSTD_LEVEL` (3).

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


# -- latency -------------------------------------------------------------------------------


def measure_latency(
    task: Task,
    ckpt: ModelCheckpoint,
    *,
    batch_size: int = 1,
    warmup: int = 50,
    repeats: int = 300,
    threads: int = 1,
    time_cap_s: float = LATENCY_TIME_CAP_S,
    precision: float = LATENCY_PRECISION,
) -> LatencyResult:
    """Milliseconds per forward call in the checkpoint's runtime (median, p90, mean).

    Runs with `threads` torch threads (restored afterwards) and `threads` ONNX Runtime intra-op
    threads; inputs are `batch_size` rows of the test split (cycling through a few batches).
    Time-boxed (`_time_calls`): at most `warmup` untimed calls, then as many calls as fit in
    `time_cap_s` seconds (at most `repeats`, at least `MIN_REPEATS`), each timed with
    `perf_counter_ns`, stopping sooner once the median's 95% CI is within +-`precision` of it
    (0: never; `median_ci`); `LatencyResult.repeats` is the number taken, `.ci` the precision
    reached. Raises SqueezerayError for a knob out of range.
    """
    check_int("threads", threads, low=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = make_predictor(task, ckpt, threads=threads, share_weights=True)
        return _time_calls(
            predictor,
            task,
            batch_size=batch_size,
            warmup=warmup,
            repeats=repeats,
            time_cap_s=time_cap_s,
            precision=precision,
        )
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
    time_cap_s: float = LATENCY_TIME_CAP_S,
) -> float:
    """Samples per second at `batch_size` (from the median call time)."""
    result = measure_latency(
        task,
        ckpt,
        batch_size=batch_size,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        time_cap_s=time_cap_s,
    )
    return batch_size / (result.median_ms / 1e3)


def _check_time_cap(time_cap_s: float) -> None:
    if not isinstance(time_cap_s, int | float) or not time_cap_s > 0 or time_cap_s == float("inf"):
        raise SqueezerayError(
            f"latency.time_cap={time_cap_s!r} is not accepted; accepted: a number of seconds "
            "> 0 (or a duration such as 2s), e.g. 1.0"
        )


def check_precision(precision: float) -> None:
    """`latency.precision` must be a share in [0, 1): 0 turns the early stop off."""
    number = isinstance(precision, int | float) and not isinstance(precision, bool)
    if not number or not 0 <= precision < 1:
        raise SqueezerayError(
            f"latency.precision={precision!r} is not accepted; accepted: a share in [0, 1), "
            "the half-width of the median's 95% confidence interval at which timing stops "
            "(e.g. 0.02 for +-2%; 0 times as many calls as fit in latency.time_cap)"
        )


def median_ci(times: np.ndarray) -> float:
    """The half-width of a 95% confidence interval of the median of `times`, relative to the
    median. Below 6 values no interval reaches 95%: the range's half-width stands in (the
    interval between the smallest and the largest of 5 values holds the median 94% of the
    time), so a figure from a few calls is never reported as precise; nan for one value.

    Distribution-free: the interval between the order statistics of ranks n/2 -+ 1.96 sqrt(n)/2
    (the binomial count of values below the median, normal approximation; Conover, Practical
    Nonparametric Statistics, 3rd ed., 3.2), so a skewed or heavy-tailed timing distribution
    needs no model. Timing calls are not independent (the machine drifts): the interval says
    how well this run's median is known, not what the next run will measure."""
    n = int(times.size)
    if n < 2:
        return math.nan
    ordered = np.sort(times)
    half = 1.96 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1) if n >= 6 else 0
    high = min(n - 1, math.ceil(n / 2 + half)) if n >= 6 else n - 1
    median = float(np.median(ordered))
    if median <= 0:
        return math.nan
    return float(ordered[high] - ordered[low]) / (2 * median)


def _time_calls(
    predictor: Predictor,
    task: Task,
    *,
    batch_size: int,
    warmup: int,
    repeats: int,
    time_cap_s: float = LATENCY_TIME_CAP_S,
    precision: float = LATENCY_PRECISION,
) -> LatencyResult:
    check_int("latency.batch_size", batch_size, low=1)
    check_int("latency.warmup", warmup, low=0)
    check_int("latency.repeats", repeats, low=1)
    _check_time_cap(time_cap_s)
    check_precision(precision)
    inputs = [predictor.prepare(x) for x in _test_batches(task, batch_size)]
    per_call_s = _warm_up(predictor, inputs, warmup=warmup, time_cap_s=time_cap_s)
    planned = planned_repeats(per_call_s, repeats=repeats, time_cap_s=time_cap_s)
    times_ms = _timed_ms(
        predictor, inputs, warmup=0, repeats=planned, time_cap_s=time_cap_s, precision=precision
    )
    return LatencyResult(
        median_ms=float(np.median(times_ms)),
        p90_ms=float(np.percentile(times_ms, 90)),
        mean_ms=float(times_ms.mean()),
        repeats=int(times_ms.size),
        batch_size=batch_size,
        runtime=predictor.runtime,
        ci=median_ci(times_ms),
    )


def planned_repeats(
    per_call_s: float, *, repeats: int, time_cap_s: float, least: int = MIN_REPEATS
) -> int:
    """Timed calls for a model whose call takes `per_call_s` seconds: as many as fit in
    `time_cap_s`, at most `repeats`, at least `least` (or `repeats` when smaller)."""
    fit = int(time_cap_s / per_call_s) if per_call_s > 0 else repeats
    return max(min(repeats, least), min(repeats, fit))


def _warm_up(predictor: Predictor, inputs: list[Any], *, warmup: int, time_cap_s: float) -> float:
    """At most `warmup` calls (at least one), stopping once `WARMUP_SHARE * time_cap_s` seconds
    have passed; returns the first timing: the median seconds per call of the last three."""
    deadline_ns = time.perf_counter_ns() + int(WARMUP_SHARE * time_cap_s * 1e9)
    durations_ns: list[int] = []
    for i in range(max(1, warmup)):
        start = time.perf_counter_ns()
        predictor.run_native(inputs[i % len(inputs)])
        end = time.perf_counter_ns()
        durations_ns.append(end - start)
        if end >= deadline_ns:
            break
    return float(np.median(durations_ns[-3:])) / 1e9


def _timed_ms(
    predictor: Predictor,
    inputs: list[Any],
    *,
    warmup: int,
    repeats: int,
    time_cap_s: float | None = None,
    precision: float = 0.0,
) -> np.ndarray:
    """`warmup` untimed calls, then up to `repeats` calls each timed (ms), GC off while timing.

    With `time_cap_s`, timing also stops once twice that many seconds have passed and
    `MIN_REPEATS` calls are taken (a first timing that was too fast does not run on); with
    `precision` > 0, once `MIN_PRECISION_REPEATS` calls are taken and the median's 95% CI is
    within +-precision of it (`median_ci`, checked every `PRECISION_CHECK_EVERY` calls). The
    returned array holds the calls actually timed that kept their CPU (`running_calls`).
    """
    for i in range(warmup):
        predictor.run_native(inputs[i % len(inputs)])
    times_ns = np.empty(repeats, dtype=np.int64)
    off_cpu_ns = np.empty(repeats, dtype=np.int64)
    stop_ns = time.perf_counter_ns() + int(2e9 * time_cap_s) if time_cap_s is not None else None
    taken = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not the model's latency
    try:
        for i in range(repeats):
            times_ns[i], off_cpu_ns[i] = _timed_call(predictor, inputs[i % len(inputs)])
            end = time.perf_counter_ns()
            taken = i + 1
            if stop_ns is not None and end >= stop_ns and taken >= MIN_REPEATS:
                break
            if _precise_enough(times_ns[:taken], precision):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return running_calls(times_ns[:taken], off_cpu_ns[:taken]) / 1e6


def _precise_enough(times_ns: np.ndarray, precision: float) -> bool:
    """Whether timing may stop: `precision` > 0, at least `MIN_PRECISION_REPEATS` calls, a
    check every `PRECISION_CHECK_EVERY` calls, and the median known to +-precision."""
    n = int(times_ns.size)
    if precision <= 0 or n < MIN_PRECISION_REPEATS or n % PRECISION_CHECK_EVERY:
        return False
    return median_ci(times_ns) <= precision


def _timed_call(predictor: Predictor, native: Any) -> tuple[int, int]:
    """(wall ns, ns this thread was off the CPU) of one call: the wall time minus the
    thread's CPU time (`time.thread_time_ns`, read outside the wall window, so the off-CPU
    time is never overstated)."""
    cpu_start = time.thread_time_ns()
    start = time.perf_counter_ns()
    predictor.run_native(native)
    wall = time.perf_counter_ns() - start
    return wall, max(0, wall - (time.thread_time_ns() - cpu_start))


def running_calls(times_ns: np.ndarray, off_cpu_ns: np.ndarray) -> np.ndarray:
    """The timed calls during which the measuring thread kept its CPU (off the CPU at most
    `PREEMPTED_SHARE` of the call), when at least `MIN_REPEATS` (or all) calls did; else all.

    On a host whose cores are shared, the OS deschedules a call for a time slice of
    milliseconds with a chance that grows with the call's length: a 1 ms call is hit ten
    times as often as a 0.1 ms one, so wall-time medians overstate the slower model and its
    ratio to a fast one, however the calls are interleaved. A single-thread call's work all
    runs on this thread, so a call whose wall time exceeds its thread's CPU time was
    descheduled. With more than one torch thread the work runs on others too: every call is
    kept.
    """
    if torch.get_num_threads() != 1 or times_ns.size == 0:
        return times_ns
    kept = times_ns[off_cpu_ns <= PREEMPTED_SHARE * times_ns]
    return kept if kept.size >= min(MIN_REPEATS, times_ns.size) else times_ns


@dataclass(frozen=True)
class RoundsLatency:
    """One model's latency over interleaved rounds (`interleaved_latency`), in milliseconds.

    median_ms: the median over rounds of each round's median call time; p90_ms: the 90th
    percentile of every timed call of every round; cv: the robust coefficient of variation of
    the round medians (`robust_cv`: scaled median absolute deviation / median, so one round in
    a slow spell of the machine does not flag a steady model); speedup: the median over rounds
    of reference / this model's round median (paired per round, so a slow spell of the machine
    that hits both cancels out; 1.0 for the reference itself); round_medians_ms: each round's
    median; repeats: the timed calls of all rounds together.
    """

    median_ms: float
    p90_ms: float
    cv: float
    speedup: float
    rounds: int
    round_medians_ms: tuple[float, ...]
    runtime: str
    repeats: int = 0  # timed calls over all rounds


def robust_cv(values: np.ndarray) -> float:
    """The spread of `values` relative to their median: 1.4826 * MAD / median (the median
    absolute deviation scaled to estimate the standard deviation of normal data; Rousseeuw &
    Croux 1993). Unlike stdev / mean, one outlier among >= 3 values barely moves it. 0.0 for a
    median of 0."""
    median = float(np.median(values))
    if median <= 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - median))) / median


TURNS_PER_ROUND = 10  # each round's calls of every model are taken in this many alternating turns


def interleaved_latency(
    task: Task,
    ckpts: list[ModelCheckpoint],
    *,
    rounds: int = 7,
    warmup: int = 50,
    repeats: int = 300,
    batch_size: int = 1,
    threads: int = 1,
    time_cap_s: float = LATENCY_TIME_CAP_S,
    calls: Sequence[int | None] | None = None,
) -> list[RoundsLatency]:
    """Time `ckpts` side by side: every round times each model's calls in short alternating
    turns (ckpts[0], the reference, is not always first); one `RoundsLatency` per
    checkpoint, in order.

    Interleaving puts every model under the same conditions, and the paired per-round ratio
    to the reference cancels a drift of the machine's speed between rounds (on shared hosts
    batch-1 latency has slow spells of seconds: bench/RESULTS.md §3). Within a round the
    models take turns (`TURNS_PER_ROUND`, fewer when a model has fewer calls), each turn one
    untimed call (the model's caches after the switch) then its share of timed calls, the
    first model of each turn rotating: a slow model's calls and a fast one's span the same
    stretch of time, so a slow spell hits the same share of each. (Timing each model's round
    in one block let the slow reference fill nearly all the phase's wall time and take every
    slow spell alone, inflating `speedup` several times.) Each predictor is built once and
    warmed up with `warmup` calls before the first round. Time-boxed like `measure_latency`:
    each model's calls per round are chosen from its warm-up timing to fit in
    `time_cap_s / rounds` seconds (at most `repeats`, at least `MIN_ROUND_REPEATS`). With
    `calls` (one per checkpoint, None for unknown), a model takes at most about that many
    timed calls over all rounds (`calls / rounds` a round, at least `MIN_REPEATS` so the
    descheduled calls of a round can be dropped, `running_calls`): the
    final phase gives each model the calls its in-sweep measurement needed to know its median
    to `latency.precision`, spread over the rounds, not the whole time cap.
    """
    check_int("latency.rounds", rounds, low=1)
    check_int("latency.warmup", warmup, low=0)
    check_int("latency.repeats", repeats, low=1)
    check_int("threads", threads, low=1)
    _check_time_cap(time_cap_s)
    if not ckpts:
        return []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # the models run on their checkpoints' tensors (no second copy of each model)
        predictors = [make_predictor(task, c, threads=threads, share_weights=True) for c in ckpts]
        batches = _test_batches(task, batch_size)
        inputs = [[p.prepare(x) for x in batches] for p in predictors]
        round_cap_s = time_cap_s / rounds
        wanted = list(calls) if calls is not None else [None] * len(ckpts)
        if len(wanted) != len(ckpts):
            raise SqueezerayError(
                f"interleaved_latency: {len(wanted)} call counts for {len(ckpts)} models; "
                "give one per checkpoint (None where unknown)"
            )
        planned = [
            planned_repeats(
                _warm_up(p, xs, warmup=warmup, time_cap_s=time_cap_s),
                repeats=min(repeats, max(MIN_REPEATS, math.ceil(n / rounds))) if n else repeats,
                time_cap_s=round_cap_s,
                least=MIN_ROUND_REPEATS,
            )
            for p, xs, n in zip(predictors, inputs, wanted, strict=True)
        ]
        times = [
            _round_in_turns(predictors, inputs, planned, first=r, cap_s=round_cap_s)
            for r in range(rounds)
        ]
    finally:
        torch.set_num_threads(previous)
    return _rounds_results(predictors, [list(per_model) for per_model in zip(*times, strict=True)])


def _round_in_turns(
    predictors: list[Predictor],
    inputs: list[list[Any]],
    planned: list[int],
    *,
    first: int,
    cap_s: float,
) -> list[np.ndarray]:
    """One round: `planned[i]` timed calls (ms) of each model, taken in alternating turns;
    each turn gives every model one untimed call then its share of timed ones, in an order
    rotated by the turn (and `first`, the round's number). GC is off while timing. The round
    ends after a turn once `2 * cap_s` seconds per model have passed and every model has
    `MIN_REPEATS` calls (a machine slower than the warm-up timed does not run on): the arrays
    hold the calls actually timed that kept their CPU (`running_calls`)."""
    turns = max(1, min(TURNS_PER_ROUND, *planned))
    shares = [np.array_split(np.arange(n), turns) for n in planned]
    count = len(predictors)
    out = [np.empty(n, dtype=np.int64) for n in planned]
    off_cpu = [np.empty(n, dtype=np.int64) for n in planned]
    taken = [0] * len(planned)
    stop_ns = time.perf_counter_ns() + int(2e9 * cap_s * count)  # each model's share: cap_s
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not the model's latency
    try:
        for turn in range(turns):
            for k in range(count):
                i = (first + turn + k) % count
                p, xs = predictors[i], inputs[i]
                p.run_native(xs[turn % len(xs)])  # untimed: the model's caches after the switch
                for j in shares[i][turn]:
                    out[i][j], off_cpu[i][j] = _timed_call(p, xs[int(j) % len(xs)])
                taken[i] += len(shares[i][turn])
            if time.perf_counter_ns() >= stop_ns and min(taken) >= MIN_REPEATS:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return [
        running_calls(t[:n], off[:n]) / 1e6 for t, off, n in zip(out, off_cpu, taken, strict=True)
    ]


def _rounds_results(
    predictors: list[Predictor], times: list[list[np.ndarray]]
) -> list[RoundsLatency]:
    """One RoundsLatency per model from its rounds' call times (ms); model 0 the reference."""
    medians = np.array([[float(np.median(t)) for t in per_model] for per_model in times])
    out = []
    for i, p in enumerate(predictors):
        m = medians[i]
        out.append(
            RoundsLatency(
                median_ms=float(np.median(m)),
                p90_ms=float(np.percentile(np.concatenate(times[i]), 90)),
                cv=robust_cv(m),
                speedup=float(np.median(medians[0] / m)),
                rounds=len(m),
                round_medians_ms=tuple(float(v) for v in m),
                runtime=p.runtime,
                repeats=sum(int(t.size) for t in times[i]),
            )
        )
    return out


def _test_batches(task: Task, batch_size: int) -> list[Inputs]:
    """A few distinct batches of `batch_size` test samples (wrapping); tuple inputs stay
    tuples and dtypes are kept (`stages.batches`). Only the samples used are read (at most
    `_LATENCY_DISTINCT_INPUTS * batch_size`), never the whole split."""
    n = len(task.test)  # type: ignore[arg-type]
    count = max(1, min(_LATENCY_DISTINCT_INPUTS, n // batch_size))
    return [
        stack_samples([task.test[(j * batch_size + i) % n][0] for i in range(batch_size)])
        for j in range(count)
    ]


# -- everything at once --------------------------------------------------------------------


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
    check_int("threads", threads, low=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = make_predictor(task, ckpt, threads=threads, share_weights=True)
        acc, val_acc, custom = split_scores(task, predictor)
        timing = (
            _time_calls(
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
