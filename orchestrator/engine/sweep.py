"""`run_sweep`: the search space -> Ray Tune -> Parquet results, with the stage cache in between.

The sweep's story, one step each (`_execute_sweep`): every check before Ray
(`prepare.prepare_sweep`) -> start or join Ray and check its CPUs/GPUs -> the manifest says
`running` (`manifest`) and the time budget's clock starts (`deadlines`) -> the plan
(`plan.sweep_plan`) -> the sweep's stage cache actor -> the search, results writer and
trainable (`tuner.tune_setup`) -> the baseline (the uncompressed teacher, eager) measured beside
the trials (`latency_phase`) -> the Tuner built or restored and run under stop signals
(`tuner.make_tuner`, `signals`) -> the baseline row and the final latency phase -> the
manifest says `finished` or `interrupted`, the sweep's files are compacted -> its summary
(`summary.sweep_summary`). Tune runs cheap coordinator trials (holding no CPU) whose stage
tasks hold the real CPUs/GPUs; a driver-side callback writes each trial's row as it finishes.

Interruptions: Ctrl-C or SIGTERM stops launching trials, lets Tune save its experiment state,
records what finished and raises `SweepInterrupted`, whose message is the resume command; in
the final latency phase it stops the phase (its task cancelled) and `--resume` runs just that. A
killed driver loses nothing either: rows and checkpoints are written as they finish, and
`resume=True` restores the Tune experiment (same trial ids; finished trials are not re-run),
or - when its state cannot be restored (cut short by a full disk) - runs the trials left as a
new one (`tune_state`). A full or read-only storage stops the sweep at the failing write with
a `StorageFault` naming the resume command; one driver runs a sweep at a time (`sweep_lock`).

This module is the engine's public face for a sweep (`__all__`): the CLI, nightly runs and
benchmarks import from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.engine.deadlines import end_budget, start_budget
from orchestrator.engine.events import Progress, report_step
from orchestrator.engine.latency_phase import (
    FINAL_PHASE_INTERRUPTED,
    FinalPhase,
    record_baseline,
    run_final_latency,
    start_baseline,
)
from orchestrator.engine.manifest import (
    finished_note,
    read_manifest,
    resume_command,
    stored_results,
    sweep_table,
    write_manifest,
)
from orchestrator.engine.plan import (
    TRAINING_SEED,
    stage_task_options,
    sweep_plan,
    trial_concurrency,
)
from orchestrator.engine.prepare import prepare_sweep, sweep_options
from orchestrator.engine.records import (
    EXIT_LOST_TRIALS,
    EXIT_NO_TRIAL_OK,
    PreparedSweep,
    SweepInterrupted,
    SweepOutcome,
    SweepRun,
    SweepSummary,
)
from orchestrator.engine.requests import BASELINE_TRIAL
from orchestrator.engine.runtime import ClusterInfo
from orchestrator.engine.signals import stop_signals
from orchestrator.engine.summary import RunEnd, points_repeated, sweep_summary
from orchestrator.engine.tune_state import tune_plan
from orchestrator.engine.tuner import TuneSetup, configure_tune, make_tuner, tune_setup
from orchestrator.query.result import SweepResult
from orchestrator.space.model import SearchSpace
from orchestrator.space.options import SweepOptions
from orchestrator.store.rows import now
from orchestrator.store.storage import Storage
from stages.errors import SqueezerayError

__all__ = [
    "EXIT_LOST_TRIALS",
    "EXIT_NO_TRIAL_OK",
    "TRAINING_SEED",
    "PreparedSweep",
    "SweepInterrupted",
    "SweepOutcome",
    "SweepSummary",
    "execute_sweep",
    "finished_note",
    "prepare_sweep",
    "resume_command",
    "run_sweep",
    "sweep_options",
]

log = logging.getLogger(__name__)


def run_sweep(
    space: SearchSpace | Mapping[str, Any] | str | Path | None = None,
    options: SweepOptions | None = None,
    *,
    sweep_id: str | None = None,
    resume: bool = False,
    warm_start: tuple[Any, ...] | None = None,
    progress: Progress | None = None,
    **keywords: Any,
) -> SweepResult:
    """Run a compression sweep and return a frozen `SweepResult`: its rows as a
    `pyarrow.Table` (`.table`, baseline included) with `front()`, `best()`, `to_pandas()`,
    `plot()` and `export()`.

    `space` is a SearchSpace, a dict with a search space's YAML keys ({"task": "digits",
    "pipeline": [...], "params": {...}}), a YAML path, a packaged space name ("default",
    "quick") or None (the default space). The sweep's options are `options` or, as keywords,
    the fields of `SweepOptions` (`trials=`, `storage=`, `time_budget="30m"`,
    `cpus_per_trial=`, ...); they win over the space. Everything is validated before Ray
    starts; a SqueezerayError names the key, the value and what is accepted (all of them for
    the space).

    `sweep_id` names a new sweep (default: the space's name, the start time and a random
    suffix). With `resume=True` it chooses a stored sweep in `storage` (default: the latest),
    whose space and options come from its manifest (`space` may be left out): an interrupted
    sweep runs what it has left; one that already finished runs nothing and is returned as
    its `SweepResult` without starting Ray, which is how to get `.best()`/`.export()` for a
    stored sweep (`run_sweep(storage="runs/", sweep_id="...", resume=True)`).
    """
    sweep = prepare_sweep(
        space, options, sweep_id=sweep_id, resume=resume, progress=progress, **keywords
    )
    if sweep.finished:
        log.warning("%s", finished_note(sweep.storage, sweep.sweep_id))
        return _result(sweep, sweep_table(sweep.storage, sweep.sweep_id), None)
    outcome = execute_sweep(sweep, warm_start=warm_start, progress=progress)
    return _result(sweep, outcome.table, outcome.summary)


def _result(sweep: PreparedSweep, table: Any, summary: Any) -> SweepResult:
    return SweepResult(
        table=table,
        storage=sweep.storage.uri,
        sweep_id=sweep.sweep_id,
        objectives={o.name: o.direction for o in sweep.space.objectives},
        summary=summary,
    )


def execute_sweep(
    sweep: PreparedSweep,
    *,
    address: str | None = None,
    latency_resource: str | None = None,
    num_cpus: int | None = None,
    warm_start: tuple[Any, ...] | None = None,
    progress: Progress | None = None,
) -> SweepOutcome:
    """`_execute_sweep` as the sweep's one driver (`lock.sweep_lock`: a second driver is
    refused, naming this one's pid and host) while holding the storage's shared in-use lock
    (`lock.storage_in_use`), so `squeezeray gc` never deletes a checkpoint this sweep may load.
    Options as there; `address`, `latency_resource` and `num_cpus` default to the sweep's
    `SweepOptions`.

    A sweep that fails after it started (its manifest says `running`) leaves a manifest that
    says `failed` and why, not `running`. A storage fault (full, read-only: `StorageFault`)
    is raised with the command that continues the sweep once it is fixed.
    """
    from orchestrator.store.lock import storage_in_use, sweep_lock

    opts = sweep.options
    # Outside the try: a second driver refused here must not mark the running one's sweep failed.
    with sweep_lock(sweep.storage, sweep.sweep_id):
        try:
            with storage_in_use(sweep.storage):
                return _execute_sweep(
                    sweep,
                    address=opts.address if address is None else address,
                    latency_resource=opts.latency_resource
                    if latency_resource is None
                    else latency_resource,
                    num_cpus=opts.num_cpus if num_cpus is None else num_cpus,
                    warm_start=warm_start,
                    progress=progress,
                )
        except SweepInterrupted:
            raise
        except BaseException as exc:
            _record_failure(sweep, exc)
            hinted = _with_resume_hint(sweep, exc)
            if hinted is exc:
                raise
            raise hinted from exc


def _record_failure(sweep: PreparedSweep, exc: BaseException) -> None:
    """The manifest of a sweep that failed after it started says `failed` and why (when it can
    still be written: a full disk may refuse even that)."""
    from orchestrator.engine.pipeline import bounded, describe_error

    with contextlib.suppress(Exception):
        if read_manifest(sweep.storage, sweep.sweep_id).get("status") == "running":
            write_manifest(
                sweep.storage, sweep, status="failed", error=bounded(describe_error(exc))
            )


def _with_resume_hint(sweep: PreparedSweep, exc: BaseException) -> BaseException:
    """A storage fault (full, read-only) with the command that continues the sweep once it is
    fixed; a Ray failure as one line with that command (`SweepLostToRay`, never a raw Ray
    traceback); any other error as it is."""
    from orchestrator.store.faults import StorageFault, as_storage_fault

    fault = as_storage_fault(exc, sweep.storage.location())
    if fault is None:
        return SweepLostToRay(sweep, exc) if _is_ray_error(exc) else exc
        return exc
    command = resume_command(sweep.storage, sweep.sweep_id, command=sweep.command)
    hinted = StorageFault(f"{fault}; once that is fixed, continue the sweep with: {command}")
    hinted.errno = fault.errno
    return hinted


def _is_ray_error(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, ray.exceptions.RayError)


class SweepLostToRay(SqueezerayError):
    """A Ray failure the sweep could not absorb (its cluster died under it): one line naming
    the cause and the resume command, never a raw Ray traceback (exit 2 in the CLI)."""

    def __init__(self, sweep: PreparedSweep, exc: BaseException) -> None:
        from orchestrator.engine.pipeline import describe_error

        command = resume_command(sweep.storage, sweep.sweep_id, command=sweep.command)
        cause = describe_error(exc).splitlines()[0]
        super().__init__(
            f"sweep {sweep.sweep_id} stopped: Ray failed under it ({cause}); every finished "
            f"trial is saved. To continue, run: {command}"
        )


def _execute_sweep(
    sweep: PreparedSweep,
    *,
    address: str | None,
    latency_resource: str | None,
    num_cpus: int | None,
    warm_start: tuple[Any, ...] | None,
    progress: Progress | None,
) -> SweepOutcome:
    """Run a prepared sweep on Ray (embedded when `address` is None).

    Ctrl-C or SIGTERM (in the main thread) stops launching trials, lets Tune save its
    experiment state, records everything finished and raises `SweepInterrupted` naming the
    resume command; a second signal stops at once. A resumed sweep (`sweep.resume`) restores
    the Tune experiment: finished trials are kept, unfinished ones re-run under their ids; when
    its state cannot be restored, the trials left run as a new experiment (`tune_state`). A row
    that cannot be written (full or read-only storage) stops the trials; its fault is raised.
    """
    configure_tune()
    # A resumed sweep: the rows written before the interruption (trial id -> result), and its
    # Tune experiment restored, or rebuilt when its state cannot be (`tune_state`).
    stored = stored_results(sweep.storage, sweep.sweep_id) if sweep.resume else {}
    plan = tune_plan(sweep, stored)
    sweep = dataclasses.replace(sweep, tune_experiment=plan.experiment, tune_carried=plan.carried)
    report_step(progress, "starting Ray" if address is None else f"joining Ray at {address}")
    run = _start(sweep, address=address, num_cpus=num_cpus, latency_resource=latency_resource)
    if progress is not None:
        from orchestrator.engine.cache import running_stages

        progress("ready", {"running_stages": functools.partial(running_stages, run.cache)})
    stored_baseline = stored.pop(BASELINE_TRIAL, None)
    setup = tune_setup(
        run,
        stored,
        plan=plan,
        concurrency=trial_concurrency(sweep, run.info),
        warm_start=warm_start,
        progress=progress,
    )
    trials = _run_trials(
        run, setup, measure_baseline=stored_baseline is None or stored_baseline["status"] != "ok"
    )
    if setup.writer.fault is not None:  # a row could not be written: the sweep stops here
        _abandon(run)
        raise setup.writer.fault
    final = _after_trials(run, trials, progress)
    with stop_signals() as stop:
        stop.hold()  # the sweep's work is done (or stopped): its status is written regardless
        end = _finish(run, setup, interrupted=trials.interrupted or final.interrupted, final=final)
        table = sweep_table(sweep.storage, sweep.sweep_id)
        summary = sweep_summary(run, table, end)
    if end.interrupted:
        raise SweepInterrupted(summary)
    return SweepOutcome(table=table, summary=summary)


def _start(
    sweep: PreparedSweep, *, address: str | None, num_cpus: int | None, latency_resource: str | None
) -> SweepRun:
    """Ray started or joined and checked, the manifest saying `running`, the time budget's
    clock started, the plan made and the sweep's stage cache actor started."""
    from orchestrator.engine.runtime import init_ray

    started_s = time.perf_counter()
    info = init_ray(address=address, num_cpus=num_cpus)
    _check_resources(sweep, info)
    write_manifest(sweep.storage, sweep, status="running")
    # The time budget counts this run from here, after what earlier runs spent (--resume);
    # the deadline is this process's monotonic clock, never one restored from the dead run.
    clock_start = start_budget(
        sweep.sweep_id, sweep.space.search.time_budget_s, sweep.budget_elapsed_s
    )
    return SweepRun(
        sweep=sweep,
        info=info,
        plan=sweep_plan(sweep),
        cache=_start_cache(sweep, info, latency_resource),
        latency_resource=latency_resource,
        started_s=started_s,
        clock_start=clock_start,
    )


