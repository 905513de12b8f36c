"""`run_sweep`: the search space -> Ray Tune -> Parquet results, with the stage cache in between.

Flow: validate everything (no Ray yet) -> start or join Ray -> start the sweep's cache actor ->
measure the baseline (the uncompressed teacher, eager) beside the trials -> Tune runs cheap
coordinator trials (holding no CPU) whose stage tasks hold the real CPUs/GPUs -> a driver-side
callback writes each trial's row as it finishes -> the baseline row, then the table is returned.

Interruptions: Ctrl-C or SIGTERM stops launching trials, lets Tune save its experiment state,
records what finished and raises `SweepInterrupted`, whose message is the resume command. A
killed driver loses nothing either: rows and checkpoints are written as they finish, and
`resume=True` restores the Tune experiment (same trial ids; finished trials are not re-run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.engine.pipeline import SweepPlan
from orchestrator.space.config import load_space, parse_space_text
from orchestrator.space.config import space_text as config_space_text
from orchestrator.space.model import SearchSpace
from orchestrator.space.options import FLAGS, PLACEMENT, SweepOptions
from orchestrator.space.parse import check_stages_apply_to_task
from orchestrator.store.rows import now, trial_row
from orchestrator.store.storage import Storage, open_storage, tune_storage
from stages.errors import SqueezerayError

log = logging.getLogger(__name__)

# A trial only waits on refs; its stage tasks hold the CPUs. Zero CPU (Tune rejects an empty
# bundle, hence the 1-byte memory request): 0.01 CPU per trial left fewer than N whole CPUs
# free, so on 1 CPU nothing could run and on 2 only one stage task at a time (bench/).
COORDINATOR_RESOURCES: dict[str, float] = {"cpu": 0, "memory": 1}
TRAINING_SEED = 0
SWEEPS_DIR = "sweeps"


@dataclass(frozen=True)
class SweepSummary:
    """What a finished sweep did, beside its rows (for the CLI, tests and benchmarks)."""

    sweep_id: str
    storage: str
    trials_ok: int
    trials_failed: int
    stages_executed: int
    stages_loaded: int
    stage_requests: int  # stage executions a naive per-trial pipeline would have run
    corrupt_checkpoints: int
    wall_s: float
    interrupted: bool
    resume_command: str = ""  # continues this sweep (see `resume_command`)
    stages_cancelled: int = 0  # running stages stopped because their trials timed out
    latency_final_models: int = 0  # front models re-measured in the final latency phase
    latency_final_note: str = ""  # why the final phase was skipped or failed, when it was
    # trials_failed split by status (error, timeout: its time limit, stopped: by ASHA)
    trials_error: int = 0
    trials_timeout: int = 0
    trials_stopped: int = 0
    trials_total: int = 0  # trials the search was to run (the grid's size for grid search)
    ended: str = ""  # why the sweep ended, in words (see `end_reason`)
    exit_code: int = 0  # 0; EXIT_NO_TRIAL_OK when no trial succeeded; 2 when interrupted
    most_common_error: str = ""  # when trials failed: the commonest error and how often
    baseline_error: str = ""  # when the baseline (the teacher as given) could not be measured


# `squeezeray sweep` exit codes: 2 is a bad input or an interrupted sweep (SqueezerayError),
# 3 a nightly regression; a sweep that ran but in which no trial succeeded exits with 4.
EXIT_NO_TRIAL_OK = 4


def new_sweep_id(name: str | None) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = secrets.token_hex(2)
    base = f"{name}-{stamp}" if name else stamp
    return f"{base}-{suffix}"


def _user_sys_path(task: str) -> tuple[str, ...]:
    """The directory that makes a user's `pkg.mod:callable` importable in Ray workers."""
    if ":" not in task:
        return ()
    module = task.partition(":")[0]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ()
    depth = module.count(".") + 1
    root = Path(spec.origin).resolve().parent
    if Path(spec.origin).name == "__init__.py":
        depth += 1
    for _ in range(depth - 1):
        root = root.parent
    return (str(root),)


