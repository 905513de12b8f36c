"""How a sweep ended: the `SweepSummary` built from its rows and its run, with the reason in
words (`end_reason`), its exit code, and the commonest error when trials failed."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.engine.manifest import resume_command
from orchestrator.engine.records import (
    EXIT_LOST_TRIALS,
    EXIT_NO_TRIAL_OK,
    SweepRun,
    SweepSummary,
)
from orchestrator.store.schema import LOST


@dataclass(frozen=True)
class RunEnd:
    """What a sweep's run did, beside its rows."""

    interrupted: bool
    stats: Mapping[str, Any]  # StageCache.stats(): executed, loaded, corrupt, cancelled keys
    trials_total: int  # trials the search was to run
    stage_requests: int  # stage executions a naive per-trial pipeline would have run
    out_of_time: bool  # the search stopped launching trials at the time budget
    budget_elapsed_s: float  # seconds of run time over all the sweep's runs
    final_models: int = 0  # front models re-measured in the final latency phase
    final_note: str = ""  # why the final phase was skipped or failed, when it was
    final_interrupted: bool = False  # Ctrl-C or SIGTERM stopped the final phase
    points_repeated: int = 0  # Optuna proposals of measured points, answered and not run


def points_repeated(search_alg: Any) -> int:
    """How many proposals of an already measured point the search answered with that trial's
    result (`searchers.SqueezeOptunaSearch.repeated`), found through the wrappers Tune holds
    (`DeadlineSearch.inner`, `SearchGenerator.searcher`); 0 for the other searches."""
    for _ in range(8):  # a few wrappers deep at most
        if search_alg is None or hasattr(search_alg, "repeated"):
            break
        search_alg = getattr(search_alg, "inner", None) or getattr(search_alg, "searcher", None)
    return int(getattr(search_alg, "repeated", 0) or 0)


def sweep_summary(run: SweepRun, table: Any, end: RunEnd) -> SweepSummary:
    """The summary of a sweep's run from its rows (`table`, baseline included)."""
    rows = table.to_pylist()
    trial_rows = [r for r in rows if not r["is_baseline"]]
    statuses = [r["status"] for r in trial_rows]
    sweep, stats = run.sweep, end.stats
    ended, exit_code = end_reason(
        interrupted=end.interrupted,
        statuses=statuses,
        total=end.trials_total,
        budget_s=sweep.space.search.time_budget_s,
        out_of_time=end.out_of_time,
        wall_s=end.budget_elapsed_s,
        final_interrupted=end.final_interrupted,
    )
    return SweepSummary(
        sweep_id=sweep.sweep_id,
        storage=sweep.storage.uri,
        trials_ok=sum(s == "ok" for s in statuses),
        trials_failed=sum(s not in ("ok", "stopped") for s in statuses),
        stages_executed=len(stats["executed"]),
        stages_loaded=len(stats["loaded"]),
        stage_requests=end.stage_requests,
        corrupt_checkpoints=len(stats["corrupt"]),
        wall_s=time.perf_counter() - run.started_s,
        interrupted=end.interrupted,
        resume_command=resume_command(sweep.storage, sweep.sweep_id, command=sweep.command),
        stages_cancelled=len(stats["cancelled"]),
        latency_final_models=end.final_models,
        latency_final_note=end.final_note,
        latency_final_interrupted=end.final_interrupted,
        trials_error=sum(s == "error" for s in statuses),
        trials_timeout=sum(s == "timeout" for s in statuses),
        trials_stopped=sum(s == "stopped" for s in statuses),
        trials_lost=sum(s == LOST for s in statuses),
        stages_waited=len(stats.get("waited", [])),
        cache_restarted=bool(stats.get("restarted")),
        trials_total=end.trials_total,
        ended=ended,
        exit_code=exit_code,
        most_common_error=most_common_error(trial_rows),
        baseline_error=baseline_error(rows),
        code_changed=_code_changed(run, trial_rows),
        points_repeated=end.points_repeated,
    )


