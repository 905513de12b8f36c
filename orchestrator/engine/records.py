"""The records a sweep's steps hand each other: what was prepared, what is running, what it did.

`PreparedSweep` (every check passed, no Ray yet: `prepare.prepare_sweep`) -> `SweepRun` (Ray
joined, plan made, cache actor started: `sweep._execute_sweep`) -> `SweepSummary` and
`SweepOutcome` (what the sweep did, beside its rows: `summary.sweep_summary`), or
`SweepInterrupted` when Ctrl-C or SIGTERM stopped it. Plain frozen dataclasses, torch- and
Ray-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.engine.pipeline import SweepPlan
from orchestrator.engine.runtime import ClusterInfo
from orchestrator.space.model import SearchSpace
from orchestrator.space.options import SweepOptions
from orchestrator.store.storage import Storage
from stages.errors import SqueezerayError

# `squeezeray sweep` exit codes: 2 is a bad input or an interrupted sweep (SqueezerayError),
# 3 a nightly regression; a sweep that ran but in which no trial succeeded exits with 4, and
# one that ran to its end with trials `lost` to the infrastructure (some ok) with 5: it is not
# complete, `--resume` runs the lost trials again. 0 only for a complete sweep.
EXIT_NO_TRIAL_OK = 4
EXIT_LOST_TRIALS = 5


@dataclass(frozen=True)
class PreparedSweep:
    """A sweep that passed every check before Ray (`prepare.prepare_sweep`); nothing started."""

    space: SearchSpace  # the options' overrides applied
    storage: Storage
    sweep_id: str
    options: SweepOptions
    resume: bool
    fingerprint: dict[str, str] = field(default_factory=dict)  # stages.fingerprint, per task
    model_bytes: int = 0  # the task's larger model, float bytes (0: unknown; engine.memory)
    # a training step's activations at the space's largest batch (0: not measured, small model)
    activation_bytes: int = 0
    space_text: str | None = None  # the YAML it was read from (the manifest keeps it)
    budget_elapsed_s: float = 0.0  # seconds of the time budget spent before (--resume)
    finished: bool = False  # resumed, but its manifest says it finished: nothing left to run
    command: str = "sweep"  # the CLI command that runs it: sweep, or nightly (its resume command)
    # The Tune experiment its trials run in (<storage>/tune/<name>; the manifest keeps it):
    # None is the sweep id; a resume whose Tune state could not be restored runs a new one.
    tune_experiment: str | None = None
    # Trials with a final row that experiment did not run (kept by the rebuild that started it):
    # its Tune state never lists them (`tune_state.state_problem`).
    tune_carried: tuple[str, ...] = ()

    @property
    def cpus_per_trial(self) -> float:
        return self.options.cpus_per_trial

    @property
    def gpus_per_trial(self) -> float:
        return self.options.gpus_per_trial

    @property
    def max_concurrent(self) -> int | None:
        return self.options.max_concurrent

    @property
    def trial_timeout_s(self) -> float | None:
        return self.options.trial_timeout_s

    @property
    def teacher_weights(self) -> str | None:
        return self.options.teacher_weights


@dataclass(frozen=True)
class SweepRun:
    """A sweep on its way: the prepared sweep on the Ray it joined, with its plan and cache."""

    sweep: PreparedSweep
    info: ClusterInfo  # what the Ray cluster offers
    plan: SweepPlan
    cache: Any  # the sweep's StageCache actor handle
    latency_resource: str | None  # the custom resource latency measurements hold, if not ours
    started_s: float  # time.perf_counter() when this run began (the summary's wall_s)
    clock_start: float  # time.monotonic() from which this run's share of the budget counts


@dataclass(frozen=True)
class SweepSummary:
    """What a finished sweep did, beside its rows (for the CLI, tests and benchmarks)."""

    sweep_id: str
    storage: str
    trials_ok: int
    trials_failed: int  # not ok and not stopped by the scheduler: error, timeout, lost
    stages_executed: int
    stages_loaded: int
    stage_requests: int  # stage executions a naive per-trial pipeline would have run
    corrupt_checkpoints: int
    wall_s: float
    interrupted: bool
    resume_command: str = ""  # continues this sweep (see `manifest.resume_command`)
    stages_cancelled: int = 0  # running stages stopped because their trials timed out
    latency_final_models: int = 0  # front models re-measured in the final latency phase
    latency_final_note: str = ""  # why the final phase was skipped or failed, when it was
    latency_final_interrupted: bool = False  # Ctrl-C or SIGTERM stopped the final phase
    # trials_failed split by status (error, timeout: its time limit, lost below)
    trials_error: int = 0
    trials_timeout: int = 0
    trials_stopped: int = 0  # stopped early by the scheduler (ASHA): not failed
    trials_lost: int = 0  # failed by the infrastructure, not their model: --resume re-runs them
    stages_waited: int = 0  # stages another sweep on the storage computed while this one waited
    cache_restarted: bool = False  # the stage cache actor died and was restarted (or is gone)
    trials_total: int = 0  # trials the search was to run (the grid's size for grid search)
    ended: str = ""  # why the sweep ended, in words (see `summary.end_reason`)
    # 0; EXIT_NO_TRIAL_OK when no trial succeeded; EXIT_LOST_TRIALS when trials were lost
    # (resume to complete); 2 when interrupted
    exit_code: int = 0
    most_common_error: str = ""  # when trials failed: the commonest error and how often
    baseline_error: str = ""  # when the baseline (the teacher as given) could not be measured
    code_changed: str = ""  # when trials failed after the code changed under the sweep
    # Optuna proposals of a point already measured (the effective configuration of a finished
    # trial): told that trial's result, not run, no trial budget spent
    points_repeated: int = 0


@dataclass(frozen=True)
class SweepOutcome:
    """A finished sweep: its rows and its summary."""

    table: Any  # pyarrow.Table of this sweep's rows
    summary: SweepSummary


class SweepInterrupted(SqueezerayError):
    """Raised after an interrupted sweep has saved what it had; the message says how to resume."""

    def __init__(self, summary: SweepSummary) -> None:
        self.summary = summary
        done = summary.trials_ok + summary.trials_stopped + summary.trials_failed
        command = summary.resume_command or (
            f"squeezeray sweep --resume --sweep-id {summary.sweep_id} --storage {summary.storage}"
        )
        if summary.latency_final_interrupted:
            message = (
                f"sweep {summary.sweep_id} was interrupted in its final latency phase: all "
                f"{done} trials are saved, their rows keep their in-sweep latency. To re-measure "
                f"the front (no trial runs again), run: {command}"
            )
        else:
            message = (
                f"sweep {summary.sweep_id} was interrupted after {done} trials; everything "
                f"finished is saved. To continue, run: {command}"
            )
        super().__init__(message)
