"""Sweep options through a real local Ray: GPU trials on a CPU machine, time budget, ASHA,
constraints, latency resources and the errors raised before any Ray work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.engine.plan import stage_task_options
from orchestrator.engine.runtime import LATENCY_RESOURCE, ClusterInfo, latency_resources
from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.space.config import load_space
from orchestrator.space.model import Constraint
from stages.device import resolve_device
from stages.errors import SqueezerayError


def test_stage_task_options_carry_gpus() -> None:
    assert stage_task_options(1, 0) == {"num_cpus": 1}
    assert stage_task_options(2, 0.5) == {"num_cpus": 2, "num_gpus": 0.5}


def test_cuda_request_falls_back_to_cpu_without_cuda() -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("cuda").type == expected
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(SqueezerayError, match="tpu"):
        resolve_device("tpu")


def _info(**resources: float) -> ClusterInfo:
    return ClusterInfo(
        cpus=2, gpus=0, resources={"CPU": 2, **resources}, nodes=1, started_here=True
    )


def test_latency_resources() -> None:
    assert latency_resources(_info(**{LATENCY_RESOURCE: 1}), None) == {LATENCY_RESOURCE: 1.0}
    assert latency_resources(_info(), None) == {}
    pinned = latency_resources(_info(edge=1, **{LATENCY_RESOURCE: 1}), "edge")
    assert pinned == {"edge": 0.001, LATENCY_RESOURCE: 1.0}
    with pytest.raises(SqueezerayError, match="--latency-resource='edge'"):
        latency_resources(_info(), "edge")


def test_bad_flags_fail_before_ray(tmp_path: Path) -> None:
    with pytest.raises(SqueezerayError, match="--cpus-per-trial"):
        prepare_sweep("tiny", storage=tmp_path, cpus_per_trial=0)
    with pytest.raises(SqueezerayError, match="--time-budget"):
        prepare_sweep("tiny", storage=tmp_path, time_budget="soon")
    with pytest.raises(SqueezerayError, match="no_such_module"):
        prepare_sweep("tiny", storage=tmp_path, task="no_such_module:make")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_gpu_trials_constraints_and_asha(tmp_path: Path) -> None:
    """--gpus-per-trial schedules on the (logical) GPU and falls back to CPU; an impossible
    constraint still ends cleanly with every row infeasible; ASHA runs with the scheduler."""
    space = load_space("tiny")
    space_file = tmp_path / "space.yaml"
    text = Path(space.source).read_text()
    text = text.replace(
        "search: {algorithm: random, trials: 4, seed: 0}",
        "search: {algorithm: random, trials: 4, seed: 0, scheduler: asha}",
    )
    text += '\nconstraints: {val_accuracy: ">= 1.5"}\n'
    space_file.write_text(text)
    outcome = execute_sweep(
        prepare_sweep(str(space_file), storage=tmp_path / "r", gpus_per_trial=0.5)
    )
    trials = [r for r in outcome.table.to_pylist() if not r["is_baseline"]]
    assert len(trials) == 4
    assert {r["status"] for r in trials} <= {"ok", "stopped"}
    assert any(r["status"] == "ok" for r in trials)
    assert all(r["feasible"] is False for r in trials)


def test_memory_storage_is_refused_for_sweeps() -> None:
    with pytest.raises(SqueezerayError, match="memory://x"):
        prepare_sweep("tiny", storage="memory://x")


def test_latency_measurement_pins_one_cpu_and_restores() -> None:
    import os

    from orchestrator.engine.stage_tasks import pinned_to_one_cpu

    before = os.sched_getaffinity(0)
    with pinned_to_one_cpu():
        assert len(os.sched_getaffinity(0)) == 1
        assert os.sched_getaffinity(0) <= before
    assert os.sched_getaffinity(0) == before


def test_optuna_learns_constraint_values_and_its_state_can_be_saved(tmp_path: Path) -> None:
    """Constraint violations reach the Optuna trial, and the searcher pickles (Tune saves it
    every few seconds; a constraints_func closure in the sampler could not be pickled)."""
    from orchestrator.engine.search import make_search

    space = load_space("tiny").with_overrides(algorithm="optuna")
    space = dataclasses.replace(
        space,
        constraints=(Constraint("val_accuracy", ">=", 0.95), Constraint("size_bytes", "<", 4e3)),
    )
    alg, _, _ = make_search(space, constraints=space.search_constraints())
    searcher = alg.searcher
    searcher.set_search_properties(None, None, {})
    assert searcher.suggest("t1") is not None
    result = {
        "status": "ok",
        "final": True,
        "val_accuracy": 0.9,
        "test_accuracy": 0.99,  # the test split: never what the search sees
        "size_bytes": 3000,
        "latency_ms_sweep": 0.02,  # the in-sweep latency: what the search sees
        "latency_ms_final": 0.5,  # measured after the search: never what it sees
    }
    searcher.on_trial_complete("t1", result=result)
    (trial,) = searcher._ot_study.trials
    assert trial.values == [0.9, 3000, 0.02]
    assert trial.constraints == {
        "val_accuracy >= 0.95": pytest.approx(0.05),
        "size_bytes < 4000": 0.0,
    }
    alg.save_to_dir(str(tmp_path), session_str="s")
    assert any(tmp_path.iterdir())
    searcher.on_trial_complete("t1", result=result)  # a repeated completion is ignored


def test_optuna_is_told_pruned_or_fail_for_trials_without_final_objectives() -> None:
    """A trial ASHA stopped (its last report is a stage's) or one missing an objective cannot
    be told values: it is told PRUNED (Optuna's state for a trial stopped early) or FAIL
    instead of staying RUNNING forever."""
    import optuna

    from orchestrator.engine.search import make_search

    space = load_space("tiny").with_overrides(algorithm="optuna")
    alg, _, _ = make_search(space, constraints=(("val_accuracy", ">=", 0.95),))
    searcher = alg.searcher
    searcher.set_search_properties(None, None, {})
    searcher.suggest("stopped")
    searcher.suggest("nan")
    searcher.on_trial_complete("stopped", result={"stage": "prune", "final": False})
    nan = {
        "status": "ok",
        "final": True,
        "val_accuracy": float("nan"),
        "size_bytes": 1,
        "latency_ms_sweep": 1,
    }
    searcher.on_trial_complete("nan", result=nan)
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_optuna_sweep_with_constraints_runs_to_the_end(tmp_path: Path) -> None:
    """Through Ray Tune, with the Gaussian-process sampler (4 start-up trials, then 2 GP ones)."""
    space_file = tmp_path / "space.yaml"
    text = Path(load_space("tiny").source).read_text()
    text = text.replace(
        "search: {algorithm: random, trials: 4, seed: 0}",
        # one at a time: trials 5 and 6 are suggested after 4 results, so the GP is fitted
        "search: {algorithm: optuna, sampler: gp, trials: 6, seed: 0, max_concurrent: 1}",
    )
    space_file.write_text(text + '\nconstraints: {val_accuracy: ">= 0.5"}\n')
    outcome = execute_sweep(prepare_sweep(str(space_file), storage=tmp_path / "r"))
    trials = [r for r in outcome.table.to_pylist() if not r["is_baseline"]]
    assert len(trials) == 6 and all(r["status"] == "ok" for r in trials)
    # The constraint is checked on the validation split, not on the test split.
    assert all(r["feasible"] == (r["val_accuracy"] >= 0.5) for r in trials)


def test_gp_sampler_is_chosen_and_warm_start_points_carry_constraints() -> None:
    import optuna

    from orchestrator.engine.search import make_search

    space = load_space("tiny").with_overrides(algorithm="optuna")
    space = dataclasses.replace(space, search=dataclasses.replace(space.search, sampler="gp"))
    points = [{"prune.ratio": 0.3, "quantize.mode": "none"}]
    alg, _, _ = make_search(
        space,
        constraints=(("val_accuracy", ">=", 0.95), ("params_nonzero", "<", 10.0)),
        points_to_evaluate=points,
        evaluated_rewards=[[0.9, 5000.0, 0.04]],
        warm_constraint_values=[{"params_nonzero": 12.0}],
    )
    study = alg.searcher._ot_study
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    (trial,) = study.trials
    # val_accuracy is an objective (the search's column for `accuracy`): 0.05 short;
    # params_nonzero is not: its stored value, 2 over
    assert trial.constraints == {
        "val_accuracy >= 0.95": pytest.approx(0.05),
        "params_nonzero < 10": pytest.approx(2.0),
    }
