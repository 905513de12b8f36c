"""metrics: size shows sparsity and int8, counts are exact, latency is sane and tidy."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.export import ExportParams, export
from stages.latency import MIN_REPEATS, LatencyResult, measure_latency, throughput
from stages.metrics import ModelMetrics, accuracy, count_params, evaluate, size_bytes
from stages.quantize import QuantizeParams, quantize
from stages.tasks import Task, load_task
from stages.training import accuracy as eager_accuracy
from stages.training import fit

CPU = torch.device("cpu")
WARMUP, REPEATS = 5, 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task("digits")


@pytest.fixture(scope="module")
def student(digits: Task) -> tuple[nn.Module, ModelCheckpoint]:
    torch.manual_seed(0)  # the initial weights come from the global generator
    model = digits.build("student")
    fit(model, digits.train, digits.val, epochs=10, lr=3e-3, batch_size=64, device=CPU, seed=0)
    return model, from_model(digits, model, {"arch": "student"})


def _zero_half(ckpt: ModelCheckpoint) -> ModelCheckpoint:
    """Every weight matrix with its smaller-magnitude half set to zero (same shapes)."""
    state = {}
    for key, value in ckpt.state_dict.items():
        if value.dim() == 2:
            value = value * (value.abs() > value.abs().median())
        state[key] = value
    return ModelCheckpoint(ckpt.task, state, {**ckpt.recipe, "masked": True})


def test_sparse_model_is_smaller_than_dense(student: tuple[nn.Module, ModelCheckpoint]) -> None:
    _, dense = student
    sparse = _zero_half(dense)
    assert size_bytes(sparse) < 0.8 * size_bytes(dense)
    total, nonzero = count_params(sparse)
    assert total == count_params(dense)[0]
    assert nonzero < 0.6 * total


def test_count_params_on_a_hand_made_model() -> None:
    torch.manual_seed(0)
    first, last = nn.Linear(4, 3), nn.Linear(3, 2)
    model = nn.Sequential(first, nn.ReLU(), last)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.5)  # no accidental zeros
        first.weight[0, :] = 0.0  # 4 zeros
        first.bias[1] = 0.0  # 1 zero
        last.weight[1, 2] = 0.0  # 1 zero
    ckpt = ModelCheckpoint("hand", {k: v.clone() for k, v in model.state_dict().items()})
    assert count_params(ckpt) == (4 * 3 + 3 + 3 * 2 + 2, 23 - 6)


def test_count_params_skips_batchnorm_statistics() -> None:
    cnn = load_task("digits-cnn")
    model = cnn.build("student")
    ckpt = from_model(cnn, model, {"arch": "student"})
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())  # fresh BN biases are 0
    assert nonzero < total
    assert count_params(ckpt) == (total, nonzero)


def test_count_params_of_int8_and_onnx_agree_with_float(
    digits: Task, student: tuple[nn.Module, ModelCheckpoint]
) -> None:
    _, dense = student
    sparse = _zero_half(dense)
    total, nonzero = count_params(sparse)
    dynamic = quantize(StageInput(task=digits, parent=sparse), QuantizeParams(mode="dynamic_int8"))
    q_total, q_nonzero = count_params(dynamic.checkpoint)
    assert q_total == total
    assert q_nonzero <= nonzero  # int8 keeps every zero; tiny weights may round to zero too
    assert q_nonzero > 0.9 * nonzero
    onnx = export(StageInput(task=digits, parent=sparse), ExportParams(runtime="onnxruntime"))
    assert count_params(onnx.checkpoint) == (total, nonzero)


def test_size_of_onnx_checkpoint_measures_the_onnx_bytes(
    digits: Task, student: tuple[nn.Module, ModelCheckpoint]
) -> None:
    _, dense = student
    onnx = export(StageInput(task=digits, parent=dense), ExportParams(runtime="onnxruntime"))
    ckpt = onnx.checkpoint
    assert ckpt.onnx is not None
    assert size_bytes(ckpt) <= len(ckpt.onnx)
    without_state = ModelCheckpoint(ckpt.task, {}, ckpt.recipe, onnx=ckpt.onnx)
    assert size_bytes(without_state) == size_bytes(ckpt)  # the state_dict is not deployed


def test_accuracy_matches_the_training_loop(
    digits: Task, student: tuple[nn.Module, ModelCheckpoint]
) -> None:
    model, ckpt = student
    assert accuracy(digits, ckpt) == pytest.approx(eager_accuracy(model, digits.test, device=CPU))
    assert accuracy(digits, ckpt) > 0.85


@pytest.mark.parametrize("runtime", ["eager", "torchscript", "onnxruntime"])
def test_latency_is_positive_ordered_and_restores_threads(
    runtime: str, digits: Task, student: tuple[nn.Module, ModelCheckpoint]
) -> None:
    _, ckpt = student
    if runtime != "eager":
        ckpt = export(
            StageInput(task=digits, parent=ckpt), ExportParams(runtime=runtime)
        ).checkpoint
    torch.set_num_threads(2)
    try:
        result = measure_latency(digits, ckpt, warmup=WARMUP, repeats=REPEATS)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert isinstance(result, LatencyResult)
    assert result.runtime == runtime
    # the calls that kept their CPU (`running_calls`): on a loaded host a few are dropped
    assert MIN_REPEATS <= result.repeats <= REPEATS and result.batch_size == 1
    assert 0.0 < result.median_ms <= result.p90_ms
    assert result.mean_ms > 0.0
    assert result.median_ms < 50.0  # a 64-64-32-10 MLP: microseconds, not tens of ms


def test_latency_restores_threads_when_the_runtime_fails(digits: Task) -> None:
    broken = ModelCheckpoint("digits", {}, {"arch": "student", "runtime": "onnxruntime"})
    torch.set_num_threads(2)
    try:
        with pytest.raises(Exception, match="no ONNX bytes"):
            measure_latency(digits, broken, warmup=WARMUP, repeats=REPEATS)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_throughput_grows_with_batch(
    digits: Task, student: tuple[nn.Module, ModelCheckpoint]
) -> None:
    _, ckpt = student
    one = throughput(digits, ckpt, batch_size=1, warmup=5, repeats=40)
    many = throughput(digits, ckpt, batch_size=128, warmup=2, repeats=10)
    assert 0.0 < one < many


def test_evaluate_reports_every_objective(
    digits: Task, student: tuple[nn.Module, ModelCheckpoint]
) -> None:
    _, ckpt = student
    metrics = evaluate(digits, ckpt, warmup=WARMUP, repeats=REPEATS)
    assert isinstance(metrics, ModelMetrics)
    assert metrics.accuracy == accuracy(digits, ckpt)
    assert metrics.size_bytes == size_bytes(ckpt)
    assert (metrics.params_total, metrics.params_nonzero) == count_params(ckpt)
    assert metrics.latency_ms is not None and metrics.latency_ms_p90 is not None
    assert 0.0 < metrics.latency_ms <= metrics.latency_ms_p90
    assert metrics.runtime == "eager"
    no_latency = evaluate(digits, ckpt, latency=False)
    assert no_latency.latency_ms is None and no_latency.latency_ms_p90 is None
    assert not math.isnan(no_latency.accuracy)


def test_robust_cv_ignores_one_slow_round() -> None:
    """The final phase's `latency_cv`: one round in a slow spell (3x) among 7 steady ones
    leaves it near the steady spread, where stdev / mean would read over 50%."""
    import numpy as np

    from stages.latency import robust_cv

    steady = np.array([1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01])
    assert robust_cv(steady) == pytest.approx(0.0148, abs=1e-3)
    one_slow = steady.copy()
    one_slow[3] = 3.0
    assert one_slow.std() / one_slow.mean() > 0.5
    assert robust_cv(one_slow) < 0.03
    spread = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # a really unsteady model stays flagged
    assert robust_cv(spread) == pytest.approx(1.4826 / 3)
    assert robust_cv(np.zeros(3)) == 0.0


def test_interleaved_latency_pairs_rounds_against_the_reference(digits: Task) -> None:
    """The final latency phase's measurement: one result per checkpoint, rounds interleaved,
    the reference's own paired speedup exactly 1, medians taken over the round medians."""
    from stages.latency import interleaved_latency
    from tests.stages.conftest import train_checkpoint

    teacher = train_checkpoint(digits, "teacher", epochs=1)
    student = train_checkpoint(digits, "student", epochs=1)
    results = interleaved_latency(digits, [teacher, student], rounds=3, warmup=2, repeats=15)
    assert len(results) == 2
    for r in results:
        assert r.rounds == 3 and len(r.round_medians_ms) == 3
        assert min(r.round_medians_ms) <= r.median_ms <= max(r.round_medians_ms)
        assert r.p90_ms >= min(r.round_medians_ms) > 0
        assert r.cv >= 0 and r.runtime == "eager"
    assert results[0].speedup == 1.0
    pairs = zip(results[0].round_medians_ms, results[1].round_medians_ms, strict=True)
    ratios = [a / b for a, b in pairs]
    assert results[1].speedup == pytest.approx(sorted(ratios)[1])  # the median of 3 ratios
    assert interleaved_latency(digits, []) == []
    with pytest.raises(SqueezerayError, match=r"latency\.rounds=0"):
        interleaved_latency(digits, [teacher], rounds=0)


