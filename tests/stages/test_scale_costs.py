"""The per-model steps that are not training cost no more than the model (issue 24).

Counted, never timed: bytes fed to zstd, timed latency calls on a simulated clock, and how many
times a stage task serialises, loads and rebuilds a model.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import zstandard
from torch import nn
from torch.utils.data import TensorDataset

from stages import latency, metrics
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.runtime import Predictor
from stages.tasks import Task

# -- size: every byte of the artifact compressed once, at a cheap level --------------------

_ZSTD = zstandard.ZstdCompressor  # the real one (tests patch the module's attribute)


class _CountingCompressor:
    """zstandard.ZstdCompressor that counts the bytes it is given (streamed or one-shot)."""

    fed = 0
    instances = 0
    levels: ClassVar[list[int]] = []

    def __init__(self, *, level: int) -> None:
        type(self).instances += 1
        type(self).levels.append(level)
        self._real = _ZSTD(level=level)

    def compress(self, data: Any) -> bytes:
        type(self).fed += memoryview(data).nbytes
        return self._real.compress(data)

    def stream_writer(self, sink: Any, **kwargs: Any) -> Any:
        writer = self._real.stream_writer(sink, **kwargs)
        counter = type(self)

        class Tee:
            def write(self, data: Any) -> int:
                counter.fed += memoryview(data).nbytes
                return writer.write(data)

            def flush(self) -> None:
                writer.flush()

            def __enter__(self) -> Tee:
                writer.__enter__()
                return self

            def __exit__(self, *exc: Any) -> None:
                writer.__exit__(*exc)

        return Tee()


def _float_checkpoint(rows: int) -> ModelCheckpoint:
    torch.manual_seed(0)
    state = {"0.weight": torch.randn(rows, 256), "0.bias": torch.randn(rows)}
    return ModelCheckpoint(task="t", state_dict=state)


def test_size_compresses_each_byte_once_at_a_cheap_level_and_scales_linearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics.zstandard, "ZstdCompressor", _CountingCompressor)
    fed = []
    for rows in (100, 1000):  # a model and one 10x larger
        _CountingCompressor.fed = _CountingCompressor.instances = 0
        ckpt = _float_checkpoint(rows)
        size = metrics.size_bytes(ckpt)
        float_bytes = sum(t.numel() * t.element_size() for t in ckpt.state_dict.values())
        assert _CountingCompressor.instances == 1  # one compression per measurement
        # every byte of the serialised artifact once (plus torch.save's small zip framing)
        assert float_bytes <= _CountingCompressor.fed <= float_bytes * 1.02 + 8192
        assert 0 < size <= _CountingCompressor.fed
        fed.append(_CountingCompressor.fed)
    assert fed[1] / fed[0] <= 10.5  # linear: 10x the model, 10x the bytes
    # zstd's fastest regular level: level 3 cost 2-3x its CPU on sparse 10M models for <=2%
    # fewer bytes (docs/scale.md)
    assert set(_CountingCompressor.levels) == {metrics.ZSTD_LEVEL} and metrics.ZSTD_LEVEL == 1


def test_size_still_shows_sparsity() -> None:
    dense = _float_checkpoint(500)
    sparse = ModelCheckpoint(
        task="t", state_dict={k: v * (v.abs() > 1.0) for k, v in dense.state_dict.items()}
    )  # ~68% zeros
    assert metrics.size_bytes(sparse) < 0.6 * metrics.size_bytes(dense)


# -- latency: time-boxed, on a simulated clock ---------------------------------------------


class _Clock:
    """perf_counter / perf_counter_ns of a simulated clock that only model calls advance."""

    def __init__(self) -> None:
        self.ns = 0

    def perf_counter(self) -> float:
        return self.ns / 1e9

    def perf_counter_ns(self) -> int:
        return self.ns

    def thread_time_ns(self) -> int:  # never descheduled: CPU time is wall time
        return self.ns


@dataclass
class _FakePredictor(Predictor):
    """A model whose every call costs `cost_s` simulated seconds (proportional to its size)."""

    clock: _Clock
    cost_s: float
    calls: int = 0
    runtime: str = "eager"

    def prepare(self, x: Any) -> Any:
        return x

    def run_native(self, native: Any) -> Any:
        self.calls += 1
        self.clock.ns += int(self.cost_s * 1e9)
        return None


def _task() -> Task:
    data = TensorDataset(torch.zeros(64, 4), torch.zeros(64, dtype=torch.long))
    return Task(
        name="fake",
        teacher=lambda: nn.Linear(4, 2),
        student=None,
        train=data,
        val=data,
        test=data,
        num_classes=2,
    )


def _timed(monkeypatch: pytest.MonkeyPatch, cost_s: float, **kw: Any) -> tuple[Any, int, float]:
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    predictor = _FakePredictor(clock=clock, cost_s=cost_s)
    result = latency.time_calls(predictor, _task(), batch_size=1, **kw)
    return result, predictor.calls, clock.ns / 1e9


def test_latency_is_time_boxed_and_does_not_grow_with_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cap = 1.0
    # precision 0: no early stop, so the time cap and the repeats cap are what bind here
    kw = {"warmup": 50, "repeats": 300, "time_cap_s": cap, "precision": 0.0}
    small, small_calls, small_s = _timed(monkeypatch, 0.001, **kw)
    big, big_calls, big_s = _timed(monkeypatch, 0.010, **kw)  # a model 10x larger
    huge, huge_calls, _ = _timed(monkeypatch, 3.0, **kw)  # one call longer than the cap
    # steady calls: the warm-up stops once they stopped getting faster (2 x SETTLE_CALLS)
    settle = 2 * latency.SETTLE_CALLS
    # a fast model: the repeats cap (300) binds
    assert small.repeats == 300 and small_calls == settle + 300
    # 10x the cost per call: the time cap binds, the calls drop, the work stays bounded
    assert big.repeats == 100 and big_calls == settle + 100
    assert big_s <= (1 + latency.WARMUP_SHARE) * cap + 0.01
    assert big_s / small_s < 10  # not superlinear (here: not even linear)
    # a call over the cap: one warm-up call, then MIN_REPEATS timed calls
    assert huge.repeats == latency.MIN_REPEATS and huge_calls == 1 + latency.MIN_REPEATS
    assert big.median_ms == pytest.approx(10.0)


@dataclass
class _WarmingPredictor(_FakePredictor):
    """Calls that get faster for a while (first-call allocation, caches), then hold at cost_s."""

    warming_s: tuple[float, ...] = ()

    def run_native(self, native: Any) -> Any:
        cost = self.warming_s[self.calls] if self.calls < len(self.warming_s) else self.cost_s
        self.calls += 1
        self.clock.ns += int(cost * 1e9)
        return None


def test_the_warm_up_runs_until_calls_stop_getting_faster_and_no_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    warming = (0.050, 0.020, 0.010, 0.005, 0.003, 0.002)
    predictor = _WarmingPredictor(clock=clock, cost_s=0.001, warming_s=warming)
    kw: dict[str, Any] = {"warmup": 50, "repeats": 30, "time_cap_s": 1.0, "precision": 0.0}
    result = latency.time_calls(predictor, _task(), batch_size=1, **kw)
    # 6 falling calls, then 5 more until the last 3 are no faster than the 3 before: 11 untimed
    assert predictor.calls - result.repeats == 11
    assert result.median_ms == pytest.approx(1.0)  # no warming call among the timed ones
    # calls 3% faster each time never settle: the warm-up runs to `warmup` calls, as before
    clock2 = _Clock()
    monkeypatch.setattr(latency, "time", clock2)
    falling = tuple(0.004 * 0.97**i for i in range(200))
    slow = _WarmingPredictor(clock=clock2, cost_s=0.001, warming_s=falling)
    slow_result = latency.time_calls(slow, _task(), batch_size=1, **kw)
    assert slow.calls - slow_result.repeats == 50
    assert not latency.settled([int(c * 1e9) for c in falling[:12]])
    assert latency.settled([int(c * 1e9) for c in (0.002, 0.001, 0.001, 0.001, 0.001, 0.001)])


@dataclass
class _NoisyPredictor(_FakePredictor):
    """Calls whose cost spreads +-`spread` around `cost_s` (a fixed pseudo-random sequence)."""

    spread: float = 0.0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def run_native(self, native: Any) -> Any:
        self.calls += 1
        jitter = 1 + self.spread * (2 * self.rng.random() - 1)
        self.clock.ns += int(self.cost_s * jitter * 1e9)
        return None


def _timed_noisy(
    monkeypatch: pytest.MonkeyPatch, spread: float, precision: float
) -> tuple[Any, int]:
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    predictor = _NoisyPredictor(clock=clock, cost_s=0.001, spread=spread)
    result = latency.time_calls(
        predictor,
        _task(),
        batch_size=1,
        warmup=10,
        repeats=300,
        time_cap_s=1.0,
        precision=precision,
    )
    return result, predictor.calls


def test_latency_stops_once_the_median_is_known_to_the_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # +-1% noise: the median's 95% CI is within +-2% at the first check (20 calls)
    steady, steady_calls = _timed_noisy(monkeypatch, 0.01, 0.02)
    assert steady.repeats == latency.MIN_PRECISION_REPEATS and steady.ci <= 0.02
    assert steady_calls == 2 * latency.SETTLE_CALLS + latency.MIN_PRECISION_REPEATS
    # +-8% noise: more calls are needed for +-2% (about 60), and the CI reached is reported
    noisy, _ = _timed_noisy(monkeypatch, 0.08, 0.02)
    assert latency.MIN_PRECISION_REPEATS < noisy.repeats < 300 and noisy.ci <= 0.02
    # a precision the cap cannot reach: timing runs to the repeats cap, the CI says so
    loose, _ = _timed_noisy(monkeypatch, 0.20, 0.001)
    assert loose.repeats == 300 and loose.ci > 0.001
    # precision 0 never stops early
    off, _ = _timed_noisy(monkeypatch, 0.01, 0.0)
    assert off.repeats == 300


class _BusyClock(_Clock):
    """A simulated clock whose thread CPU time advances only while a call runs on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_ns = 0

    def thread_time_ns(self) -> int:
        return self.cpu_ns


