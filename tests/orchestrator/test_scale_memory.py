"""Memory requests sized from the model, the refusal of a sweep that cannot fit, and the
choice of the measuring core (issue 24)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.engine import memory, stage_tasks
from stages.errors import SqueezerayError

MIB = 2**20


def test_small_models_ask_ray_for_no_memory() -> None:
    assert memory.memory_options(4 * MIB, copies=memory.STAGE_COPIES) == {}


def test_a_large_model_asks_for_its_copies_plus_a_worker() -> None:
    request = memory.memory_options(200 * MIB, copies=memory.STAGE_COPIES)
    assert request == {"memory": memory.STAGE_COPIES * 200 * MIB + memory.WORKER_BASELINE_BYTES}


def test_a_model_that_fits_no_node_is_refused_with_the_numbers() -> None:
    memory.check_fits(200 * MIB, [64 * 2**30])  # fits: nothing raised
    memory.check_fits(200 * MIB, [])  # no node information: nothing to check against
    with pytest.raises(SqueezerayError) as info:
        memory.check_fits(2 * 2**30, [4 * 2**30])
    message = str(info.value)
    assert "2.00 GiB of weights" in message and "4.00 GiB" in message
    assert "ray start --memory" in message


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_too_large_for_the_cluster_is_refused_before_any_ray_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.engine.prepare import prepare_sweep
    from orchestrator.engine.sweep import execute_sweep

    storage = tmp_path / "results"
    sweep = prepare_sweep("tiny", storage=storage)
    assert sweep.model_bytes > 0  # the fingerprint's models, counted
    # this tiny model is "large" and the cluster's nodes small: the request cannot fit
    monkeypatch.setattr(memory, "REQUEST_FROM_BYTES", 1)
    monkeypatch.setattr(memory, "node_memory_bytes", lambda: [float(MIB)])
    with pytest.raises(SqueezerayError, match=r"offers 0\.00 GiB of memory"):
        execute_sweep(sweep)
    assert not (storage / "cache").exists() or not any((storage / "cache").iterdir())


def test_measurements_pin_the_idlest_allowed_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter([{0: 100, 1: 100, 2: 100, 3: 100}, {0: 105, 1: 190, 2: 150, 3: 110}])
    monkeypatch.setattr(stage_tasks, "_idle_jiffies", lambda: next(samples))
    monkeypatch.setattr(stage_tasks.time, "sleep", lambda s: None)
    assert stage_tasks.idlest_cpu({0, 1, 2, 3}) == 1
    samples = iter([{0: 100, 1: 100, 2: 100, 3: 100}, {0: 105, 1: 190, 2: 150, 3: 110}])
    assert stage_tasks.idlest_cpu({0, 2, 3}) == 2  # only the CPUs this worker may use
    samples = iter([{}, {}])  # no /proc/stat: the highest-numbered, as before
    assert stage_tasks.idlest_cpu({0, 2}) == 2


def test_a_returned_task_freezes_what_survives_and_a_raising_one_does_not() -> None:
    """After a task returns, what survives a full collection is the worker's long-lived state
    and is frozen out of later collections (gc.freeze); a task that raised leaves its frames
    collectable (its traceback holds them in a cycle)."""
    import gc

    gc.unfreeze()
    try:
        with pytest.raises(ValueError), stage_tasks._released():
            raise ValueError("stage failed")
        assert gc.get_freeze_count() == 0
        with stage_tasks._released():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_large_models_training_activations_are_measured_and_requested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transformer's activations outweigh its weights: the stage request counts them,
    measured at the space's largest training batch before Ray starts."""
    from orchestrator.engine.prepare import prepare_sweep

    small = prepare_sweep("tiny", storage=tmp_path / "a")
    assert small.activation_bytes == 0  # a small model: nothing measured, nothing requested
    monkeypatch.setattr(memory, "REQUEST_FROM_BYTES", 1)  # this tiny model counts as large
    space = tmp_path / "space.yaml"
    space.write_text(
        "task: blobs\npipeline: [teacher, distill]\n"
        "objectives: {val_accuracy: max}\n"
        "params: {distill.batch_size: {choice: [32, 128]}}\n"
        "search: {algorithm: random, trials: 2}\n"
    )
    default = prepare_sweep("tiny", storage=tmp_path / "b")
    large = prepare_sweep(str(space), storage=tmp_path / "c")
    assert memory.training_batch_size(default.space) == 64
    assert memory.training_batch_size(large.space) == 128
    assert default.activation_bytes > 0
    assert large.activation_bytes == 2 * default.activation_bytes  # linear in the batch
    request = memory.memory_options(
        default.model_bytes, copies=memory.STAGE_COPIES, activation_bytes=large.activation_bytes
    )["memory"]
    without = memory.memory_options(default.model_bytes, copies=memory.STAGE_COPIES)["memory"]
    assert request - without == memory.ACTIVATION_COPIES * large.activation_bytes
    with pytest.raises(SqueezerayError, match="activations") as info:
        memory.check_fits(default.model_bytes, [float(without)], activation_bytes=2**30)
    assert "batch_size" in str(info.value)