class _FakeClock:
    """perf_counter_ns of a machine whose speed the test sets: calls advance it."""

    def __init__(self) -> None:
        self.ns = 0
        self.cpu_ns = 0  # this thread's CPU time: wall time less the time it was descheduled
        self.spell: tuple[int, int] = (0, 0)  # [start, end) ns in which calls run 5x slower
        self.slice_ns = 0  # 3 in 5 calls this long or longer lose 10 ms off the CPU (0: never)
        self.long_calls = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def thread_time_ns(self) -> int:
        return self.cpu_ns

    def run(self, cost_ns: int) -> None:
        start, end = self.spell
        cost = cost_ns * (5 if start <= self.ns < end else 1)
        self.ns += cost
        self.cpu_ns += cost
        if self.slice_ns and cost_ns >= self.slice_ns:
            self.long_calls += 1
            if self.long_calls % 5 < 3:
                self.ns += 10_000_000  # off the CPU: wall time, no CPU time


class _FakePredictor:
    def __init__(self, clock: _FakeClock, cost_ns: int, runtime: str) -> None:
        self.clock, self.cost_ns, self.runtime, self.calls = clock, cost_ns, runtime, 0

    def prepare(self, x: object) -> object:
        return x

    def run_native(self, native: object) -> None:
        self.calls += 1
        self.clock.run(self.cost_ns)