@dataclass
class _DescheduledPredictor(_NoisyPredictor):
    """+-`spread` calls of which every second is descheduled for 4x its cost (off the CPU)."""

    def run_native(self, native: Any) -> Any:
        assert isinstance(self.clock, _BusyClock)
        cost = int(self.cost_s * (1 + self.spread * (2 * self.rng.random() - 1)) * 1e9)
        self.calls += 1
        self.clock.ns += cost * (5 if self.calls % 2 == 0 else 1)
        self.clock.cpu_ns += cost
        return None


def test_descheduled_calls_do_not_keep_the_timing_running_to_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a busy host half of the calls lose their CPU: they are not in the reported median
    (`running_calls`), and the precision that stops the timing is that median's. Before, they
    widened the CI and the timing ran to its cap (300 calls here) for the same figure."""
    clock = _BusyClock()
    monkeypatch.setattr(latency, "time", clock)
    predictor = _DescheduledPredictor(clock=clock, cost_s=0.001, spread=0.01)
    result = latency.time_calls(
        predictor, _task(), batch_size=1, warmup=0, repeats=300, time_cap_s=1.0, precision=0.02
    )
    assert result.repeats >= latency.MIN_PRECISION_REPEATS and result.ci <= 0.02
    assert predictor.calls < 60  # 40 timed calls (20 kept) and the warm-up
    assert result.median_ms == pytest.approx(1.0, rel=0.02)  # the running calls' cost


def test_median_ci_is_distribution_free_and_shrinks_with_the_calls() -> None:
    rng = np.random.default_rng(1)
    skewed = 1 + rng.exponential(0.1, size=2000)  # a long right tail, as timings have
    wide, narrow = latency.median_ci(skewed[:30]), latency.median_ci(skewed)
    assert 0 < narrow < wide
    # the interval holds the true median in about 95% of samples of 100
    true_median = 1 + 0.1 * np.log(2)
    hits = 0
    for _ in range(400):
        sample = 1 + rng.exponential(0.1, size=100)
        half = latency.median_ci(sample) * float(np.median(sample))
        hits += abs(float(np.median(sample)) - true_median) <= half
    assert 0.9 <= hits / 400 <= 0.995
    # below 6 calls no interval reaches 95%: the range stands in, never a falsely tight figure
    assert latency.median_ci(np.array([1.0, 1.0, 1.3, 1.0, 1.1])) == pytest.approx(0.15)
    assert np.isnan(latency.median_ci(np.ones(1)))


@pytest.mark.parametrize("bad", [-0.1, 1.0, "2%", True, None])
def test_a_precision_out_of_range_is_refused_with_the_key(bad: Any) -> None:
    with pytest.raises(
        SqueezerayError, match=r"latency\.precision=.*accepted: a share in \[0, 1\)"
    ):
        latency.check_precision(bad)


def test_timing_stops_at_twice_the_cap_when_the_first_timing_was_too_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    predictor = _FakePredictor(clock=clock, cost_s=0.1)
    times = latency._timed_ms(predictor, [None], warmup=0, repeats=1000, time_cap_s=1.0)
    assert times.size == 20  # 2 x the cap of 0.1 s calls, not 1000


def _fake_models(monkeypatch: pytest.MonkeyPatch, *costs_s: float) -> list[_FakePredictor]:
    """Predictors on one simulated clock, costing `costs_s` seconds a call; checkpoint i of
    `interleaved_latency` builds predictor i."""
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    predictors = [_FakePredictor(clock=clock, cost_s=cost) for cost in costs_s]
    monkeypatch.setattr(latency, "make_predictor", lambda task, ckpt, **kw: predictors[ckpt])
    return predictors


def test_interleaved_rounds_share_the_time_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    predictors = _fake_models(monkeypatch, 0.001, 0.010)
    out = latency.interleaved_latency(
        _task(),
        [0, 1],  # type: ignore[list-item]
        rounds=5,
        warmup=20,
        repeats=300,
        time_cap_s=1.0,
    )
    # per round and model: as many calls as fit in cap / rounds = 0.2 s
    assert out[0].repeats == 5 * 200 and out[1].repeats == 5 * 20
    assert predictors[1].calls * 0.010 <= 1.0 + 0.25 + 5 * 10 * 0.010  # + warm-up, re-warms


def test_a_slow_models_untimed_calls_are_a_bounded_share_of_its_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each turn of a round starts with an untimed call; a model with few timed calls a round
    (a large model: the time cap binds) gets fewer turns, not one untimed call per timed one."""
    predictors = _fake_models(monkeypatch, 0.001, 0.086)
    out = latency.interleaved_latency(
        _task(),
        [0, 1],  # type: ignore[list-item]
        rounds=7,
        warmup=2,
        repeats=300,
        time_cap_s=0.5,
        calls=[300, 21],  # 3 timed calls a round for the slow model
    )
    slow = out[1]
    untimed = predictors[1].calls - slow.repeats - 2  # less its warm-up
    assert slow.repeats == 7 * 3
    # at most one untimed call per CALLS_PER_TURN timed ones (before: 21, one per timed call)
    assert untimed <= slow.repeats / latency.CALLS_PER_TURN