def _check_resources(sweep: PreparedSweep, info: ClusterInfo) -> None:
    """The cluster offers what one trial asks for (--gpus-per-trial, --cpus-per-trial, and
    the memory of a stage task over the task's model: `engine.memory.check_fits`)."""
    from orchestrator.engine.memory import check_fits, node_memory_bytes

    if sweep.gpus_per_trial > 0 and info.gpus < sweep.gpus_per_trial:
        raise SqueezerayError(
            f"--gpus-per-trial={sweep.gpus_per_trial:g} but the Ray cluster offers "
            f"{info.gpus:g} GPUs; drop the flag or connect to a cluster with GPU workers"
        )
    if info.cpus < sweep.cpus_per_trial:
        raise SqueezerayError(
            f"--cpus-per-trial={sweep.cpus_per_trial:g} but the Ray cluster has {info.cpus:g} CPUs"
        )
    check_fits(sweep.model_bytes, node_memory_bytes(), activation_bytes=sweep.activation_bytes)


def _start_cache(sweep: PreparedSweep, info: ClusterInfo, latency_resource: str | None) -> Any:
    """The sweep's stage cache actor: it owns every stage's result and starts stage tasks
    (the trial's CPUs/GPUs) and latency measurements (one CPU and the latency slot), each
    with a memory request when the task's model is large (`engine.memory`)."""
    from orchestrator.engine.cache import StageCache
    from orchestrator.engine.memory import MEASURE_COPIES, STAGE_COPIES, memory_options
    from orchestrator.engine.runtime import latency_resources
    from orchestrator.engine.stage_tasks import cache_actor_name

    measure_options: dict[str, Any] = {
        "num_cpus": 1,
        "resources": latency_resources(info, latency_resource),
        **memory_options(sweep.model_bytes, copies=MEASURE_COPIES),
    }
    stage_options = {
        **stage_task_options(sweep.cpus_per_trial, sweep.gpus_per_trial),
        **memory_options(
            sweep.model_bytes, copies=STAGE_COPIES, activation_bytes=sweep.activation_bytes
        ),
    }
    return StageCache.options(name=cache_actor_name(sweep.sweep_id)).remote(  # type: ignore[attr-defined]
        sweep.storage.uri,
        sweep.sweep_id,
        stage_options=stage_options,
        measure_options=measure_options,
        run_started=time.time(),
    )


