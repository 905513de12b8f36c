"""The Ray Tune side of a sweep: what the Tuner is given, and the Tuner built new or restored.

`tune_setup` makes the trainable (a coordinator trial holding no CPU, whose stage tasks hold
the real CPUs/GPUs), the search algorithm (`search.make_search`) and the results writer (a
driver-side callback writing each trial's row as it ends); `make_tuner` builds a new Tuner, or
restores the Tune experiment of an interrupted sweep (`--resume`: same trial ids, finished
trials not re-run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.engine.records import SweepRun
from orchestrator.engine.tune_state import TunePlan, final_trials
from orchestrator.space.model import SearchSpace
from orchestrator.store.storage import tune_storage
from stages.errors import SqueezerayError

# A trial only waits on refs; its stage tasks hold the CPUs. Zero CPU (Tune rejects an empty
# bundle, hence the 1-byte memory request): 0.01 CPU per trial left fewer than N whole CPUs
# free, so on 1 CPU nothing could run and on 2 only one stage task at a time (bench/).
COORDINATOR_RESOURCES: dict[str, float] = {"cpu": 0, "memory": 1}

Progress = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class TuneSetup:
    """What a sweep's Tuner is given."""

    trainable: Any  # trial_function with the plan, the cache actor and the stored results
    search_alg: Any
    param_space: dict[str, Any]
    num_samples: int
    concurrency: int  # trials at once (enforced by the search algorithm)
    writer: Any  # the ResultsWriter callback
    path: str  # the Tune experiments' directory on `fs` (the experiment is path/experiment)
    fs: Any  # its pyarrow filesystem
    experiment: str  # the Tune experiment's name (`tune_state.TunePlan`)
    restore: bool  # restore that experiment (a resumed sweep whose Tune state is sound)
    reruns: int = 0  # lost trials run again as drawn, beside num_samples (a rebuild)