def test_interleaved_rounds_take_the_calls_the_sweep_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_models(monkeypatch, 0.001, 0.001, 0.010)
    out = latency.interleaved_latency(
        _task(),
        [0, 1, 2],  # type: ignore[list-item]
        rounds=5,
        warmup=20,
        repeats=300,
        time_cap_s=1.0,
        calls=[40, None, 4],
    )
    # 40 calls over 5 rounds: 8 a round; unknown: the time cap (200 a round); 4 calls: the
    # floor of MIN_REPEATS a round (fewer could not drop a round's descheduled calls)
    assert [r.repeats for r in out] == [40, 5 * 200, 5 * latency.MIN_REPEATS]
    with pytest.raises(SqueezerayError, match="one per checkpoint"):
        latency.interleaved_latency(_task(), [0, 1], calls=[3])  # type: ignore[list-item]


# -- a stage task: one serialisation, one hash, a bounded number of model builds -----------


@dataclass
class _Counts:
    saves: int = 0
    loads: int = 0
    builds: int = 0
    hashes: int = 0


def _counted_task(counts: _Counts, width: int) -> Task:
    """The blobs data with a teacher of `width` hidden units whose every build is counted."""
    from stages.models import MLP
    from stages.tasks import make_blobs

    blobs = make_blobs(n_per_class=40)

    def teacher() -> nn.Module:
        counts.builds += 1
        return MLP(2, [width, width], 3)

    return Task(
        name="counted",
        teacher=teacher,
        student=None,
        train=blobs.train,
        val=blobs.val,
        test=blobs.test,
        num_classes=3,
    )