def _stage_defaults(pipeline: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    import dataclasses

    from stages import get_stage

    out = {}
    for stage in pipeline:
        spec = get_stage(stage)
        out[stage] = {
            f.name: f.default
            for f in dataclasses.fields(spec.params)  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING
        }
    return out


def run_sweep(
    space: SearchSpace | str | Path | None = None,
    options: SweepOptions | None = None,
    *,
    sweep_id: str | None = None,
    resume: bool = False,
    warm_start: tuple[Any, ...] | None = None,
    progress: Callable[[str, Mapping[str, Any]], None] | None = None,
    **keywords: Any,
) -> Any:
    """Run a compression sweep and return its rows (a `pyarrow.Table`, baseline included).

    `space` is a SearchSpace, a YAML path, a packaged space name ("default", "quick") or None
    (the default space). The sweep's options are `options` or, as keywords, the fields of
    `SweepOptions` (`trials=`, `storage=`, `time_budget="30m"`, `cpus_per_trial=`, ...);
    they win over the file. Everything is validated before Ray starts; a SqueezerayError
    names the key, the value and what is accepted.
    """
    sweep = prepare_sweep(space, options, sweep_id=sweep_id, resume=resume, **keywords)
    return execute_sweep(sweep, warm_start=warm_start, progress=progress).table


@dataclass(frozen=True)
class PreparedSweep:
    space: SearchSpace  # the options' overrides applied
    storage: Storage
    sweep_id: str
    options: SweepOptions
    resume: bool
    fingerprint: dict[str, str] = field(default_factory=dict)  # stages.fingerprint, per task
    space_text: str | None = None  # the YAML it was read from (the manifest keeps it)
    budget_elapsed_s: float = 0.0  # seconds of the time budget spent before (--resume)

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
class SweepOutcome:
    table: Any  # pyarrow.Table of this sweep's rows
    summary: SweepSummary


def sweep_options(options: SweepOptions | None, keywords: Mapping[str, Any]) -> SweepOptions:
    """`options`, or `SweepOptions.build(**keywords)` (the keyword Python API); not both."""
    if options is None:
        return SweepOptions.build(**keywords)
    if keywords:
        raise SqueezerayError(
            f"give the sweep options either as SweepOptions or as keywords, not both "
            f"(keywords given: {', '.join(sorted(keywords))})"
        )
    return options


def prepare_sweep(
    space: SearchSpace | str | Path | None,
    options: SweepOptions | None = None,
    *,
    sweep_id: str | None = None,
    resume: bool = False,
    **keywords: Any,
) -> PreparedSweep:
    """Every check that can fail before Ray starts.

    `options` (or its fields as keywords, see `SweepOptions.build`) override the space.
    `teacher_weights`: a state_dict file loaded into the task's teacher (`teacher.weights`;
    `teacher.epochs` becomes 0, use as given, unless the space sets it).
    With `resume`, the options and the space come from the sweep's manifest; an option given
    again with another value is refused (placement options - storage, address, num_cpus,
    latency_resource - may change)."""
    opts = sweep_options(options, keywords)
    if sweep_id is not None:
        _check_sweep_id(sweep_id)
    storage = opts.storage
    # The storage directory is created only once everything else has passed.
    store = open_storage(storage)
    if storage.startswith("memory://"):
        raise SqueezerayError(
            f"--storage={storage!r}: an in-memory filesystem lives in one process, "
            "and Ray workers write stage checkpoints from theirs; use a directory, file://, "
            "s3:// or gs://"
        )
    if not resume and sweep_id is not None and store.exists(*manifest_path(sweep_id)):
        raise SqueezerayError(
            f"--sweep-id {sweep_id!r} already exists in {store.uri}; continue it with "
            f"`{resume_command(store, sweep_id)}` or choose another id"
        )
    space_text: str | None = None
    budget_elapsed_s = 0.0
    if resume:
        if sweep_id is None:
            sweep_id = latest_sweep_id(store)
        manifest = read_manifest(store, sweep_id)
        opts = resumed_options(manifest, opts, store, sweep_id)
        budget_elapsed_s = float(manifest.get("budget_elapsed_s") or 0.0)
        space_text = manifest.get("space_yaml")
        # The space as started (its YAML text), whatever became of its file since; only a
        # manifest from before the text was kept (or a space built in Python) reads the file.
        space = manifest["space_source"]
        if space_text is not None:
            space = parse_space_text(space_text, source=manifest["space_source"], check_task=False)
    loaded = space if isinstance(space, SearchSpace) else load_space(space, check_task=False)
    if not resume:
        space_text = config_space_text(loaded)
    loaded = loaded.with_overrides(
        task=opts.task,
        trials=opts.trials,
        seed=opts.seed,
        name=opts.name,
        time_budget_s=opts.time_budget_s,
        algorithm=opts.algorithm,
    )
    # The task import path is checked here, on the driver, before any Ray work (and so is
    # every stage that could not change the task's model at all: issue 12 item 6); its
    # fingerprint (architectures, weights, data) goes into the stage keys, so an edited model
    # or dataset is recomputed instead of served from the cache.
    from stages.fingerprint import task_fingerprint
    from stages.tasks import load_task

    task_obj = load_task(loaded.task)
    loaded = _with_teacher_weights(loaded, opts.teacher_weights, task_obj)
    loaded = loaded.with_task_metric(task_obj.metric.name if task_obj.metric else None)
    if task_obj.student is not None and "distill.student_ratio" in loaded.params:
        raise SqueezerayError(
            f"{loaded.source}: params.distill.student_ratio: task {loaded.task!r} has its own "
            "student, so distill.student_ratio would change nothing; drop the key, or give the "
            "task student=None to have the student made from the teacher"
        )
    check_stages_apply_to_task(loaded)
    fingerprint = task_fingerprint(task_obj, seed=TRAINING_SEED)
    return PreparedSweep(
        space=loaded,
        storage=open_storage(storage, create=True),
        sweep_id=sweep_id or new_sweep_id(loaded.name),
        options=opts,
        resume=resume,
        fingerprint=fingerprint.as_dict(),
        space_text=space_text,
        budget_elapsed_s=budget_elapsed_s,
    )


def resumed_options(
    manifest: Mapping[str, Any], given: SweepOptions, store: Storage, sweep_id: str
) -> SweepOptions:
    """The options a sweep was started with (its manifest), plus the placement options given
    now. Any other option given now with another value is refused: a resumed sweep runs
    exactly what was started."""
    stored = manifest.get("options")
    if stored is None:  # a manifest written before SweepOptions: its flat fields
        stored = {
            "task": manifest.get("task"),
            "trials": manifest.get("trials"),
            "seed": manifest.get("seed"),
            "name": manifest.get("name"),
            "trial_timeout_s": manifest.get("trial_timeout_s"),
            "max_concurrent": manifest.get("max_concurrent"),
            "teacher_weights": manifest.get("teacher_weights"),
            "cpus_per_trial": manifest.get("cpus_per_trial") or 1.0,
            "gpus_per_trial": manifest.get("gpus_per_trial") or 0.0,
        }
    started = SweepOptions.from_dict(dict(stored))
    changes: dict[str, Any] = {}
    for key, value in given.given().items():
        if key in PLACEMENT:
            changes[key] = value
        elif value != getattr(started, key):
            raise SqueezerayError(
                f"{FLAGS[key]}: sweep {sweep_id!r} was started with {getattr(started, key)!r}, "
                f"not {value!r}; --resume runs exactly what was started, so leave "
                f"{FLAGS[key]} out, or start a new sweep with it (without --resume) in "
                f"{store.uri}"
            )
    return dataclasses.replace(started, **changes)


def _with_teacher_weights(
    space: SearchSpace, cli_path: str | os.PathLike[str] | None, task: Any
) -> SearchSpace:
    """Resolve `teacher.weights` (from --teacher-weights, relative to the current directory,
    or from the space, relative to its file) to an absolute path, pin its sha256 beside it
    (`teacher.weights_sha256`: new weights give new stage keys) and load it into the task's
    teacher once here, so a wrong file fails before Ray starts."""
    import dataclasses
    import hashlib

    from orchestrator.space.model import Distribution
    from stages.teacher import load_weights

    given = space.params.get("teacher.weights")
    if cli_path is None and given is None:
        return space
    key = "--teacher-weights" if cli_path is not None else "params.teacher.weights"
    if cli_path is not None and given is not None:
        raise SqueezerayError(
            f"{space.source}: --teacher-weights and params.teacher.weights are both given; keep one"
        )
    if "teacher" not in space.pipeline:
        raise SqueezerayError(
            f"{space.source}: {key}: the pipeline has no teacher stage to load the weights into"
        )
    if cli_path is not None:
        path = Path(cli_path).expanduser().resolve()
    else:
        assert given is not None
        if given.kind != "fixed" or not isinstance(given.value, str) or not given.value:
            raise SqueezerayError(
                f"{space.source}: params.teacher.weights: {given.describe()} is not accepted; "
                "accepted: one file path (a plain value)"
            )
        path = Path(given.value).expanduser()
        if not path.is_absolute():
            path = (Path(space.source).resolve().parent / path).resolve()
    if not path.is_file():
        raise SqueezerayError(
            f"{space.source}: {key}={os.fspath(cli_path or path)!r}: no such file ({path})"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        load_weights(task.teacher(), str(path), sha256=digest)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{space.source}: {key}: {exc}") from exc
    params = {
        **space.params,
        "teacher.weights": Distribution(kind="fixed", value=str(path)),
        "teacher.weights_sha256": Distribution(kind="fixed", value=digest),
    }
    if cli_path is not None and "teacher.epochs" not in params:
        params["teacher.epochs"] = Distribution(kind="fixed", value=0)
    return dataclasses.replace(space, params=params)


def _check_sweep_id(sweep_id: str) -> None:
    # It names files and directories (manifest, Tune experiment, results partition).
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", sweep_id):
        raise SqueezerayError(
            f"--sweep-id {sweep_id!r} is not a valid sweep id; accepted: 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    from orchestrator.store.results import check_sweep_id_unambiguous

    check_sweep_id_unambiguous(sweep_id, what="--sweep-id")


def search_deadlines() -> dict[str, float]:
    from orchestrator.engine.search import DEADLINES

    return DEADLINES


def manifest_path(sweep_id: str) -> tuple[str, str]:
    return SWEEPS_DIR, f"{sweep_id}.json"


def write_manifest(
    store: Storage,
    sweep: PreparedSweep,
    *,
    status: str,
    error: str | None = None,
    budget_elapsed_s: float | None = None,
) -> None:
    """`budget_elapsed_s`: seconds of the sweep's run time so far, over all its runs (a
    resumed sweep's time budget is what is left of it); default: as at its start."""
    space = sweep.space
    elapsed = sweep.budget_elapsed_s if budget_elapsed_s is None else budget_elapsed_s
    data = {
        "sweep_id": sweep.sweep_id,
        "name": space.name,
        "space_source": str(Path(space.source).resolve()),
        "space_yaml": sweep.space_text,  # what --resume runs (None: a space built in Python)
        "budget_elapsed_s": elapsed,
        "task": space.task,
        "trials": space.search.trials,
        "seed": space.search.seed,
        "algorithm": space.search.algorithm,
        "cpus_per_trial": sweep.cpus_per_trial,
        "gpus_per_trial": sweep.gpus_per_trial,
        "trial_timeout_s": sweep.trial_timeout_s,
        "max_concurrent": sweep.max_concurrent,
        "teacher_weights": sweep.teacher_weights,
        "options": sweep.options.to_dict(),  # what --resume runs (SweepOptions)
        "status": status,
        "error": error,
        "resume_command": resume_command(store, sweep.sweep_id),
        "updated_at": now().isoformat(),
    }
    store.write_atomic(json.dumps(data, indent=2).encode(), *manifest_path(sweep.sweep_id))


def resume_command(store: Storage, sweep_id: str) -> str:
    """The shell command that continues sweep `sweep_id` (absolute for local storage, so it
    works from any directory)."""
    location = store.root if store.is_local else store.uri
    return (
        f"squeezeray sweep --resume --sweep-id {shlex.quote(sweep_id)} "
        f"--storage {shlex.quote(location)}"
    )


def read_manifest(store: Storage, sweep_id: str) -> dict[str, Any]:
    if not store.exists(*manifest_path(sweep_id)):
        raise SqueezerayError(
            f"sweep {sweep_id!r} has no manifest under {store.uri}/{SWEEPS_DIR}; "
            "list sweeps with `squeezeray sweeps <storage>`"
        )
    return dict(json.loads(store.read_bytes(*manifest_path(sweep_id))))


def latest_sweep_id(store: Storage) -> str:
    from pyarrow.fs import FileSelector

    if not store.exists(SWEEPS_DIR):
        raise SqueezerayError(f"no sweep to resume under {store.uri}: it holds no {SWEEPS_DIR}/")
    infos = store.fs.get_file_info(FileSelector(store.path(SWEEPS_DIR)))
    manifests = [
        i for i in infos if i.base_name.endswith(".json") and not i.base_name.startswith(".")
    ]
    if not manifests:
        raise SqueezerayError(f"no sweep to resume under {store.uri}")
    newest = max(manifests, key=lambda i: i.mtime_ns or 0)
    return str(newest.base_name.removesuffix(".json"))


def execute_sweep(
    sweep: PreparedSweep,
    *,
    address: str | None = None,
    latency_resource: str | None = None,
    num_cpus: int | None = None,
    warm_start: tuple[Any, ...] | None = None,
    progress: Callable[[str, Mapping[str, Any]], None] | None = None,
) -> SweepOutcome:
    """`_execute_sweep` while holding the storage's shared in-use lock (`lock.storage_in_use`),
    so `squeezeray gc` never deletes a checkpoint this sweep may load. Options as there;
    `address`, `latency_resource` and `num_cpus` default to the sweep's `SweepOptions`.

    A sweep that fails after it started (its manifest says `running`) leaves a manifest that
    says `failed` and why, not `running`.
    """
    from orchestrator.store.lock import storage_in_use

    opts = sweep.options
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
        with contextlib.suppress(Exception):
            if read_manifest(sweep.storage, sweep.sweep_id).get("status") == "running":
                from orchestrator.engine.pipeline import bounded, describe_error

                write_manifest(
                    sweep.storage, sweep, status="failed", error=bounded(describe_error(exc))
                )
        raise


def _execute_sweep(
    sweep: PreparedSweep,
    *,
    address: str | None,
    latency_resource: str | None,
    num_cpus: int | None,
    warm_start: tuple[Any, ...] | None,
    progress: Callable[[str, Mapping[str, Any]], None] | None,
) -> SweepOutcome:
    """Run a prepared sweep on Ray (embedded when `address` is None).

    Ctrl-C or SIGTERM (in the main thread) stops launching trials, lets Tune save its
    experiment state, records everything finished and raises `SweepInterrupted` naming the
    resume command; a second signal stops at once. A resumed sweep (`sweep.resume`) restores
    the Tune experiment: finished trials are kept, unfinished ones re-run under their ids.
    """
    import ray
    from ray import tune

    from orchestrator.engine.cache import StageCache
    from orchestrator.engine.keys import code_version
    from orchestrator.engine.pipeline import trial_function
    from orchestrator.engine.runtime import init_ray, latency_resources
    from orchestrator.engine.search import make_search
    from orchestrator.engine.stage_tasks import cache_actor_name
    from orchestrator.engine.tune_callbacks import ResultsWriter
    from orchestrator.store.results import append_results

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune snapshots its experiment state (trial statuses, searcher) every 10+ s by default; a
    # trial started and finished between two snapshots is unknown to a restored run. Every
    # 2 s keeps that window short at a small cost (the state is a few KB per trial).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    space = sweep.space
    store = sweep.storage
    info = init_ray(address=address, num_cpus=num_cpus)
    if sweep.gpus_per_trial > 0 and info.gpus < sweep.gpus_per_trial:
        raise SqueezerayError(
            f"--gpus-per-trial={sweep.gpus_per_trial:g} but the Ray cluster offers "
            f"{info.gpus:g} GPUs; drop the flag or connect to a cluster with GPU workers"
        )
    if info.cpus < sweep.cpus_per_trial:
        raise SqueezerayError(
            f"--cpus-per-trial={sweep.cpus_per_trial:g} but the Ray cluster has {info.cpus:g} CPUs"
        )
    write_manifest(store, sweep, status="running")
    # The time budget counts this run from here, after what earlier runs spent (--resume);
    # the deadline is this process's monotonic clock, never one restored from the dead run.
    run_start = time.monotonic()
    if space.search.time_budget_s is not None:
        left = max(0.0, space.search.time_budget_s - sweep.budget_elapsed_s)
        search_deadlines()[sweep.sweep_id] = run_start + left

    # Selection happens on the validation split: `accuracy` objectives and constraints resolve
    # to `val_accuracy` (config.selection_column); the test accuracy is only reported.
    constraints = space.search_constraints()
    plan = SweepPlan(
        sweep_id=sweep.sweep_id,
        task=space.task,
        pipeline=space.pipeline,
        defaults=_stage_defaults(space.pipeline),
        fixed=dict(space.fixed()),
        code_version=code_version(),
        storage=store.uri,
        objectives=space.search_objectives(),
        constraints=constraints,
        # Stages train with a fixed seed: the search seed only drives the sampler, so sweeps
        # and nightly runs with other search seeds still share (and reuse) their stages.
        seed=TRAINING_SEED,
        device="cuda" if sweep.gpus_per_trial > 0 else "cpu",
        threads=max(1, int(sweep.cpus_per_trial)),
        sys_path=_user_sys_path(space.task),
        latency=asdict(space.latency),
        trial_timeout_s=sweep.trial_timeout_s,
        fingerprint=sweep.fingerprint,
    )
    stage_options = stage_task_options(sweep.cpus_per_trial, sweep.gpus_per_trial)
    measure_options: dict[str, Any] = {
        "num_cpus": 1,
        "resources": latency_resources(info, latency_resource),
    }
    cache = StageCache.options(name=cache_actor_name(sweep.sweep_id)).remote(  # type: ignore[attr-defined]
        store.uri, sweep.sweep_id, stage_options=stage_options, measure_options=measure_options
    )
    # A resumed sweep: the rows written before the interruption (trial id -> result).
    stored = stored_results(store, sweep.sweep_id) if sweep.resume else {}
    stored_baseline = stored.pop("baseline", None)

    # Default: one trial more than there are stage slots. A trial is a serial chain that
    # leaves its slot idle while it waits for a stage another trial is computing (a shared KD
    # run); the extra trial fills it (digits and digits-cnn: 6% faster than one trial per
    # slot; a fourth trial on 2 CPUs adds Tune start-up cost: bench/RESULTS.md §1).
    slots = int(info.cpus // sweep.cpus_per_trial)
    if sweep.gpus_per_trial > 0:
        slots = min(slots, int(info.gpus // sweep.gpus_per_trial))
    concurrency = sweep.max_concurrent or space.search.max_concurrent or max(1, slots) + 1
    search_alg, param_space, num_samples = make_search(
        space,
        constraints=constraints,
        points_to_evaluate=warm_start[0] if warm_start else None,
        evaluated_rewards=warm_start[1] if warm_start else None,
        warm_constraint_values=warm_start[2] if warm_start and len(warm_start) > 2 else None,
        max_concurrent=concurrency,
        deadline_key=sweep.sweep_id,
    )
    writer = ResultsWriter(
        storage=store.uri,
        sweep_id=sweep.sweep_id,
        sweep_name=space.name or sweep.sweep_id,
        task=space.task,
        code_version=plan.code_version,
        constraints=constraints,
        total=num_samples,
        progress=progress,
        done={
            "ok": sum(r["status"] == "ok" for r in stored.values()),
            "failed": sum(r["status"] != "ok" for r in stored.values()),
        },
        plan=plan,
    )
    trainable = tune.with_resources(
        tune.with_parameters(trial_function, plan=plan, cache=cache, replay=stored),
        COORDINATOR_RESOURCES,
    )
    # Tune gets the filesystem and the path on it: a URI's query string (an S3 endpoint) is
    # not something Tune can append sub-paths to.
    tune_path, tune_fs = tune_storage(store, "tune")
    experiment_dir = f"{tune_path}/{sweep.sweep_id}"
    baseline_ref: Any = None
    baseline_started = now()
    interrupted = False
    with _stop_signals() as stop:
        try:
            if stored_baseline is None or stored_baseline["status"] != "ok":
                # The baseline (uncompressed teacher, eager) runs beside the trials, sharing
                # their teacher.
                teacher_request = plan.requests({}, trial_id="baseline")[0]
                t_ref, _ = ray.get(cache.get.remote(teacher_request, [], []))
                (baseline_ref,) = ray.get(
                    cache.measure.remote(plan.measure_request(teacher_request.key), [t_ref])
                )
            if sweep.resume and tune.Tuner.can_restore(experiment_dir, storage_filesystem=tune_fs):
                tuner = _restored_tuner(experiment_dir, trainable, writer, tune_fs)
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=param_space,
                    tune_config=tune.TuneConfig(
                        search_alg=search_alg,
                        scheduler=_scheduler(space),
                        num_samples=num_samples,
                        max_concurrent_trials=concurrency,
                        reuse_actors=True,
                    ),
                    run_config=tune.RunConfig(
                        name=sweep.sweep_id,
                        storage_path=tune_path,
                        storage_filesystem=tune_fs,
                        verbose=0,
                        callbacks=[writer],
                        failure_config=tune.FailureConfig(max_failures=0),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    ),
                )
            stop.enter_fit()
            tuner.fit()
            stop.leave_fit()
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.received is not None

    # An interrupted sweep records what has finished and does not wait for the rest.
    if baseline_ref is not None and (not interrupted or ray.wait([baseline_ref], timeout=0)[0]):
        baseline = _baseline_row(plan, baseline_ref, baseline_started, space.name or sweep.sweep_id)
        append_results(store.uri, [baseline])
    final_models, final_note = 0, ""
    if not interrupted and space.latency.rounds > 0:
        ray.get(cache.stats.remote(wait=True))  # every stage has finished recording
        try:
            options = final_latency_options(info, latency_resource)
        except SqueezerayError as exc:
            final_note = str(exc)
        else:
            try:
                final_models, final_note = final_latency_phase(
                    plan, cache, store, sweep.sweep_id, space, options=options
                )
            except KeyboardInterrupt:  # Ctrl-C here skips the phase; every trial is recorded
                final_note = "final latency phase interrupted; rows keep their in-sweep latency"
    stats = ray.get(cache.stats.remote(wait=not interrupted))
    ray.kill(cache)
    search_deadlines().pop(sweep.sweep_id, None)
    elapsed = sweep.budget_elapsed_s + (time.monotonic() - run_start)
    write_manifest(
        store,
        sweep,
        status="interrupted" if interrupted else "finished",
        budget_elapsed_s=elapsed,
    )
    _compact_quietly(store, sweep.sweep_id)
    table = _sweep_table(store, sweep.sweep_id)
    trial_rows = [r for r in table.to_pylist() if not r["is_baseline"]]
    statuses = [r["status"] for r in trial_rows]
    baseline_rows = [r for r in table.to_pylist() if r["is_baseline"]]
    baseline_error = ""
    if baseline_rows and baseline_rows[-1]["status"] != "ok":
        baseline_error = str(baseline_rows[-1]["error"] or "unknown error")
        if baseline_rows[-1].get("error_log"):
            baseline_error += f" (log: {baseline_rows[-1]['error_log']})"
    ended, exit_code = end_reason(
        interrupted=interrupted,
        statuses=statuses,
        total=writer.total,
        budget_s=space.search.time_budget_s,
        out_of_time=bool(getattr(search_alg, "out_of_time", False)),
        wall_s=elapsed,
    )
    summary = SweepSummary(
        sweep_id=sweep.sweep_id,
        storage=store.uri,
        trials_ok=sum(s == "ok" for s in statuses),
        trials_failed=sum(s != "ok" for s in statuses),
        stages_executed=len(stats["executed"]),
        stages_loaded=len(stats["loaded"]),
        stage_requests=writer.stage_requests,
        corrupt_checkpoints=len(stats["corrupt"]),
        wall_s=time.perf_counter() - t0,
        interrupted=interrupted,
        resume_command=resume_command(store, sweep.sweep_id),
        stages_cancelled=len(stats["cancelled"]),
        latency_final_models=final_models,
        latency_final_note=final_note,
        trials_error=sum(s == "error" for s in statuses),
        trials_timeout=sum(s == "timeout" for s in statuses),
        trials_stopped=sum(s == "stopped" for s in statuses),
        trials_total=writer.total,
        ended=ended,
        exit_code=exit_code,
        most_common_error=most_common_error(trial_rows),
        baseline_error=baseline_error,
    )
    if interrupted:
        raise SweepInterrupted(summary)
    return SweepOutcome(table=table, summary=summary)


def _compact_quietly(store: Storage, sweep_id: str) -> None:
    """Merge the sweep's per-trial files into one per table (`orchestrator.store.compact`). Its rows
    are already safe in the parts, so a failure here only warns: `squeezeray compact` retries."""
    from orchestrator.store.compact import compact_sweep

    try:
        compact_sweep(store.uri, sweep_id)
    except Exception as exc:  # housekeeping: never fail a sweep whose rows are all written
        log.warning(
            "could not compact sweep %s (%s); its rows are kept as they are. Retry with: "
            "squeezeray compact %s --sweep %s",
            sweep_id, exc, shlex.quote(store.uri), shlex.quote(sweep_id),
        )  # fmt: skip


FINAL_LATENCY_MAX_MODELS = 16  # front models re-measured at most (the best by the first objective)
FINAL_LATENCY_TIMEOUT_S = 1800.0


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


def final_latency_phase(
    plan: SweepPlan,
    cache: Any,
    store: Storage,
    sweep_id: str,
    space: SearchSpace,
    *,
    options: Mapping[str, Any],
) -> tuple[int, str]:
    """After the last trial: re-measure the front's models and the baseline apart.

    The front (the space's objectives on their selection columns: val_accuracy, size,
    latency_ms_sweep) and the baseline are timed together in `latency.rounds` interleaved
    rounds by one task that holds a whole node (`final_latency_options`). Each of their rows is
    written again (the newer row wins on read) with latency_ms / latency_ms_p90 from those
    rounds, latency_cv (spread of the round medians), speedup (paired per round, vs the
    baseline) and latency_rounds; latency_ms_sweep keeps the in-sweep figure. Returns (models
    re-measured, a note when the phase was skipped or failed). A failure never fails the sweep:
    the rows keep their in-sweep latency.
    """
    import warnings

    import ray

    from orchestrator.engine.pipeline import describe_error
    from orchestrator.engine.stage_tasks import run_remeasure
    from orchestrator.query.pareto import pareto_front, resolve_objectives
    from orchestrator.store.results import append_results

    table = _sweep_table(store, sweep_id)
    rows = table.to_pylist()
    baseline = next((r for r in rows if r["is_baseline"] and r["status"] == "ok"), None)
    if baseline is None or not baseline.get("stage_keys"):
        return 0, "no baseline row to compare with"
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
    front_rows = front_rows[:FINAL_LATENCY_MAX_MODELS]
    if not front_rows:
        return 0, "no front to re-measure"
    chosen = [baseline, *front_rows]
    refs = ray.get(cache.checkpoints.remote([r["stage_keys"][-1] for r in chosen]))
    pairs = [(row, ref) for row, ref in zip(chosen, refs, strict=True) if ref is not None]
    if not pairs or pairs[0][0] is not baseline:
        return 0, "the baseline's checkpoint is gone"
    request = plan.measure_request(baseline["stage_keys"][-1])
    task = run_remeasure.options(**options).remote(
        request, space.latency.rounds, *[ref for _, ref in pairs]
    )
    try:
        results = ray.get(task, timeout=FINAL_LATENCY_TIMEOUT_S)
    except Exception as exc:  # a dead worker, a timeout: keep the in-sweep figures
        ray.cancel(task, force=True)
        return 0, f"final latency phase failed ({describe_error(exc)}); rows keep in-sweep latency"
    finished = now()
    updated = []
    from orchestrator.store.schema import RESULTS_SCHEMA

    stored = set(RESULTS_SCHEMA.names)  # not the columns load_results derives (task metrics)
    for (row, _), measured in zip(pairs, results, strict=True):
        new = {k: v for k, v in row.items() if k in stored}
        if new.get("latency_ms_sweep") is None:
            new["latency_ms_sweep"] = row.get("latency_ms")
        for column in ("latency_ms", "latency_ms_p90", "latency_cv", "speedup", "latency_rounds"):
            new[column] = measured[column]
        new["finished_at"] = finished
        updated.append(new)
    append_results(store.uri, updated)
    return len(updated) - 1, ""


def end_reason(
    *,
    interrupted: bool,
    statuses: list[str],
    total: int,
    budget_s: float | None,
    out_of_time: bool,
    wall_s: float,
) -> tuple[str, int]:
    """Why a sweep ended, in words, and its exit code (0, EXIT_NO_TRIAL_OK, or 2)."""
    if interrupted:
        return f"interrupted (Ctrl-C or SIGTERM) after {len(statuses)} of {total} trials", 2
    budget = ""
    if budget_s is not None and len(statuses) < total and (out_of_time or wall_s >= budget_s):
        budget = (
            f"time budget of {budget_s:g} s reached ({len(statuses)} of {total} trials launched)"
        )
    if statuses and not any(s == "ok" for s in statuses):
        failed = f"every trial failed ({len(statuses)} of {len(statuses)})"
        return (f"{budget}; {failed}" if budget else failed), EXIT_NO_TRIAL_OK
    if not statuses:
        return (budget or "no trial ran"), EXIT_NO_TRIAL_OK if total else 0
    return (budget or f"all trials done ({len(statuses)} of {total})"), 0


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


def _restored_tuner(experiment_dir: str, trainable: Any, writer: Any, fs: Any = None) -> Any:
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


def stored_results(store: Storage, sweep_id: str) -> dict[str, dict[str, Any]]:
    """Trial id -> the result already written for it (what a resumed trial reports again)."""
    from orchestrator.store.results import load_results
    from orchestrator.store.schema import METRIC_COLUMNS

    try:
        table = load_results(store.uri, sweep=sweep_id)
    except SqueezerayError:  # nothing written yet
        return {}
    out: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        out[row["trial_id"]] = {
            "status": row["status"],
            "error": row["error"],
            "runtime": row["runtime"],
            "wall_s": row["wall_s"],
            "stage_keys": list(row["stage_keys"] or []),
            "effective_params": json.loads(row["params"] or "{}"),
            **{name: row[name] for name in METRIC_COLUMNS},
        }
        custom = json.loads(row.get("custom_metrics") or "{}")
        out[row["trial_id"]].update(custom, custom_metric_names=sorted(custom))
    return out


def _sweep_table(store: Storage, sweep_id: str) -> Any:
    """The sweep's rows; an empty table when it was interrupted before writing any."""
    import pyarrow as pa

    from orchestrator.store.results import load_results
    from orchestrator.store.schema import RESULTS_SCHEMA

    try:
        return load_results(store.uri, sweep=sweep_id)
    except SqueezerayError:
        return pa.Table.from_pylist([], schema=RESULTS_SCHEMA)


class _StopSignals:
    """SIGINT/SIGTERM handling around a sweep (main thread only).

    Before `tuner.fit()` a signal raises KeyboardInterrupt. During it, the signal is handed to
    Tune's own stop handler (installed for SIGUSR1; Tune's SIGINT handler is switched off so
    that this class sees Ctrl-C): Tune stops launching trials, saves its experiment state and
    returns. Afterwards it is only noted, so the rows are still written. A second signal
    always raises KeyboardInterrupt. SIGTERM replaces Ray's handler, which would kill the
    local Ray processes before the sweep could record anything.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_fit = False
        self.after_fit = False
        self._usr1_before: Any = None

    def enter_fit(self) -> None:
        self._usr1_before = signal.getsignal(signal.SIGUSR1)
        self.in_fit = True

    def leave_fit(self) -> None:
        self.in_fit, self.after_fit = False, True
        if self._usr1_before is not None:
            signal.signal(signal.SIGUSR1, self._usr1_before)

    def handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if not first:
            raise KeyboardInterrupt
        if self.in_fit:
            tune_stop = signal.getsignal(signal.SIGUSR1)
            if callable(tune_stop) and tune_stop is not self._usr1_before:
                tune_stop(signum, frame)
                return
        if not self.after_fit:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopSignals]:
    stop = _StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for sig in previous:
        signal.signal(sig, stop.handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop.in_fit:
            stop.leave_fit()
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


class SweepInterrupted(SqueezerayError):
    """Raised after an interrupted sweep has saved what it had; the message says how to resume."""

    def __init__(self, summary: SweepSummary) -> None:
        self.summary = summary
        done = summary.trials_ok + summary.trials_failed
        command = summary.resume_command or (
            f"squeezeray sweep --resume --sweep-id {summary.sweep_id} --storage {summary.storage}"
        )
        super().__init__(
            f"sweep {summary.sweep_id} was interrupted after {done} trials; everything finished "
            f"is saved. To continue, run: {command}"
        )


def stage_task_options(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, Any]:
    """Ray options of every stage task: the trial's CPUs, and its GPUs when asked for.

    Stage tasks of a GPU sweep also get `device="cuda"` (see SweepPlan); a stage on a node
    without CUDA falls back to CPU (stages.device.resolve_device).
    """
    options: dict[str, Any] = {"num_cpus": cpus_per_trial}
    if gpus_per_trial > 0:
        options["num_gpus"] = gpus_per_trial
    return options


def _scheduler(space: SearchSpace) -> Any:
    """ASHA early stopping on validation accuracy after each stage (a single-objective
    scalarisation: multi-objective Optuna ignores intermediate results)."""
    if space.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        metric="val_accuracy",
        mode="max",
        time_attr="training_iteration",
        max_t=len(space.pipeline) + 1,
        grace_period=min(2, len(space.pipeline)),
        reduction_factor=2,
    )


def _baseline_row(
    plan: SweepPlan, metrics_ref: Any, started: datetime, sweep_name: str
) -> dict[str, Any]:
    import ray

    from orchestrator.engine.pipeline import bounded, describe_error, write_error_log

    teacher_key = plan.requests({}, trial_id="baseline")[0].key
    result: dict[str, Any] = {"status": "ok", "stage_keys": [teacher_key], "effective_params": {}}
    try:
        result.update(ray.get(metrics_ref))
    except Exception as exc:
        result.update(
            status="error",
            error=bounded(f"baseline (the teacher, measured as given): {describe_error(exc)}"),
            error_log=write_error_log(plan.storage, plan.sweep_id, "baseline", exc),
        )
    return trial_row(
        sweep_id=plan.sweep_id,
        sweep_name=sweep_name,
        trial_id="baseline",
        task=plan.task,
        started_at=started,
        result=result,
        code_version=plan.code_version,
        feasible=None,
        is_baseline=True,
    )
