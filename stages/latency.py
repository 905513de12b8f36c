"""Single-thread latency timing, time-boxed: `measure_latency` (the in-sweep figure) and
`interleaved_latency` (the final phase: models timed side by side in rounds).

Milliseconds per call, median and p90 of single-thread batch-1 calls after a warm-up (timing
noise measured here: 8-11% single thread, 23-36% with two threads), time-boxed: the warm-up's
last calls time the model, and the timed calls are as many as fit in `time_cap_s` seconds (at
most `repeats`, at least `MIN_REPEATS`), stopping sooner once the median is known to
`precision` (its 95% confidence interval within +-precision of it, `median_ci`);
single-thread calls during which the OS descheduled the measuring thread are dropped
(`running_calls`); `LatencyResult.repeats` (the row's `latency_repeats_sweep`) says how many
counted and `LatencyResult.ci` (`latency_ci_sweep`) how precise the median is.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stages.base import check_int
from stages.batches import Inputs, stack_samples
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.runtime import Predictor, make_predictor
from stages.tasks import Task

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
# ... or sooner, once calls stopped getting faster: the median of its last SETTLE_CALLS calls
# is at least SETTLED_RATIO x the median of the SETTLE_CALLS before them. An eager MLP settles
# by its second call; the fixed quarter of the cap spent 0.125 s on every model.
SETTLE_CALLS = 3
SETTLED_RATIO = 0.95
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


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """`threads` torch intra-op threads for the block (SqueezerayError below 1), the previous
    count restored after it."""
    check_int("threads", threads, low=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    Time-boxed (`time_calls`): at most `warmup` untimed calls, then as many calls as fit in
    `time_cap_s` seconds (at most `repeats`, at least `MIN_REPEATS`), each timed with
    `perf_counter_ns`, stopping sooner once the median's 95% CI is within +-`precision` of it
    (0: never; `median_ci`); `LatencyResult.repeats` is the number taken, `.ci` the precision
    reached. Raises SqueezerayError for a knob out of range.
    """
    with torch_threads(threads):
        predictor = make_predictor(task, ckpt, threads=threads, share_weights=True)
        return time_calls(
            predictor,
            task,
            batch_size=batch_size,
            warmup=warmup,
            repeats=repeats,
            time_cap_s=time_cap_s,
            precision=precision,
        )


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


def time_calls(
    predictor: Predictor,
    task: Task,
    *,
    batch_size: int,
    warmup: int,
    repeats: int,
    time_cap_s: float = LATENCY_TIME_CAP_S,
    precision: float = LATENCY_PRECISION,
) -> LatencyResult:
    """`measure_latency` on a built predictor (`evaluate` times the one it scored with)."""
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
    have passed or once the calls settled (`settled`); returns the first timing: the median
    seconds per call of the last three."""
    deadline_ns = time.perf_counter_ns() + int(WARMUP_SHARE * time_cap_s * 1e9)
    durations_ns: list[int] = []
    for i in range(max(1, warmup)):
        start = time.perf_counter_ns()
        predictor.run_native(inputs[i % len(inputs)])
        end = time.perf_counter_ns()
        durations_ns.append(end - start)
        if end >= deadline_ns or settled(durations_ns):
            break
    return float(np.median(durations_ns[-3:])) / 1e9


def settled(durations_ns: Sequence[int]) -> bool:
    """Whether warm-up calls stopped getting faster: the median of the last `SETTLE_CALLS` is
    at least `SETTLED_RATIO` x the median of the `SETTLE_CALLS` before them (a first call that
    allocates, compiles or fills a cache, and calls still speeding up, keep it warming)."""
    if len(durations_ns) < 2 * SETTLE_CALLS:
        return False
    last = float(np.median(durations_ns[-SETTLE_CALLS:]))
    before = float(np.median(durations_ns[-2 * SETTLE_CALLS : -SETTLE_CALLS]))
    return last >= SETTLED_RATIO * before


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
            if _precise_enough(times_ns[:taken], off_cpu_ns[:taken], precision):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return running_calls(times_ns[:taken], off_cpu_ns[:taken]) / 1e6


def _precise_enough(times_ns: np.ndarray, off_cpu_ns: np.ndarray, precision: float) -> bool:
    """Whether timing may stop: `precision` > 0, a check every `PRECISION_CHECK_EVERY` calls,
    and the median of the calls that will be reported (`running_calls`: at least
    `MIN_PRECISION_REPEATS` of them) known to +-precision. A descheduled call is not in the
    reported median, so it does not widen the CI that stops the timing either: on a busy host
    the timing stops once the figure it reports is precise, not at its time cap."""
    n = int(times_ns.size)
    if precision <= 0 or n < MIN_PRECISION_REPEATS or n % PRECISION_CHECK_EVERY:
        return False
    kept = running_calls(times_ns, off_cpu_ns)
    return int(kept.size) >= MIN_PRECISION_REPEATS and median_ci(kept) <= precision


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
# ...fewer when a model has few calls a round: each turn's untimed call (caches after the switch)
# is followed by at least this many timed ones. One timed call a turn doubled a slow model's
# calls: the 50M teacher's 3 calls a round (86 ms each) took 3 untimed ones beside them.
CALLS_PER_TURN = 3


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
    models take turns (`TURNS_PER_ROUND`; fewer when a model has fewer than `CALLS_PER_TURN`
    timed calls a turn), each turn one untimed call (the model's caches after the switch)
    then its share of timed calls, the
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
    with torch_threads(threads):
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
    turns = max(1, min(TURNS_PER_ROUND, min(planned) // CALLS_PER_TURN))
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