def _count(monkeypatch: pytest.MonkeyPatch, counts: _Counts) -> None:
    real_save, real_load, real_sha = torch.save, torch.load, hashlib.sha256

    def save(*args: Any, **kwargs: Any) -> Any:
        counts.saves += 1
        return real_save(*args, **kwargs)

    def load(*args: Any, **kwargs: Any) -> Any:
        counts.loads += 1
        return real_load(*args, **kwargs)

    def sha(*args: Any, **kwargs: Any) -> Any:
        counts.hashes += 1
        return real_sha(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(hashlib, "sha256", sha)


@pytest.mark.parametrize(
    ("stage", "params", "builds"),
    [
        # teacher (as given): the stage's build, the self-check's rebuild
        ("teacher", {"epochs": 0}, 2),
        # distill (student from the teacher): teacher, student, self-check (+ the student's
        # structured-pruning trace of the teacher)
        ("distill", {"epochs": 1, "student_ratio": 0.5}, 4),
        # quantize: float model, the layer summary's, quantized rebuild, self-check
        ("quantize", {"mode": "dynamic_int8"}, 4),
    ],
)
def test_a_stage_task_serialises_once_and_builds_a_bounded_number_of_models(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    params: dict[str, Any],
    builds: int,
) -> None:
    from orchestrator.engine.requests import StageRequest, StoredCheckpoint
    from orchestrator.engine.stage_tasks import execute_stage
    from stages.base import StageInput
    from stages.teacher import TeacherParams, train_teacher

    counts = _Counts()
    task = _counted_task(counts, width=64)
    monkeypatch.setattr("stages.tasks.load_task", lambda name, **_: task)
    teacher = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=0))
    parent = None if stage == "teacher" else teacher.checkpoint.to_buffer()
    counts.builds = 0
    _count(monkeypatch, counts)
    request = StageRequest(
        stage=stage,
        params=params,
        key="k" * 16,
        parent_key=None if stage == "teacher" else "t" * 16,
        teacher_key=None if stage == "teacher" else "t" * 16,
        task="counted",
        storage=str(tmp_path),
    )
    data, info = execute_stage(request, parent, parent)
    assert counts.saves == 1  # the one serialisation: hashed, written and returned as is
    assert counts.hashes == 1
    # the inputs (parent and teacher, the same checkpoint here) load once; the self-check once
    assert counts.loads == (1 if stage == "teacher" else 2)
    assert counts.builds <= builds, counts
    assert info["run_cpu_s"] <= info["cpu_s"]
    # on a local storage the written file travels, not its bytes
    assert isinstance(data, StoredCheckpoint) and data.sha256 == info["sha256"]
    assert data.nbytes == info["nbytes"] == Path(data.path).stat().st_size