@dataclass(frozen=True)
class _Trials:
    """How the trials' run went."""

    interrupted: bool  # Ctrl-C or SIGTERM
    baseline_ref: Any  # the baseline's metrics ref; None when not measured in this run
    started: datetime  # when the baseline was started (its row's started_at)


def _run_trials(run: SweepRun, setup: TuneSetup, *, measure_baseline: bool) -> _Trials:
    """The baseline started beside the trials (when it has no `ok` row yet), then the Tuner's
    trials, under `stop_signals`: Ctrl-C or SIGTERM ends them early (`interrupted`)."""
    baseline_ref: Any = None
    started = now()
    interrupted = False
    with stop_signals() as stop:
        try:
            if measure_baseline:
                # The baseline (uncompressed teacher, eager) shares the trials' teacher.
                baseline_ref = start_baseline(run)
            # (a rebuilt sweep may have none left)
            if setup.restore or setup.num_samples + setup.reruns > 0:
                tuner = make_tuner(run, setup)
                stop.enter_fit()
                tuner.fit()
                stop.leave_fit()
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.received is not None
    return _Trials(interrupted=interrupted, baseline_ref=baseline_ref, started=started)


def _after_trials(run: SweepRun, trials: _Trials, progress: Progress | None) -> FinalPhase:
    """The baseline's row, then the final latency phase (not after an interrupted run), under
    stop signals: Ctrl-C or SIGTERM stops them at once (the phase's Ray task cancelled) and the
    sweep is recorded interrupted, its rows keeping their in-sweep latency; `--resume` then
    runs what is missing (the baseline, the final phase) and no trial again."""
    if trials.interrupted:
        record_baseline(run, trials.baseline_ref, trials.started, interrupted=True)
        return FinalPhase()
    with stop_signals():  # no Tune fit here: a first signal raises KeyboardInterrupt
        try:
            record_baseline(run, trials.baseline_ref, trials.started, interrupted=False)
            report_step(progress, "final latency phase: re-measuring the front with the baseline")
            return run_final_latency(run)
        except KeyboardInterrupt:
            return FinalPhase(note=FINAL_PHASE_INTERRUPTED, interrupted=True)


