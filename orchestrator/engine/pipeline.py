"""A trial's pipeline as a chain of Ray tasks, and the Tune trial function that drives it.

The trial function is a cheap coordinator (it holds no CPU): it asks the stage cache actor for
each stage in order (the cache starts the Ray task or hands back a shared one), passes the
previous stage's checkpoint ref to the next, reports after each stage (so ASHA can stop poor
trials), and finally reports the measured objectives. Torch never loads in the coordinator.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.engine.keys import stage_key
from orchestrator.engine.requests import MeasureRequest, StageRequest
from orchestrator.space.coherence import make_coherent, plain
from orchestrator.store.faults import as_storage_fault
from orchestrator.store.schema import RERUN_STATUSES


@dataclass(frozen=True)
class SweepPlan:
    """Everything a trial needs to turn sampled knobs into stage requests (torch-free)."""

    sweep_id: str
    task: str
    pipeline: tuple[str, ...]
    defaults: dict[str, dict[str, Any]]  # stage -> every param's default
    fixed: dict[str, Any]  # "stage.param" -> value
    code_version: str
    storage: str
    objectives: tuple[tuple[str, str], ...]  # (metric, "max"|"min")
    constraints: tuple[tuple[str, str, float], ...] = ()  # (metric, op, value)
    seed: int = 0  # the stages' training seed (part of every stage key)
    device: str = "cpu"
    threads: int = 1
    sys_path: tuple[str, ...] = ()
    # warmup, repeats, batch_size, threads, rounds, time_cap_s, precision (LatencySettings)
    latency: dict[str, float] = field(default_factory=dict)
    trial_timeout_s: float | None = None
    # stages.fingerprint.TaskFingerprint.as_dict() of the task (teacher, student, data),
    # computed once on the driver; empty: keys without a fingerprint (tests of the plan alone)
    fingerprint: dict[str, str] = field(default_factory=dict)
    # keys.source_version() when the sweep started: its end compares the code on disk then
    # (summary.code_change_note); "" when not recorded
    source_version: str = ""

    def checked_parts(self, stage: str) -> dict[str, str]:
        """The fingerprint parts a stage's worker checks its copy of the task against."""
        if not self.fingerprint:
            return {}
        parts = {"teacher": ("teacher", "data"), "distill": ("student", "data")}.get(stage, ())
        return {name: self.fingerprint[name] for name in parts if name in self.fingerprint}

    def stage_fingerprint(self, stage: str) -> str | None:
        """What `stage` reads from the task beyond its parent checkpoint: the teacher stage
        builds the teacher and trains on the data on this device type; distillation builds the
        student. Every later stage inherits both through its parent's key."""
        fp = self.fingerprint
        if not fp:
            return None
        if stage == "teacher":
            return f"teacher={fp['teacher']};data={fp['data']};device={self.device}"
        if stage == "distill":
            return f"student={fp['student']}"
        return None

    def resolve(self, sampled: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """{stage: full params} from defaults, fixed values and this trial's sampled knobs.

        Coherence rules (`orchestrator.space.coherence`, docs/guide.md): `quantize.mode=
        onnx_int8` deploys in ONNX Runtime, so it sets `export.runtime=onnxruntime`; a torch
        int8 model cannot be exported to ONNX, so `dynamic_int8`/`static_int8`/`qat` with
        `export.runtime=onnxruntime` deploys eager instead; lowrank after an unstructured prune
        is its no-op `rank_ratio=1.0`. A knob that does nothing for the task is left out:
        `distill.student_ratio` when the task has its own student. The row records the
        effective values.
        """
        values = {**self.fixed, **{k: plain(v) for k, v in sampled.items()}}
        params: dict[str, dict[str, Any]] = {}
        for stage in self.pipeline:
            merged = dict(self.defaults.get(stage, {}))
            for name, value in values.items():
                owner, _, param = name.partition(".")
                if owner == stage:
                    merged[param] = value
            params[stage] = merged
        if "distill" in params and self.fingerprint.get("student", "none") != "none":
            params["distill"].pop("student_ratio", None)  # the task's own student is used
        return make_coherent(params)

    def requests(self, sampled: Mapping[str, Any], *, trial_id: str) -> list[StageRequest]:
        """The chain of stage requests of one trial, each keyed on its parent's key."""
        out: list[StageRequest] = []
        parent_key: str | None = None
        teacher_key: str | None = None
        for stage, params in self.resolve(sampled).items():
            key = stage_key(
                stage=stage,
                params=params,
                parent_key=parent_key,
                task=self.task,
                version=self.code_version,
                seed=self.seed,
                fingerprint=self.stage_fingerprint(stage),
            )
            out.append(
                StageRequest(
                    stage=stage,
                    params=params,
                    key=key,
                    parent_key=parent_key,
                    task=self.task,
                    storage=self.storage,
                    device=self.device,
                    seed=self.seed,
                    threads=self.threads,
                    sys_path=self.sys_path,
                    sweep_id=self.sweep_id,
                    trial_id=trial_id,
                    fingerprint=self.checked_parts(stage),
                    teacher_key=teacher_key if stage != "teacher" else None,
                )
            )
            parent_key = key
            if stage == "teacher":
                teacher_key = key
        return out

    def measure_request(self, key: str) -> MeasureRequest:
        lat = self.latency
        return MeasureRequest(
            task=self.task,
            key=key,
            sys_path=self.sys_path,
            warmup=int(lat.get("warmup", 50)),
            repeats=int(lat.get("repeats", 300)),
            time_cap_s=float(lat.get("time_cap_s", 0.5)),
            precision=float(lat.get("precision", 0.02)),
            batch_size=int(lat.get("batch_size", 1)),
            threads=int(lat.get("threads", 1)),
            storage=self.storage,
            sweep_id=self.sweep_id,
        )


MAX_ERROR_CHARS = 2000  # an error row's message; the whole traceback goes to its log file
LOGS_DIR = "logs"
_POLL_S = 0.5  # how often a trial with a time limit checks whether its stage is running


class _TrialTimeout(Exception):
    """The trial's stages ran past its time limit."""


class TrialLost(RuntimeError):
    """A trial lost to an infrastructure failure (its row says `lost`); raised in its Tune
    trainable so Tune keeps it as errored and a restored experiment runs it again."""


def run_pipeline(
    plan: SweepPlan,
    cache: Any,
    sampled: Mapping[str, Any],
    *,
    trial_id: str,
    on_stage: Any = None,
) -> dict[str, Any]:
    """Run one trial's chain through the cache; return the final result dict.

    Never raises for a stage failure: the result has `status` (ok | error | timeout | lost),
    `error` (the whole message, at most MAX_ERROR_CHARS), `error_log` (the log file holding the
    full traceback, under `<storage>/logs/<sweep>/<trial>.txt`), `stage_keys` (the stages it
    completed) and `last_val_accuracy` (the validation accuracy after its last stage), so the
    sweep records the trial and goes on. `on_stage(index, stage, info, result so far)` is
    called after each stage. A stage that could not write its checkpoint because the storage
    is full or read-only is no fault of the trial: its result carries `storage_fault` (the
    message), and the results writer stops the sweep on it instead of recording the trial.

    An infrastructure failure (`faults.is_infrastructure_error`: the cache actor died and its
    refs with it, an object or node was lost) walks the chain again, up to INFRA_ATTEMPTS
    times: the restarted cache actor loads the finished stages from disk. Still failing, the
    trial is `lost` (re-run by `--resume`), never `error`.

    The time limit (`plan.trial_timeout_s`) counts the time this trial's stages (and its
    measurement) spend *running*: a task waiting in Ray's queue for a CPU slot does not use
    it, so a trial queued behind a long one is never a timeout. Waiting on a stage another
    trial started counts once that stage runs (the trial needs it).
    """
    t0 = time.perf_counter()
    requests = plan.requests(sampled, trial_id=trial_id)
    result: dict[str, Any] = {
        "status": "ok",
        "error": None,
        "stage_keys": [],
        "effective_params": {f"{r.stage}.{k}": v for r in requests for k, v in r.params.items()},
        "last_val_accuracy": None,
    }
    run = _TrialRun(cache, limit=plan.trial_timeout_s)
    try:
        _walk(run, plan, requests, result, on_stage)
    except _TrialTimeout:
        result.update(
            status="timeout",
            error=(
                f"{run.where}: trial exceeded its time limit of {run.limit:g} s of running "
                "stages (time spent queued for a free CPU/GPU slot is not counted)"
            ),
        )
        run.release(trial_id)  # stop the stage it waited for unless another trial needs it
    except Exception as exc:  # a stage's own error, a dead worker after retries, OOM...
        _record_failure(plan, trial_id, run.where, exc, result)
    result["wall_s"] = time.perf_counter() - t0
    return result


INFRA_ATTEMPTS = 3  # walks of a trial's chain when the infrastructure fails under it
_INFRA_PAUSE_S = 1.0  # before walking again: the dead actor's restart is under way


def _walk(
    run: _TrialRun,
    plan: SweepPlan,
    requests: list[StageRequest],
    result: dict[str, Any],
    on_stage: Any,
) -> None:
    """The trial's stages and measurement, walked again after an infrastructure failure (the
    stages reported before are not reported twice: ASHA counts reports)."""
    reported = 0
    for attempt in range(1, INFRA_ATTEMPTS + 1):
        try:
            parent = run.stages(requests, result, on_stage, reported=reported)
            result.update(run.measure(plan, requests[-1].key, parent))
            return
        except Exception as exc:
            from orchestrator.engine.faults import is_infrastructure_error

            if attempt == INFRA_ATTEMPTS or not is_infrastructure_error(exc):
                raise
            reported = max(reported, len(result["stage_keys"]))
            result["stage_keys"] = []
            time.sleep(_INFRA_PAUSE_S)


def _record_failure(
    plan: SweepPlan, trial_id: str, where: str, exc: Exception, result: dict[str, Any]
) -> None:
    """The result of a trial that failed at `where`: `lost` for an infrastructure failure,
    else `error`; the whole traceback goes to its log file. A storage fault (a stage could not
    write its checkpoint: full or read-only storage) is `storage_fault`, and no log."""
    from orchestrator.engine.faults import is_infrastructure_error, lost_message
    from orchestrator.store.schema import LOST

    fault = as_storage_fault(exc, plan.storage)
    if fault is not None:  # full or read-only storage: not the trial's fault, the sweep stops
        result.update(status="error", error=bounded(str(fault)), storage_fault=str(fault))
        return
    if is_infrastructure_error(exc):
        result.update(status=LOST, error=bounded(lost_message(where, describe_error(exc))))
    else:
        result.update(status="error", error=bounded(f"{where}: {describe_error(exc)}"))
    result["error_log"] = write_error_log(
        plan.storage,
        plan.sweep_id,
        trial_id,
        exc,
        header=f"{where} failed; knobs: {result['effective_params']}",
    )


class _TrialRun:
    """One trial's walk through its stages and measurement, via the cache actor.

    `where` names what the trial is waiting for (its error says it); `used` is the seconds of
    running stages charged to the time limit `limit` so far (None: no limit).
    """

    def __init__(self, cache: Any, *, limit: float | None) -> None:
        self.cache = cache
        self.limit = limit
        self.used = 0.0
        self.where = "measure"

    def stages(
        self,
        requests: list[StageRequest],
        result: dict[str, Any],
        on_stage: Any,
        *,
        reported: int = 0,
    ) -> list[Any]:
        """Each stage in order (the cache starts it or hands back a shared one), recorded in
        `result`; returns the last stage's checkpoint ref (as a one-element parent list).
        `on_stage` is not called for the first `reported` stages (reported on an earlier walk)."""
        import ray

        parent: list[Any] = []
        teacher: list[Any] = []
        for index, request in enumerate(requests):
            self.where = f"stage {request.stage}"
            ckpt_ref, info_ref = ray.get(self.cache.get.remote(request, parent, teacher))
            info = self.wait(info_ref, request.key)
            parent = [ckpt_ref]
            if request.stage == "teacher":
                teacher = [ckpt_ref]
            result["stage_keys"].append(request.key)
            val = info.get("metrics", {}).get("val_accuracy")
            if val is not None:
                result["last_val_accuracy"] = float(val)
            if on_stage is not None and index >= reported:
                on_stage(index, request.stage, info, result)
        return parent

    def release(self, trial_id: str) -> None:
        """Tell the cache this trial gave up (best effort: a dead cache has nothing to stop)."""
        import ray

        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self.cache.release.remote(trial_id))

    def measure(self, plan: SweepPlan, key: str, parent: list[Any]) -> Any:
        """The metrics of the final model (the stage `key`, whose checkpoint ref is `parent`)."""
        import ray

        from orchestrator.engine.stage_tasks import measure_clock_key

        self.where = "measure"
        request = plan.measure_request(key)
        (metrics_ref,) = ray.get(self.cache.measure.remote(request, parent))
        return self.wait(metrics_ref, measure_clock_key(request.key))

    def wait(self, ref: Any, clock_key: str) -> Any:
        """`ray.get(ref)`, raising _TrialTimeout once the trial's running time passes its
        limit (`clock_key`: the cache's clock of the stage or measurement behind `ref`)."""
        import ray

        if self.limit is None:
            return ray.get(ref)
        began = time.time()
        while True:
            ready, _ = ray.wait([ref], timeout=_POLL_S)
            since = ray.get(self.cache.running_since.remote(clock_key))
            running = 0.0 if since is None else max(0.0, time.time() - max(since, began))
            if ready:
                self.used += running
                return ray.get(ref)
            if self.used + running >= self.limit:
                raise _TrialTimeout


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters, saying so (the full text is in the trial's log)."""
    if len(text) <= limit:
        return text
    tail = " ... [cut; the whole message is in the trial's log]"
    return text[: limit - len(tail)] + tail


def describe_error(exc: BaseException) -> str:
    """The root cause of a (possibly Ray-wrapped) exception: its type and its whole message
    (every line: a state-dict mismatch lists each layer), without the Ray traceback."""
    cause: BaseException = exc
    inner = getattr(exc, "cause", None)
    if isinstance(inner, BaseException):
        cause = inner
    text = [line.rstrip() for line in str(cause).strip().splitlines() if line.strip()]
    if cause is exc and text and hasattr(exc, "traceback_str"):
        # An unwrapped RayTaskError string carries a traceback: its last line names the error.
        message = text[-1].strip()
    else:
        message = "\n".join(text).strip()
    if not message:
        message = "".join(traceback.format_exception_only(type(cause), cause)).strip()
    if type(cause).__name__ == "WorkerCrashedError":
        message += (
            " The task was retried (max_retries) and its worker process died every time: a "
            "crash in native code, os._exit, or the out-of-memory killer."
        )
    return f"{type(cause).__name__}: {message}"


def full_traceback(exc: BaseException) -> str:
    """Everything known about a failure: the worker's traceback (inside a Ray task error's
    text) and the local one."""
    local = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return local if str(exc) in local else f"{exc}\n\n{local}"


def write_error_log(
    storage: str, sweep_id: str, trial_id: str, exc: BaseException | str, *, header: str = ""
) -> str | None:
    """Write a failed trial's full traceback to `<storage>/logs/<sweep>/<trial>.txt`; return
    where it is (a local path or a URI), or None when it could not be written (the row still
    carries the message)."""
    from orchestrator.store.rows import now
    from orchestrator.store.storage import open_storage

    body = exc if isinstance(exc, str) else full_traceback(exc)
    text = f"sweep {sweep_id} trial {trial_id} at {now().isoformat()}\n{header}\n\n{body}\n"
    try:
        store = open_storage(storage)
        return store.write_atomic(text.encode(), LOGS_DIR, sweep_id, f"{trial_id}.txt")
    except Exception:  # a log that cannot be written must not hide the trial's row
        return None


def trial_function(
    config: dict[str, Any],
    *,
    plan: SweepPlan,
    cache: Any,
    replay: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The Tune trainable: reports after every stage, then the final objectives.

    `replay` (a resumed sweep) maps trial ids to results already written to the results
    dataset. Tune re-runs a trial that finished after its last experiment snapshot; when that
    trial's row is already stored for the same stages, the stored result is reported again
    (the search algorithm learns it; `ResultsWriter` does not write it twice) instead of
    running the trial a second time. A stored `lost` row is not replayed: the trial runs.

    A trial that ends `lost` reports its result, then raises `TrialLost`, so Tune records it
    as errored and `--resume` runs it again.
    """
    from ray import tune

    trial_id = tune.get_context().get_trial_id() or "trial"
    stored = (replay or {}).get(trial_id)
    if stored is not None and stored.get("status") not in RERUN_STATUSES:
        keys = [r.key for r in plan.requests(config, trial_id=trial_id)]
        if list(stored.get("stage_keys") or []) == keys:
            tune.report({**stored, "final": True, "replayed": True})
            return

    result = run_pipeline(plan, cache, config, trial_id=trial_id, on_stage=_report_stage)
    tune.report({**result, "final": True})
    if result["status"] in RERUN_STATUSES:
        # Tune then keeps the trial as errored: a restored experiment (`--resume`) runs it
        # again under its id, where a trial that returned counts as done. Its row is written
        # from the final report above (`ResultsWriter.on_trial_error`).
        raise TrialLost(result["error"])


def _report_stage(
    index: int, stage: str, info: Mapping[str, Any], so_far: Mapping[str, Any]
) -> None:
    """A trial's report after a stage (its val_accuracy, for ASHA). The knobs and the stages
    done so far travel with every report: a trial that ASHA or the time budget stops after this
    one still gets a row that says what it was."""
    from ray import tune

    metrics = info.get("metrics", {})
    tune.report(
        {
            "stage": stage,
            "stage_index": index + 1,
            "val_accuracy": float(metrics.get("val_accuracy", float("nan"))),
            "last_val_accuracy": so_far.get("last_val_accuracy"),
            "stage_keys": list(so_far.get("stage_keys") or []),
            "effective_params": dict(so_far.get("effective_params") or {}),
            "final": False,
        }
    )
