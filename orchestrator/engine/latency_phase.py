"""The baseline row and the final latency phase: what each compressed model is compared with.

The baseline (the uncompressed teacher as the user has it, eager) is measured beside the
trials, sharing their teacher stage (`start_baseline`, `record_baseline`). After the last
trial, the front's models and the baseline are timed again, apart, in interleaved rounds by one
task holding a whole node (`run_final_latency`), and their rows are written again with those
figures. Neither ever fails the sweep: a baseline error is its row's `error`, a failed final
phase leaves the rows with their in-sweep latency and says why. Ctrl-C or SIGTERM during the
phase cancels its task (`final_latency_phase`); the sweep then records itself interrupted, so
`--resume` runs just the final phase (`sweep._after_trials`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.engine.manifest import sweep_table
from orchestrator.engine.pipeline import SweepPlan
from orchestrator.engine.records import SweepRun
from orchestrator.engine.requests import BASELINE_TRIAL
from orchestrator.space.model import SearchSpace
from orchestrator.store.rows import now, trial_row
from stages.errors import SqueezerayError

FINAL_LATENCY_MAX_MODELS = 16  # front models re-measured at most (the best by the first objective)
FINAL_LATENCY_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class FinalPhase:
    """How the final latency phase went: the front models re-measured, a note when it was
    skipped or failed, and whether Ctrl-C or SIGTERM stopped it (the sweep is then recorded
    interrupted: `--resume` runs the phase again)."""

    models: int = 0
    note: str = ""
    interrupted: bool = False


FINAL_PHASE_INTERRUPTED = (
    "final latency phase interrupted (Ctrl-C or SIGTERM): every trial is saved, the rows keep "
    "their in-sweep latency; `--resume` re-measures the front"
)


def start_baseline(run: SweepRun) -> Any:
    """Start measuring the baseline (the uncompressed teacher, eager) beside the trials,
    sharing their teacher; returns the ref of its metrics, or None when the cache actor is
    gone for good (no baseline row: `--resume` measures it)."""
    import ray

    teacher_request = run.plan.requests({}, trial_id=BASELINE_TRIAL)[0]
    try:
        t_ref, _ = ray.get(run.cache.get.remote(teacher_request, [], []))
        (metrics_ref,) = ray.get(
            run.cache.measure.remote(run.plan.measure_request(teacher_request.key), [t_ref])
        )
    except ray.exceptions.RayError:
        return None
    return metrics_ref


def record_baseline(
    run: SweepRun, metrics_ref: Any, started: datetime, *, interrupted: bool
) -> None:
    """Write the baseline's row (`metrics_ref`: from `start_baseline`, None when it was not
    started). An interrupted sweep records it only when it is already measured: it does not
    wait for the rest."""
    import ray

    from orchestrator.store.results import append_results

    if metrics_ref is None or (interrupted and not ray.wait([metrics_ref], timeout=0)[0]):
        return
    sweep = run.sweep
    row = baseline_row(run.plan, metrics_ref, started, sweep.space.name or sweep.sweep_id)
    append_results(sweep.storage.uri, [row])


def baseline_row(
    plan: SweepPlan, metrics_ref: Any, started: datetime, sweep_name: str
) -> dict[str, Any]:
    """The baseline's results row (`is_baseline`), an error row when it could not be measured."""
    import ray

    from orchestrator.engine.faults import is_infrastructure_error, lost_message
    from orchestrator.engine.pipeline import bounded, describe_error, write_error_log
    from orchestrator.store.schema import LOST

    teacher_key = plan.requests({}, trial_id=BASELINE_TRIAL)[0].key
    result: dict[str, Any] = {"status": "ok", "stage_keys": [teacher_key], "effective_params": {}}
    try:
        result.update(ray.get(metrics_ref))
    except Exception as exc:
        where = "baseline (the teacher, measured as given)"
        lost = is_infrastructure_error(exc)
        result.update(
            status=LOST if lost else "error",
            error=bounded(
                lost_message(where, describe_error(exc))
                if lost
                else f"{where}: {describe_error(exc)}"
            ),
            error_log=write_error_log(plan.storage, plan.sweep_id, BASELINE_TRIAL, exc),
        )
    return trial_row(
        sweep_id=plan.sweep_id,
        sweep_name=sweep_name,
        trial_id=BASELINE_TRIAL,
        task=plan.task,
        started_at=started,
        result=result,
        code_version=plan.code_version,
        feasible=None,
        is_baseline=True,
    )


def run_final_latency(run: SweepRun) -> FinalPhase:
    """The final latency phase of a sweep whose trials all ended (`latency.rounds` > 0).
    A failure is a note (the rows keep their in-sweep latency). Ctrl-C here raises
    KeyboardInterrupt once the phase's task is cancelled: the caller holds the signals
    (`sweep._after_trials`) and records the sweep interrupted."""
    import ray

    from orchestrator.engine.cache import cache_stats

    if run.sweep.space.latency.rounds <= 0:
        return FinalPhase()
    cache_stats(run.cache, wait=True)  # every stage has finished recording
    try:
        options = final_latency_options(run.info, run.latency_resource)
    except SqueezerayError as exc:
        return FinalPhase(note=str(exc))
    try:
        return FinalPhase(*final_latency_phase(run, options=options))
    except ray.exceptions.RayError as exc:  # the cache actor is gone for good, a node died
        from orchestrator.engine.pipeline import describe_error

        return FinalPhase(
            note=f"final latency phase failed ({describe_error(exc)}); rows keep in-sweep latency"
        )