def configure_tune() -> None:
    """Process-wide Tune and Optuna settings for a sweep (set once, before Tune starts)."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune snapshots its experiment state (trial statuses, searcher) every 10+ s by default; a
    # trial started and finished between two snapshots is unknown to a restored run. Every
    # 2 s keeps that window short at a small cost (the state is a few KB per trial).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def tune_setup(
    run: SweepRun,
    stored: Mapping[str, Mapping[str, Any]],
    *,
    plan: TunePlan,
    concurrency: int,
    warm_start: tuple[Any, ...] | None,
    progress: Progress | None,
) -> TuneSetup:
    """The trainable, search and writer of a sweep. `stored`: trial id -> the result already
    written (a resumed sweep: replayed, and counted as done); `plan`: the Tune experiment to
    restore or start (`tune_state.tune_plan`; a rebuilt one runs its lost trials again as
    they were drawn and draws the trials never started, seeded by the finished ones);
    `warm_start`: (points, rewards[, constraint values]) seeding Optuna."""
    from ray import tune

    from orchestrator.engine.pipeline import trial_function
    from orchestrator.engine.search import make_search

    space, sweep_id = run.sweep.space, run.sweep.sweep_id
    warm = _merged_warm_start(warm_start, plan.warm_start)
    search_alg, param_space, num_samples = make_search(
        space,
        constraints=run.plan.constraints,
        points_to_evaluate=warm[0] if warm else None,
        evaluated_rewards=warm[1] if warm else None,
        warm_constraint_values=warm[2] if warm and len(warm) > 2 else None,
        max_concurrent=concurrency,
        deadline_key=sweep_id,
        done=plan.done,
        reruns=plan.reruns,
    )
    finals = final_trials(stored)
    if plan.trials_left is not None and space.search.algorithm != "grid":
        num_samples = plan.trials_left  # (a grid left out the points done: its count is right)
    rebuilt = plan.trials_left is not None
    total = len(finals) + len(plan.reruns) + num_samples if rebuilt else num_samples
    writer = results_writer(run, stored, total=total, progress=progress)
    trainable = tune.with_resources(
        tune.with_parameters(trial_function, plan=run.plan, cache=run.cache, replay=stored),
        COORDINATOR_RESOURCES,
    )
    # Tune gets the filesystem and the path on it: a URI's query string (an S3 endpoint) is
    # not something Tune can append sub-paths to.
    path, fs = tune_storage(run.sweep.storage, "tune")
    return TuneSetup(
        trainable=trainable,
        search_alg=search_alg,
        param_space=param_space,
        num_samples=num_samples,
        concurrency=concurrency,
        writer=writer,
        path=path,
        fs=fs,
        experiment=plan.experiment,
        restore=plan.restore,
        reruns=len(plan.reruns),
    )


def _merged_warm_start(*starts: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """Warm starts given together (nightly's earlier sweeps, a rebuilt resume's own rows) as
    one (points, rewards, constraint values); None when there is none."""
    given = [w for w in starts if w]
    if not given:
        return None
    if len(given) == 1:
        return given[0]
    parts: list[list[Any]] = [[], [], []]
    for warm in given:
        for i in range(3):
            parts[i].extend(warm[i] if len(warm) > i else [{} for _ in warm[0]])
    return tuple(parts)


def results_writer(
    run: SweepRun,
    stored: Mapping[str, Mapping[str, Any]],
    *,
    total: int,
    progress: Progress | None,
) -> Any:
    """The driver-side callback writing each trial's row; `stored` rows count as done, but
    `lost` ones (`schema.RERUN_STATUSES`), which this run runs again."""
    from orchestrator.engine.tune_callbacks import ResultsWriter
    from orchestrator.store.schema import RERUN_STATUSES

    space, sweep_id = run.sweep.space, run.sweep.sweep_id
    return ResultsWriter(
        storage=run.sweep.storage.uri,
        sweep_id=sweep_id,
        sweep_name=space.name or sweep_id,
        task=space.task,
        code_version=run.plan.code_version,
        constraints=run.plan.constraints,
        total=total,
        progress=progress,
        done={
            "ok": sum(r["status"] == "ok" for r in stored.values()),
            "failed": sum(r["status"] not in ("ok", *RERUN_STATUSES) for r in stored.values()),
        },
        plan=run.plan,
        final=final_trials(stored),
    )


def make_tuner(run: SweepRun, setup: TuneSetup) -> Any:
    """The sweep's Tuner: the interrupted experiment restored (a resumed sweep whose Tune
    state is sound: `tune_state.tune_plan`), else a new one named `setup.experiment`."""
    from ray import tune

    sweep = run.sweep
    if setup.restore:
        experiment_dir = f"{setup.path}/{setup.experiment}"
        return restored_tuner(experiment_dir, setup.trainable, setup.writer, setup.fs)
    return tune.Tuner(
        setup.trainable,
        param_space=setup.param_space,
        tune_config=tune.TuneConfig(
            search_alg=setup.search_alg,
            scheduler=scheduler(sweep.space),
            num_samples=setup.num_samples,
            max_concurrent_trials=setup.concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=setup.experiment,
            storage_path=setup.path,
            storage_filesystem=setup.fs,
            verbose=0,
            callbacks=[setup.writer],
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def restored_tuner(experiment_dir: str, trainable: Any, writer: Any, fs: Any = None) -> Any:
    """The Tune experiment of an interrupted sweep, with this run's results writer attached.

    Unfinished and errored trials resume under their trial ids (a restart would give them new
    ids, and a second row). Tune brings back the RunConfig pickled when the sweep first
    started, whose callbacks are copies of that run's writer without its progress display and
    without the rows written since; `Tuner.restore` takes no callbacks, so they are replaced
    on the restored run config (read by `fit`).
    """
    from ray import tune

    tuner = tune.Tuner.restore(
        experiment_dir,
        trainable=trainable,
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=fs,
    )
    local: Any = getattr(tuner, "_local_tuner", None)
    run_config = local.get_run_config() if local is not None else None
    if run_config is None or not hasattr(run_config, "callbacks"):
        raise SqueezerayError(
            "cannot attach the results writer to the restored Tune run (this Ray version's "
            "Tuner has no local run config); resume with the Ray version that started it"
        )
    run_config.callbacks = [writer]
    return tuner


def scheduler(space: SearchSpace) -> Any:
    """ASHA early stopping on validation accuracy after each stage (a single-objective
    scalarisation: multi-objective Optuna ignores intermediate results), one decision per
    shared stage result (`asha.SharedStageASHA`)."""
    if space.search.scheduler != "asha":
        return None
    from orchestrator.engine.asha import SharedStageASHA

    return SharedStageASHA(
        metric="val_accuracy",
        mode="max",
        time_attr="training_iteration",
        max_t=len(space.pipeline) + 1,
        grace_period=min(2, len(space.pipeline)),
        reduction_factor=2,
    )