def _fake_machine(
    monkeypatch: pytest.MonkeyPatch, clock: _FakeClock, made: Iterator[_FakePredictor]
) -> None:
    from types import SimpleNamespace

    from stages import latency

    fake_time = SimpleNamespace(
        perf_counter_ns=clock.perf_counter_ns, thread_time_ns=clock.thread_time_ns
    )
    monkeypatch.setattr(latency, "time", fake_time)
    monkeypatch.setattr(latency, "make_predictor", lambda task, ckpt, **kw: next(made))
    monkeypatch.setattr(latency, "_test_batches", lambda task, batch_size: [0, 1, 2])


def test_descheduled_calls_do_not_overstate_the_slower_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On oversubscribed cores the OS deschedules long calls far more often than short ones:
    here 3 in 5 of the reference's 1 ms calls lose 10 ms off the CPU, no 0.1 ms call does. Calls
    whose wall time exceeds their thread's CPU time are dropped, so the speedup stays the
    true 10x (wall-time medians: 110x). Deterministic fake clock."""
    from stages import latency

    clock = _FakeClock()
    clock.slice_ns = 1_000_000
    made = iter(
        [_FakePredictor(clock, 1_000_000, "eager"), _FakePredictor(clock, 100_000, "onnxruntime")]
    )
    _fake_machine(monkeypatch, clock, made)
    torch.set_num_threads(1)
    reference, model = latency.interleaved_latency(
        None,
        [object(), object()],
        rounds=3,
        warmup=5,
        repeats=30,  # type: ignore[arg-type]
    )
    assert model.speedup == pytest.approx(10.0) and reference.median_ms == pytest.approx(1.0)
    # with more than one torch thread the work is not all on this thread: every call counts
    times = np.array([11_000_000] + [1_000_000] * 5), np.array([10_000_000] + [0] * 5)
    assert latency.running_calls(*times).tolist() == [1_000_000] * 5
    torch.set_num_threads(2)
    try:
        assert latency.running_calls(*times).size == 6
    finally:
        torch.set_num_threads(1)


def test_interleaved_latency_pairs_a_slow_reference_with_a_fast_model_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow spell of the machine must hit a slow reference (1 ms) and a fast model (0.1 ms)
    alike: the paired speedup stays near the true 10x. Timing each model's round in one block
    let the reference fill nearly all the wall time and take a spell alone (speedup ~30x).
    Deterministic: a fake clock advanced by the fake models' calls, no wall-clock timing."""
    from stages import latency

    clock = _FakeClock()
    made = iter(
        [_FakePredictor(clock, 1_000_000, "eager"), _FakePredictor(clock, 100_000, "onnxruntime")]
    )
    _fake_machine(monkeypatch, clock, made)
    # warm-up: 5 calls each (1 ms, 0.1 ms); the spell covers the 30 ms after them: as long
    # as the reference's first round of 30 calls, when rounds are timed model by model
    warmup_ns = 5 * 1_000_000 + 5 * 100_000
    clock.spell = (warmup_ns, warmup_ns + 30 * 5 * 1_000_000)
    ckpts = [object(), object()]
    results = latency.interleaved_latency(
        None,
        ckpts,
        rounds=2,
        warmup=5,
        repeats=30,
        time_cap_s=1.0,  # type: ignore[arg-type]
    )
    reference, model = results
    assert reference.speedup == 1.0 and reference.repeats == model.repeats == 60
    assert 7.0 < model.speedup < 14.0, model
    assert reference.median_ms < 5.0  # the reference is not timed inside the spell alone


def test_in_sweep_latency_times_the_batch_size_the_final_phase_times(
    monkeypatch: pytest.MonkeyPatch, digits: Task
) -> None:
    """`latency.batch_size` reaches the in-sweep measurement (it timed batch 1 whatever the
    setting, while the final phase timed `batch_size` rows: two different figures side by
    side), from the measure task down to the timed calls."""
    from orchestrator.engine import stage_tasks
    from orchestrator.engine.requests import MeasureRequest
    from stages import latency, metrics
    from tests.stages.conftest import train_checkpoint

    seen: list[int] = []
    real = latency.time_calls

    def spy(predictor: object, task: Task, **kwargs: object) -> object:
        seen.append(int(kwargs["batch_size"]))  # type: ignore[call-overload]
        return real(predictor, task, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(metrics, "time_calls", spy)  # where evaluate looks it up
    ckpt = train_checkpoint(digits, "student", epochs=1)
    monkeypatch.setattr(stage_tasks, "_load_input", lambda data, where: ckpt)
    request = MeasureRequest(task="digits", key="k", warmup=1, repeats=5, batch_size=4)
    row = stage_tasks.execute_measure(request, b"")
    assert seen == [4] and row["latency_ms_sweep"] > 0