def end_reason(
    *,
    interrupted: bool,
    statuses: list[str],
    total: int,
    budget_s: float | None,
    out_of_time: bool,
    wall_s: float,
    final_interrupted: bool = False,
) -> tuple[str, int]:
    """Why a sweep ended, in words, and its exit code: 2 interrupted (in the trials, or in the
    final latency phase after them: `final_interrupted`), EXIT_NO_TRIAL_OK when no trial
    succeeded, EXIT_LOST_TRIALS when trials were lost to the infrastructure (the sweep is not
    complete: `--resume` runs them again), 0 for a complete sweep."""
    if final_interrupted:
        return (
            f"interrupted (Ctrl-C or SIGTERM) in the final latency phase, after {len(statuses)} "
            f"of {total} trials",
            2,
        )
    if interrupted:
        return f"interrupted (Ctrl-C or SIGTERM) after {len(statuses)} of {total} trials", 2
    budget = ""
    if budget_s is not None and len(statuses) < total and (out_of_time or wall_s >= budget_s):
        budget = (
            f"time budget of {budget_s:g} s reached ({len(statuses)} of {total} trials launched)"
        )
    lost = sum(s == LOST for s in statuses)
    rerun = f"; {lost} lost to infrastructure failures (`--resume` runs them again)" if lost else ""
    if statuses and not any(s == "ok" for s in statuses):
        failed = f"every trial failed ({len(statuses)} of {len(statuses)}){rerun}"
        return (f"{budget}; {failed}" if budget else failed), EXIT_NO_TRIAL_OK
    if not statuses:
        return (budget or "no trial ran"), EXIT_NO_TRIAL_OK if total else 0
    ended = (budget or f"all trials done ({len(statuses)} of {total})") + rerun
    return ended, EXIT_LOST_TRIALS if lost else 0


# What a worker raises when the code it imported lacks what the driver pickled: pickle's
# "Can't get attribute 'StoredCheckpoint' on <module ...>", or an import of squeezeray's own
# modules that no longer resolves.
_CODE_MISMATCH = re.compile(
    r"Can't get attribute '[^']+' on <module"
    r"|No module named '(orchestrator|stages)[.']"
    r"|cannot import name '[^']+' from '(orchestrator|stages)[.']"
)


def code_change_note(errors: Iterable[str], *, driver: str, worker: str, lost: bool = False) -> str:
    """One line when failed or lost trials' `errors` show that the workers ran other code
    than the driver, "" otherwise; what to do next depends on `lost` (some trials were lost,
    which `--resume` runs again) -- errored trials are final: a new sweep runs them again.

    `driver`: `keys.source_version()` when the sweep started ("" unknown); `worker`: the
    same read at the sweep's end, the code a worker started since then imports. Either a
    differing version, or an error naming an unpickling/import mismatch, says so."""
    errors = [e for e in errors if e]
    if not errors:
        return ""
    mismatch = any(_CODE_MISMATCH.search(e) for e in errors)
    changed = bool(driver and worker and driver != worker)
    if not (mismatch or changed):
        return ""
    seen = worker if changed else "unknown: it could not load the driver's objects"
    fix = (
        "once the code is stable, --resume runs the lost trials again (failed ones stay "
        "failed: a new sweep runs them, with the stages it shares from the cache)"
        if lost
        else "once the code is stable, run the sweep again (--resume does not rerun failed "
        "trials; a new sweep takes the stages it shares from the cache)"
    )
    return (
        f"the code changed while the sweep ran (driver {driver or 'unknown'}, worker {seen}): {fix}"
    )


def _code_changed(run: SweepRun, trial_rows: list[dict[str, Any]]) -> str:
    """`code_change_note` for a sweep's failed trial rows (the source read again only then)."""
    from orchestrator.engine.keys import source_version
    from orchestrator.store.schema import LOST

    errors = [str(r["error"] or "") for r in trial_rows if r["status"] != "ok"]
    if not any(errors):
        return ""
    lost = any(r["status"] == LOST for r in trial_rows)
    return code_change_note(
        errors, driver=run.plan.source_version, worker=source_version(), lost=lost
    )


def most_common_error(rows: list[dict[str, Any]]) -> str:
    """The commonest error message among failed trial rows, with how many trials had it."""
    from collections import Counter

    errors = Counter(
        str(r["error"]).splitlines()[0] for r in rows if r["status"] != "ok" and r["error"]
    )
    if not errors:
        return ""
    message, count = errors.most_common(1)[0]
    return f"{message} ({count} of {sum(errors.values())} failed trials)"


def baseline_error(rows: list[dict[str, Any]]) -> str:
    """Why the baseline (the teacher as given) could not be measured, with its log; "" when
    its last row is ok or it has none."""
    baselines = [r for r in rows if r["is_baseline"]]
    if not baselines or baselines[-1]["status"] == "ok":
        return ""
    error = str(baselines[-1]["error"] or "unknown error")
    if baselines[-1].get("error_log"):
        error += f" (log: {baselines[-1]['error_log']})"
    return error