_BUILD_COUNTING_TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from stages.tasks import Task

BUILDS = []


def _teacher():
    BUILDS.append(1)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def task():
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(24, 4, generator=g), torch.arange(24) % 3)
    return Task(name="builds", teacher=_teacher, student=None, train=ds, val=ds, test=ds,
                num_classes=3)
"""


def test_a_workers_first_stage_task_builds_the_models_once_for_its_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage task with the driver's fingerprint verifies the task's models through it and
    does not build and run them once more for `check_task` (at 10M parameters each build is
    ~0.1 CPU s of a worker's first task)."""
    import sys

    from orchestrator.engine.requests import StageRequest
    from orchestrator.engine.stage_tasks import _worker_fingerprint, check_same_task, execute_stage
    from stages.errors import SqueezerayError
    from stages.fingerprint import task_fingerprint
    from stages.tasks import clear_task_cache, load_task

    (tmp_path / "build_counting_task.py").write_text(_BUILD_COUNTING_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "build_counting_task:task"
    fingerprint = task_fingerprint(load_task(name), seed=0).as_dict()  # the driver's
    module = sys.modules["build_counting_task"]
    clear_task_cache()  # a fresh worker
    _worker_fingerprint.cache_clear()
    module.BUILDS.clear()
    request = StageRequest(
        stage="teacher",
        params={"epochs": 0},
        key="k" * 16,
        parent_key=None,
        task=name,
        storage=str(tmp_path / "store"),
        fingerprint=fingerprint,
    )
    try:
        teacher, _ = execute_stage(request, None, None)
        # the fingerprint's build, the stage's, the self-check's rebuild (on the meta device)
        # -- and none for the task check (4 before)
        assert len(module.BUILDS) == 3
        # a later stage reads no part of the task (the pipeline sends it no fingerprint), in
        # another fresh worker: its parent's structure is built once (the rebuild, then copied
        # for the self-check) and the task's models are not checked again (2 builds before)
        clear_task_cache()
        _worker_fingerprint.cache_clear()
        module.BUILDS.clear()
        prune = StageRequest(
            stage="prune",
            params={"ratio": 0.5, "method": "l1_unstructured"},
            key="p" * 16,
            parent_key=request.key,
            task=name,
            storage=str(tmp_path / "store"),
            teacher_key=request.key,
        )
        execute_stage(prune, teacher, teacher)
        assert len(module.BUILDS) == 1
        # distill's worker checks the student and the data, as the pipeline sends them: a
        # task without a student factory has no student to build, and no teacher is built
        # for a part that is not checked (1 build before)
        clear_task_cache()
        _worker_fingerprint.cache_clear()
        module.BUILDS.clear()
        checked = {part: fingerprint[part] for part in ("student", "data")}
        check_same_task(replace(prune, stage="distill", fingerprint=checked))
        assert module.BUILDS == []
        with pytest.raises(SqueezerayError, match="its data on this worker"):
            check_same_task(replace(prune, fingerprint={**checked, "data": "0" * 16}))
        # a task loaded for the driver is still checked, once
        clear_task_cache()
        module.BUILDS.clear()
        load_task(name)
        load_task(name)
        assert len(module.BUILDS) == 1
    finally:
        clear_task_cache()
        _worker_fingerprint.cache_clear()
        sys.modules.pop("build_counting_task", None)


def test_measuring_a_model_compresses_it_once_and_builds_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stages.base import StageInput
    from stages.teacher import TeacherParams, train_teacher

    counts = _Counts()
    task = _counted_task(counts, width=64)
    ckpt = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=0)).checkpoint
    counts.builds = 0
    _count(monkeypatch, counts)
    monkeypatch.setattr(metrics.zstandard, "ZstdCompressor", _CountingCompressor)
    _CountingCompressor.instances = 0
    m = metrics.evaluate(task, ckpt, warmup=2, repeats=5)
    assert counts.builds == 1 and _CountingCompressor.instances == 1 and counts.saves == 1
    assert m.latency_repeats == 5 and m.size_bytes > 0