def final_latency_options(info: Any, latency_resource: str | None) -> dict[str, Any]:
    """Ray options of the final latency task: every CPU of one node that offers the latency
    slot (or `latency_resource`), pinned there, so no stage or measurement of ours can run
    beside it on that node while it times."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from orchestrator.engine.runtime import LATENCY_RESOURCE, latency_resources

    wanted = latency_resource or LATENCY_RESOURCE
    # Nodes with CPUs only: a head started with --num-cpus=0 could never run it.
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise SqueezerayError("no alive Ray node offers a CPU for the final latency phase")
    offering = [n for n in nodes if n["Resources"].get(wanted, 0) > 0] or nodes
    node = offering[0]
    return {
        "num_cpus": float(node["Resources"]["CPU"]),
        "resources": latency_resources(info, latency_resource),
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
    }


def final_latency_phase(run: SweepRun, *, options: Mapping[str, Any]) -> tuple[int, str]:
    """After the last trial: re-measure the front's models and the baseline apart.

    The front (the space's objectives on their selection columns: val_accuracy, size,
    latency_ms_sweep) and the baseline are timed together in `latency.rounds` interleaved
    rounds by one task that holds a whole node (`final_latency_options`). Each of their rows is
    written again (the newer row wins on read) with latency_ms_final / latency_ms_final_p90
    from those rounds, latency_cv (spread of the round medians), speedup (paired per round, vs
    the baseline) and latency_rounds; latency_ms_sweep keeps the in-sweep figure. Returns (models
    re-measured, a note when the phase was skipped or failed). A failure never fails the sweep:
    the rows keep their in-sweep latency.
    """
    import ray

    from orchestrator.engine.pipeline import describe_error
    from orchestrator.engine.stage_tasks import run_remeasure
    from orchestrator.store.results import append_results

    sweep = run.sweep
    chosen, note = _rows_to_remeasure(run)
    if note:
        return 0, note
    refs = ray.get(run.cache.checkpoints.remote([r["stage_keys"][-1] for r in chosen]))
    pairs = [(row, ref) for row, ref in zip(chosen, refs, strict=True) if ref is not None]
    if not pairs or pairs[0][0] is not chosen[0]:
        return 0, "the baseline's checkpoint is gone"
    request = run.plan.measure_request(chosen[0]["stage_keys"][-1])
    # each model about the timed calls its in-sweep measurement needed (latency.precision)
    calls = tuple(row.get("latency_repeats_sweep") for row, _ in pairs)
    task = run_remeasure.options(**options).remote(
        request, sweep.space.latency.rounds, calls, *[ref for _, ref in pairs]
    )
    try:
        results = ray.get(task, timeout=FINAL_LATENCY_TIMEOUT_S)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop timing now, not after the last round
        ray.cancel(task, force=True)
        raise
    except Exception as exc:  # a dead worker, a timeout: keep the in-sweep figures
        ray.cancel(task, force=True)
        return 0, f"final latency phase failed ({describe_error(exc)}); rows keep in-sweep latency"
    updated = _remeasured_rows([row for row, _ in pairs], results)
    append_results(sweep.storage.uri, updated)
    return len(updated) - 1, ""


def _rows_to_remeasure(run: SweepRun) -> tuple[list[dict[str, Any]], str]:
    """[the baseline row, the front's best rows...], or a note saying why there are none."""
    table = sweep_table(run.sweep.storage, run.sweep.sweep_id)
    rows = table.to_pylist()
    baseline = next((r for r in rows if r["is_baseline"] and r["status"] == "ok"), None)
    if baseline is None or not baseline.get("stage_keys"):
        return [], "no baseline row to compare with"
    front_rows = _best_front_rows(table, run.sweep.space)
    if not front_rows:
        return [], "no front to re-measure"
    return [baseline, *front_rows], ""


def _best_front_rows(table: Any, space: SearchSpace) -> list[dict[str, Any]]:
    """The front's rows, best first by the first objective, at most FINAL_LATENCY_MAX_MODELS."""
    import warnings

    from orchestrator.query.pareto import pareto_front, resolve_objectives

    objectives = {o.name: o.direction for o in space.objectives}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows without objectives: counted by `pareto`
        front = pareto_front(table, objectives)
    first, direction = next(iter(resolve_objectives(objectives, table).items()))
    front_rows = front.to_pylist()
    front_rows.sort(
        key=lambda r: r.get(first) if r.get(first) is not None else -math.inf,
        reverse=direction == "max",
    )
    return front_rows[:FINAL_LATENCY_MAX_MODELS]


def _remeasured_rows(
    rows: list[dict[str, Any]], measured: list[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The rows again with the final phase's latency figures in their own columns (the
    in-sweep latency_ms_sweep unchanged), only the stored columns (not the task metrics
    load_results derives)."""
    from orchestrator.store.schema import RESULTS_SCHEMA

    finished = now()
    stored = set(RESULTS_SCHEMA.names)
    updated = []
    for row, figures in zip(rows, measured, strict=True):
        new = {k: v for k, v in row.items() if k in stored}
        for column in (
            "latency_ms_final",
            "latency_ms_final_p90",
            "latency_cv",
            "speedup",
            "latency_rounds",
            "latency_repeats_final",
        ):
            new[column] = figures.get(column)
        new["finished_at"] = finished
        updated.append(new)
    return updated
