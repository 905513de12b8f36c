"""Driver-side Tune callbacks: each finished trial's row is written as it finishes.

A row is never written over a final row of the same trial (`tune_state.is_final`) that an
earlier run of the sweep wrote: a resumed run that comes to such a trial id again keeps the
stored row and says so. When a row cannot be written because the storage is full or read-only
(or a trial's stage could not write its checkpoint for that reason), the writer stops the sweep
the way Ctrl-C does (Tune saves its state; unfinished trials keep their configs for `--resume`),
writes nothing more, and the sweep raises the `StorageFault` once Tune has returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ray.tune import Callback

from orchestrator.store.faults import StorageFault
from orchestrator.store.rows import now, trial_row

log = logging.getLogger(__name__)

# What a trial's stage reports carry over to its row when it ends without a final report.
_CARRIED = ("effective_params", "stage_keys", "last_val_accuracy")


class ResultsWriter(Callback):  # type: ignore[misc]
    """Writes one results row per finished trial (atomically) and reports progress."""

    def __init__(
        self,
        *,
        storage: str,
        sweep_id: str,
        sweep_name: str,
        task: str,
        code_version: str,
        constraints: tuple[tuple[str, str, float], ...],
        total: int,
        progress: Callable[[str, Mapping[str, Any]], None] | None,
        done: Mapping[str, int] | None = None,
        plan: Any = None,
        final: frozenset[str] = frozenset(),
    ) -> None:
        self.storage = storage
        self.sweep_id = sweep_id
        self.sweep_name = sweep_name
        self.task = task
        self.code_version = code_version
        self.constraints = constraints
        self.total = total
        self.progress = progress
        self.started: dict[str, datetime] = {}
        self.written: set[str] = set()
        # A resumed sweep starts from the trials it has already written (`done`: ok, failed).
        self.counts = {"ok": 0, "failed": 0, "running": 0, **(done or {})}
        # rows written by this run, by status (ok, error, timeout, stopped)
        self.by_status: dict[str, int] = {}
        self.stage_requests = 0
        self.launched: set[str] = set()  # trials Tune started in this run
        # SweepPlan: a stopped or crashed trial's knobs from its config when it reported none
        self.plan = plan
        self.final = final  # trial ids whose final row an earlier run wrote: never replaced
        self.kept: list[str] = []  # trials of this run whose row was refused (see `final`)
        self.fault: StorageFault | None = None  # the storage fault that stopped the sweep

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (callbacks included) for restore; a terminal progress
        # display holds locks and is not part of the experiment's state.
        state = dict(self.__dict__)
        state["progress"] = None
        return state

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, now())
        self.launched.add(trial.trial_id)
        self._progress("start", trial, {})

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = dict(trial.last_result or {})
        if not result.get("final"):
            # Stopped early (ASHA) before its final report: its last stage report carries the
            # knobs, the stages done and the last validation accuracy.
            result = {
                **self._from_config(trial),
                **{k: result[k] for k in _CARRIED if result.get(k) is not None},
                "status": "stopped",
                "error": "stopped early by the scheduler (ASHA) after stage "
                f"{result.get('stage', '(none)')}",
            }
        self._write(trial, result)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial whose trainable raised: a `lost` trial (it reported its final result, then
        raised so `--resume` runs it again), or a coordinator that failed, `lost` when Ray
        failed under it (`faults.names_infrastructure_error`), else `error`."""
        from orchestrator.engine.faults import lost_message, names_infrastructure_error
        from orchestrator.engine.pipeline import bounded, write_error_log
        from orchestrator.store.schema import LOST

        last = dict(trial.last_result or {})
        if last.get("final") and last.get("status") == LOST:
            self._write(trial, last)
            return
        error = _trial_error_text(trial)
        cause = error.strip().splitlines()[-1]
        lost = names_infrastructure_error(error)
        result = {
            **self._from_config(trial),
            **{k: last[k] for k in _CARRIED if last.get(k) is not None},
            "status": LOST if lost else "error",
            "error": bounded(
                lost_message("trial coordinator", cause) if lost else f"trial coordinator: {cause}"
            ),
            "error_log": write_error_log(self.storage, self.sweep_id, trial.trial_id, error),
        }
        self._write(trial, result)

    def _from_config(self, trial: Any) -> dict[str, Any]:
        """The effective knobs of a trial from its sampled config (no stage completed)."""
        if self.plan is None:
            return {}
        try:
            resolved = self.plan.resolve(dict(trial.config or {}))
        except Exception:
            return {}
        return {
            "effective_params": {
                f"{stage}.{k}": v for stage, params in resolved.items() for k, v in params.items()
            },
            "stage_keys": [],
        }

    def _write(self, trial: Any, result: dict[str, Any]) -> None:
        from orchestrator.space.constraints import feasible

        if trial.trial_id in self.written or self.fault is not None:
            return
        if result.get("replayed"):
            # A resumed trial whose row was written before the interruption: already stored
            # and already counted in `done`.
            self.written.add(trial.trial_id)
            self._progress("done", trial, result)
            return
        if result.get("storage_fault"):  # a stage could not write its checkpoint
            self._stop(StorageFault(str(result["storage_fault"])))
        if trial.trial_id in self.final:
            self._keep_stored(trial.trial_id)
            return
        self.stage_requests += len(result.get("stage_keys") or [])
        ok = result.get("status") == "ok"
        row = trial_row(
            sweep_id=self.sweep_id,
            sweep_name=self.sweep_name,
            trial_id=trial.trial_id,
            task=self.task,
            started_at=self.started.get(trial.trial_id, now()),
            result=result,
            code_version=self.code_version,
            feasible=feasible(self.constraints, result)
            if ok
            else (False if self.constraints else None),
        )
        self._append(row)
        self.written.add(trial.trial_id)
        self.counts["ok" if ok else "failed"] += 1
        self.by_status[row["status"]] = self.by_status.get(row["status"], 0) + 1
        self._progress("done", trial, row)

    def _append(self, row: dict[str, Any]) -> None:
        """Write one row; a storage fault stops the sweep (`_stop`)."""
        from orchestrator.store.results import append_results

        try:
            append_results(self.storage, [row])
        except StorageFault as fault:
            self._stop(fault)

    def _keep_stored(self, trial_id: str) -> None:
        """This run came to a trial whose final row is stored: that row stays, this one is
        not written (another run's result must never replace a finished trial's)."""
        log.warning(
            "trial %s of sweep %s already has a final row from an earlier run; it is kept and "
            "this run's result for that trial id is not written",
            trial_id, self.sweep_id,
        )  # fmt: skip
        self.written.add(trial_id)
        self.kept.append(trial_id)

    def _stop(self, fault: StorageFault) -> None:
        """Stop the sweep on a storage fault: Tune stops as on Ctrl-C (saving its state) and
        marks this trial errored (so `--resume` runs it again, with its config); nothing more
        is written. Raises the fault (Tune's error for this trial)."""
        from orchestrator.engine.signals import interrupt_tune

        self.fault = fault
        interrupt_tune()
        raise fault

    def _progress(self, event: str, trial: Any, row: Mapping[str, Any]) -> None:
        if self.progress is not None:
            self.progress(event, {**row, "counts": dict(self.counts), "total": self.total})


def _trial_error_text(trial: Any) -> str:
    """The text Tune keeps of a trial's error (its error file: the coordinator's traceback)."""
    import contextlib
    import os

    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        with open(path, errors="replace") as f:
            text = f.read().strip()
        if text:
            return text
    with contextlib.suppress(Exception):
        text = str(trial.get_error() or "").strip()
        if text:
            return text
    return "the trial's coordinator failed and Tune kept no error text"