def test_a_rebuild_draws_no_random_initial_weights() -> None:
    """The factory's random init is skipped (a strict load overwrites every weight): the
    global RNG does not advance, and the rebuilt model is the checkpoint's."""
    from stages.rebuild import build_model
    from stages.tasks import load_task

    task = load_task("blobs")
    torch.manual_seed(1)
    ckpt = ModelCheckpoint(
        task="blobs",
        state_dict=dict(task.build("teacher").state_dict()),
        recipe={"arch": "teacher"},
    )
    before = torch.random.get_rng_state()
    model = build_model(task, ckpt)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(v, ckpt.state_dict[k]) for k, v in model.state_dict().items())
    assert torch.nn.init.kaiming_uniform_.__name__ == "kaiming_uniform_"  # restored


def test_a_task_metric_runs_each_split_through_the_model_once() -> None:
    """Accuracy and the task's own metric come from one pass over each split, not two."""
    from stages.base import StageInput
    from stages.tasks import Metric
    from stages.teacher import TeacherParams, train_teacher

    counts = _Counts()
    base = _counted_task(counts, width=16)
    task = Task(
        name=base.name,
        teacher=base.teacher,
        student=None,
        train=base.train,
        val=base.val,
        test=base.test,
        num_classes=3,
        metric=Metric("top1", lambda logits, y: float((logits.argmax(1) == y).float().mean())),
    )
    ckpt = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=0)).checkpoint
    calls: list[int] = []
    real_call = Predictor.__call__

    def counted(self: Predictor, *args: Any, **kwargs: Any) -> Any:
        out = real_call(self, *args, **kwargs)
        calls.append(int(out.shape[0]))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Predictor, "__call__", counted)
        m = metrics.evaluate(task, ckpt, latency=False)
    assert sum(calls) == len(task.test) + len(task.val)  # type: ignore[arg-type]
    assert m.custom["top1"] == pytest.approx(m.accuracy)
    assert m.custom["val_top1"] == pytest.approx(m.val_accuracy)


def _teacher_and_student(counts: _Counts) -> tuple[Task, Any, ModelCheckpoint]:
    """A counted task, its untrained teacher's StageOutput and a student distilled from it
    (made from the teacher: its recipe replays structured pruning)."""
    from stages.base import StageInput
    from stages.distill import DistillParams, distill
    from stages.teacher import TeacherParams, train_teacher

    task = _counted_task(counts, width=32)
    teacher = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=0))
    student = distill(
        StageInput(task=task, parent=teacher.checkpoint, teacher=teacher.checkpoint),
        DistillParams(epochs=1, student_ratio=0.5),
    ).checkpoint
    return task, teacher, student