def _finish(run: SweepRun, setup: TuneSetup, *, interrupted: bool, final: FinalPhase) -> RunEnd:
    """Stop the cache actor (after its stages have recorded, unless interrupted), end the
    budget's clock, write the manifest's final status and compact the sweep's files; returns
    what the run did (`final`: the final latency phase's models and note)."""
    from orchestrator.engine.cache import cache_stats, stop_cache

    sweep = run.sweep
    stats = cache_stats(run.cache, wait=not interrupted)
    stop_cache(run.cache)
    end_budget(sweep.sweep_id)
    elapsed = sweep.budget_elapsed_s + (time.monotonic() - run.clock_start)
    status = "interrupted" if interrupted else "finished"
    write_manifest(sweep.storage, sweep, status=status, budget_elapsed_s=elapsed,
                   hypervolume_reference=_reference(sweep))  # fmt: skip
    _compact_quietly(sweep.storage, sweep.sweep_id)
    return RunEnd(
        interrupted=interrupted,
        stats=stats,
        trials_total=setup.writer.total,
        stage_requests=setup.writer.stage_requests,
        out_of_time=bool(getattr(setup.search_alg, "out_of_time", False)),
        points_repeated=points_repeated(setup.search_alg),
        budget_elapsed_s=elapsed,
        final_models=final.models,
        final_note=final.note,
        final_interrupted=final.interrupted,
    )