def test_a_structure_is_built_and_replayed_once_then_copied_from_the_meta_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second rebuild of a pruned student calls neither the factory nor the replay, and
    rebuilds the same model (logits, BatchNorm buffers); another task object builds its own."""
    from stages import rebuild

    counts = _Counts()
    task, _, student = _teacher_and_student(counts)
    assert student.recipe.get("pruned")  # made from the teacher: a replayed structure
    replays: list[int] = []
    real_replay = rebuild.replay
    monkeypatch.setattr(rebuild, "replay", lambda *a: replays.append(1) or real_replay(*a))
    x = task.example_input(4)
    counts.builds = 0
    first = rebuild.build_model(task, student)
    builds, replayed = counts.builds, len(replays)
    again = [rebuild.build_model(task, student, share_weights=s) for s in (True, False)]
    assert counts.builds == builds and len(replays) == replayed  # copied, not rebuilt
    for model in again:
        assert torch.equal(model(x), first(x))
        assert all(p.device.type == "cpu" for p in model.parameters())
    other = _counted_task(counts, width=32)
    rebuild.build_model(
        other,
        ModelCheckpoint(task=other.name, state_dict=student.state_dict, recipe=student.recipe),
    )
    assert counts.builds == builds + 1  # a new task object: its own structure


@pytest.mark.parametrize("mode", ["dynamic_int8", "bfloat16", "int8_weight_only"])
def test_a_quantized_rebuild_copies_the_structure_only_where_values_do_not_matter(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """dynamic_int8 and the casts convert a zero-filled copy of the kept structure (no
    factory, no replay after the first rebuild) and rebuild the same model; torchao's modes,
    whose conversion reads the weights, build from the factory every time."""
    from stages import rebuild
    from stages.base import StageInput
    from stages.quantize import QuantizeParams, quantize

    counts = _Counts()
    task, teacher, student = _teacher_and_student(counts)
    quantized = quantize(
        StageInput(task=task, parent=student, teacher=teacher.checkpoint),
        QuantizeParams(mode=mode),
    ).checkpoint
    replays: list[int] = []
    real_replay = rebuild.replay
    monkeypatch.setattr(rebuild, "replay", lambda *a: replays.append(1) or real_replay(*a))
    x = task.example_input(4)
    first = rebuild.build_model(task, quantized)
    builds, replayed = counts.builds, len(replays)
    again = rebuild.build_model(task, quantized)
    copied = mode in rebuild.VALUE_FREE_MODES
    assert (counts.builds == builds and len(replays) == replayed) is copied
    assert torch.equal(again(x), first(x))


def test_an_int8_rebuild_neither_copies_its_fresh_structure_nor_unpacks_its_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dynamic_int8 rebuild converts the zero-filled structure in place (no deep copy of it)
    and reads the modules' format versions without a state_dict (which unpacks every int8
    weight): 2 of its 3 costs beside the packing, a rebuild ~0.07 -> ~0.04 CPU s at 10M."""
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams

    from stages import rebuild, torch_ao
    from stages.base import StageInput
    from stages.quantize import QuantizeParams, quantize

    counts = _Counts()
    task, teacher, student = _teacher_and_student(counts)
    quantized = quantize(
        StageInput(task=task, parent=student, teacher=teacher.checkpoint),
        QuantizeParams(mode="dynamic_int8"),
    ).checkpoint
    x = task.example_input(4)
    first = rebuild.build_model(task, quantized)
    copies: list[int] = []
    unpacks: list[int] = []
    monkeypatch.setattr(torch_ao, "deepcopy", lambda m: copies.append(1) or copy.deepcopy(m))
    real_unpack = LinearPackedParams._weight_bias
    monkeypatch.setattr(
        LinearPackedParams, "_weight_bias", lambda self: unpacks.append(1) or real_unpack(self)
    )
    again = rebuild.build_model(task, quantized)
    assert copies == [] and unpacks == []
    assert torch.equal(again(x), first(x))
    assert any(torch_ao.is_dynamic_int8_layer(m) for m in again.modules())


@pytest.mark.parametrize("mode", ["none", "dynamic_int8", "int8_weight_only", "static_int8"])
def test_module_versions_are_what_a_state_dict_records(mode: str) -> None:
    """`module_versions` gives the `_metadata` a state_dict would (every submodule, shared
    ones under each name), for float, torch.ao, torchao and PT2E models and a Hugging Face one."""
    from stages import rebuild
    from stages.base import StageInput
    from stages.quantize import QuantizeParams, quantize
    from tests.stages import hf_tiny

    task, teacher, student = _teacher_and_student(_Counts())
    ckpt = quantize(
        StageInput(task=task, parent=student, teacher=teacher.checkpoint),
        QuantizeParams(mode=mode),
    ).checkpoint
    for model in (rebuild.build_model(task, ckpt), hf_tiny.bert()):
        assert rebuild.module_versions(model) == model.state_dict()._metadata  # type: ignore[attr-defined]


def test_a_kept_structure_restores_its_buffers_and_keeps_tied_weights_tied() -> None:
    from stages import rebuild

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(3, 3, bias=False)
            self.head = nn.Linear(3, 3, bias=False)
            self.head.weight = self.embed.weight
            self.norm = nn.BatchNorm1d(3)
            self.register_buffer("offset", torch.full((3,), 2.0), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.embed(x))) + self.offset

    from dataclasses import replace

    task = replace(_counted_task(_Counts(), width=4), name="tied", teacher=Tied)
    model = Tied()
    model.norm.running_mean.fill_(0.5)
    ckpt = ModelCheckpoint(
        task="tied", state_dict=dict(model.state_dict()), recipe={"arch": "teacher"}
    )
    x = torch.randn(5, 3)
    expected = model.eval()(x)
    for share in (True, False, True):
        got = rebuild.build_model(task, ckpt, share_weights=share)
        # one tensor: the same Parameter (copied in), or the checkpoint's one storage (shared)
        assert got.head.weight.data_ptr() == got.embed.weight.data_ptr()
        assert torch.equal(got.offset, torch.full((3,), 2.0))  # not in the state_dict
        assert torch.allclose(got(x), expected)


_FRESH_WORKER = """
import gc, sys
import torch
from orchestrator.engine.stage_tasks import _prepare_worker
from stages import rebuild
from stages.tasks import load_task
before = len(gc.get_objects())
_prepare_worker((), 1)
after = len(gc.get_objects())
task = load_task("blobs")
rebuild.float_structure(task, "teacher", [], {}, weights="empty")  # built, kept on meta
rebuild.float_structure(task, "teacher", [], {}, weights="empty")  # copied, allocated
rebuild.float_structure(task, "teacher", [], {}, weights="zeros")
print(before, after, "sympy" in sys.modules)
"""


def test_a_fresh_workers_first_task_rescans_no_imports_and_allocates_without_sympy() -> None:
    """Work a fresh Ray worker does once, counted in a new interpreter: its first task
    freezes the objects the imports made (a collection then scans only the task's own; it
    rescanned ~230k, 0.1 CPU s), and allocating a kept structure imports nothing more
    (`Module.to_empty`'s `empty_like` of a meta tensor imported sympy: ~0.4 CPU s, 486
    modules)."""
    from tests.fresh_python import run_fresh

    done = run_fresh(_FRESH_WORKER)
    assert done.returncode == 0, done.stderr
    before, after, sympy = done.stdout.split()[-3:]
    assert int(before) > 50_000 and int(after) < int(before) // 20
    assert sympy == "False"


def test_a_pruning_history_travels_as_tensors_and_loads_back_as_int_lists(
    tmp_path: Path,
) -> None:
    """The weights-only unpickler reads each int of a list in Python: a 10M model's history
    (thousands of indices) cost ~8 ms per load. On disk each entry's indices are one int64
    tensor; the loaded recipe is the history as it was, and a file that holds them as lists
    (written before) loads the same."""
    history = [["0", True, list(range(0, 3000, 2))], ["2", False, [5, 1, 3]], ["4", True, []]]
    recipe = {"arch": "student", "pruned": history, "quantize": "none"}
    ckpt = ModelCheckpoint(task="t", state_dict={"w": torch.zeros(2)}, recipe=recipe)
    path = tmp_path / "c.ckpt"
    with open(path, "wb") as f:
        ckpt.save(f)
    raw = torch.load(path, weights_only=True)
    assert [type(entry[2]) for entry in raw["recipe"]["pruned"]] == [torch.Tensor] * 3
    assert ModelCheckpoint.from_file(path).recipe == recipe
    assert ModelCheckpoint.from_bytes(ckpt.to_buffer()).recipe == recipe
    assert ckpt.recipe["pruned"][0][2] == list(range(0, 3000, 2))  # the caller's copy untouched
    old = {**ckpt.to_payload(), "recipe": recipe}  # indices as lists, as before
    torch.save(old, path)
    assert ModelCheckpoint.from_file(path).recipe == recipe