def _abandon(run: SweepRun) -> None:
    """Stop what a sweep that cannot go on started: its cache actor (its stage claims freed
    first) and its budget's clock (its manifest then says `failed`, `execute_sweep`)."""
    from orchestrator.engine.cache import stop_cache

    stop_cache(run.cache)
    end_budget(run.sweep.sweep_id)


def _reference(sweep: PreparedSweep) -> dict[str, float] | None:
    """The sweep's hypervolume reference from its baseline row (None without rows)."""
    from orchestrator.query.pareto import metrics_reference

    table = sweep_table(sweep.storage, sweep.sweep_id)
    return metrics_reference(table) if table.num_rows else None


def _compact_quietly(store: Storage, sweep_id: str) -> None:
    """Merge the sweep's per-trial files into one per table (`orchestrator.store.compact`). Its rows
    are already safe in the parts, so a failure here only warns: `squeezeray compact` retries."""
    from orchestrator.store.compact import compact_sweep

    try:
        compact_sweep(store.uri, sweep_id)
    except Exception as exc:  # housekeeping: never fail a sweep whose rows are all written
        log.warning(
            "could not compact sweep %s (%s); its rows are kept as they are. Retry with: "
            "squeezeray compact --storage %s --sweep %s",
            sweep_id, exc, shlex.quote(store.uri), shlex.quote(sweep_id),
        )  # fmt: skip
