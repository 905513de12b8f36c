"""The Ray tasks that run stages and measure models.

This module is imported by Tune trial coordinators (to get the remote handles), so it must not
import torch at module level; the task bodies import `stages` inside the worker.

Checkpoints travel between tasks as their cache files when the storage is a local path
(`StoredCheckpoint`: path, size, sha256): the reader maps the file's tensors
(`ModelCheckpoint.from_file`), so no copy goes through Ray's object store and the loaded
weights cost no memory beside it. On other storage (a URI) they travel as read-only uint8
numpy arrays (`as_transfer`): Ray stores a numpy array's buffer out of band in its object store
once and hands it to the next task as a zero-copy view, where `bytes` would be copied into
every reader's heap. A stage serialises its output once: on a local storage straight into its
cache file's temp, hashed as it is written, which the self-check reads back before it is renamed
into place (`StagedFile`); elsewhere into one buffer (`ModelCheckpoint.to_buffer`) that is
hashed, written and returned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import ray

from orchestrator.engine.requests import MeasureRequest, StageRequest, StoredCheckpoint
from orchestrator.store.storage import CACHE_DIR


def checkpoint_path(key: str) -> tuple[str, str]:
    """(data, manifest) file names of a stage checkpoint under the storage root."""
    return f"{key}.ckpt", f"{key}.json"


_imports_frozen = False  # this worker's import-time objects moved out of collections


def _prepare_worker(sys_path: tuple[str, ...], threads: int) -> None:
    global _imports_frozen
    import torch

    if not _imports_frozen:
        # The ~200k objects torch, Ray and the stages import live as long as the worker: out of
        # every collection from the first task on (`release_memory` freezes what later tasks
        # leave), not rescanned by this task's own (0.1 CPU s each, once per worker).
        import gc

        gc.freeze()
        _imports_frozen = True
    # Memory an earlier task on this reused worker freed was handed back by its release_memory.
    for entry in sys_path:
        if entry not in sys.path:
            sys.path.insert(0, entry)
    # Reused workers keep the last value: set it every time (DESIGN.md).
    torch.set_num_threads(max(1, threads))


def _cache_file(storage: str, key: str | None) -> str:
    """Where a stage's checkpoint lives (a local path, or the URI with its query kept)."""
    from orchestrator.store.storage import join_uri

    if not key:
        return "the input checkpoint"
    if "://" not in storage or storage.startswith("file://"):
        return os.path.join(storage.removeprefix("file://"), CACHE_DIR, checkpoint_path(key)[0])
    return join_uri(storage, CACHE_DIR, checkpoint_path(key)[0])


def as_transfer(data: Any) -> Any:
    """A checkpoint's bytes as a read-only uint8 numpy array over the same memory (no copy),
    the form Ray's object store passes to readers without copying."""
    import numpy as np

    array = np.frombuffer(data, dtype=np.uint8)
    array.flags.writeable = False
    return array


def _load_input(data: Any, what: str) -> Any:
    """An input checkpoint, loaded `weights_only` (never unpickles code); a bad one is a
    SqueezerayError that names the file, what was refused, and the fix (delete it: it is
    recomputed). torch's advice to load unsafely is never repeated."""
    from stages.checkpoint import ModelCheckpoint, refusal_reason
    from stages.errors import SqueezerayError

    if data is None:
        return None
    path = _stored_file(data) if isinstance(data, StoredCheckpoint) else None
    try:
        return ModelCheckpoint.from_file(path) if path else ModelCheckpoint.from_bytes(data)
    except SqueezerayError as exc:
        cause = exc.__cause__
        reason = refusal_reason(cause) if cause is not None else str(exc)
        manifest = what.removesuffix(".ckpt") + ".json" if what.endswith(".ckpt") else ""
        beside = f" and its manifest {manifest}" if manifest else ""
        raise SqueezerayError(
            f"{what} is not a loadable squeezeray checkpoint and was not unpickled: {reason}. "
            f"Delete it{beside}; it will be recomputed"
        ) from exc


def _stored_file(stored: StoredCheckpoint) -> str:
    """The path of a StoredCheckpoint, once it is there with the size it was written with."""
    from stages.errors import SqueezerayError

    try:
        size = os.path.getsize(stored.path)
    except OSError:
        size = None
    if size != stored.nbytes:
        found = "is missing" if size is None else f"has {size} bytes, not {stored.nbytes}"
        raise SqueezerayError(
            f"the checkpoint file {stored.path} {found} on this node "
            f"({socket.gethostname()}); a sweep on several nodes needs a storage every node "
            "reads and writes (a shared filesystem path or an object-store URI), and a cache "
            "file must not be deleted while a sweep runs"
        )
    return stored.path


def _stage_input(
    request: StageRequest, task: Any, parent: Any, teacher: Any, *, reads_teacher: bool
) -> Any:
    """The StageInput of a stage task, its checkpoints loaded; distill's parent is the teacher,
    and then one loaded copy serves both (stages never mutate an input checkpoint: build_model
    copies its tensors into a fresh module). The teacher is loaded only for a stage that
    `reads_teacher`: prune, quantize or export would hold a whole teacher for nothing."""
    from stages.base import StageInput

    parent_ckpt = _load_input(parent, _cache_file(request.storage, request.parent_key))
    same = request.teacher_key is not None and request.teacher_key == request.parent_key
    if same and parent_ckpt is not None:
        teacher_ckpt = parent_ckpt
    elif reads_teacher:
        teacher_ckpt = _load_input(teacher, _cache_file(request.storage, request.teacher_key))
    else:
        teacher_ckpt = None
    return StageInput(
        task=task,
        parent=parent_ckpt,
        teacher=teacher_ckpt,
        device=request.device,
        seed=request.seed,
    )


def reads_teacher(spec: Any, params: Any) -> bool:
    """Whether a stage with these params reads the teacher checkpoint (its spec says so)."""
    return bool(spec.teacher_as_parent or (spec.needs_teacher and spec.needs_teacher(params)))


def execute_stage(request: StageRequest, parent: Any, teacher: Any) -> tuple[Any, dict[str, Any]]:
    """Run one stage; write its checkpoint under the storage; return (the checkpoint as the
    next task takes it: a StoredCheckpoint of its file on a local storage, else
    its bytes as a uint8 numpy array; info). `parent`/`teacher`: a StoredCheckpoint, checkpoint
    bytes (any bytes-like object) or None; the same checkpoint given as both is loaded once.

    info: key, stage, params, parent_key, metrics, wall_s and cpu_s (the whole task), run_s and
    run_cpu_s (the stage function alone; the rest is loading, the checkpoint round trip and
    writing), sha256 and nbytes of the checkpoint, finished_at, cached."""
    from orchestrator.store.storage import open_storage
    from stages import get_stage
    from stages.runner import run_stage
    from stages.tasks import load_task

    wall0, cpu0 = time.perf_counter(), time.process_time()  # the whole task, preparation included
    _prepare_worker(request.sys_path, request.threads)
    # The driver checked the task's models pre-flight: not built and run again here. Teacher
    # and distill verify their copy by the driver's fingerprint; later stages read none.
    task = load_task(request.task, check_models=False)
    if request.fingerprint:
        check_same_task(request)
    spec = get_stage(request.stage)
    params = spec.make_params(request.params)
    # The stage contract (parent, teacher, device, metrics) and the checkpoint round trip
    # (its bytes rebuild into the model it computed): a SqueezerayError here is this
    # stage's error row, and nothing is cached. The loaded inputs are not kept here: run_stage
    # holds the only reference, and frees them before the self-check.
    timing: dict[str, float] = {}
    storage = open_storage(request.storage)
    # On a local storage the checkpoint is serialised straight into its cache file's temp
    # (hashed as written) and the self-check reads that file back: no in-memory copy of the
    # bytes, and what is checked is what is on disk.
    data_name = checkpoint_path(request.key)[0]
    staged = StagedFile(storage.path(CACHE_DIR, data_name)) if storage.is_local else None
    with staged.kept_on_success() if staged else contextlib.nullcontext():
        out, data = run_stage(
            spec,
            _stage_input(request, task, parent, teacher, reads_teacher=reads_teacher(spec, params)),
            params,
            timing=timing,
            into=staged,
        )
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    sha256, nbytes = (staged.sha256, staged.nbytes) if staged else _digest(data)
    info: dict[str, Any] = {
        "key": request.key,
        "stage": request.stage,
        "params": request.params,
        "parent_key": request.parent_key,
        "metrics": {k: float(v) for k, v in out.metrics.items()},
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "run_s": timing.get("run_s"),
        "run_cpu_s": timing.get("run_cpu_s"),
        "sha256": sha256,
        "nbytes": nbytes,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "cached": False,
    }
    return _write_checkpoint(storage, staged, data, info), info


def _write_checkpoint(storage: Any, staged: StagedFile | None, data: Any, info: dict) -> Any:
    """Put a checked checkpoint in place (the staged file renamed, or `data` written), then
    its manifest `info`; return what the next task takes: a StoredCheckpoint of the file on a
    local storage, else the bytes as a uint8 numpy array (`as_transfer`)."""
    data_name, manifest_name = checkpoint_path(info["key"])
    # Data first, manifest second: a checkpoint without a manifest is never trusted.
    if staged:
        location = staged.publish()
        handoff: Any = StoredCheckpoint(path=location, nbytes=info["nbytes"], sha256=info["sha256"])
    else:
        assert data is not None  # run_stage returns the bytes when it wrote no file
        storage.write_atomic(data, CACHE_DIR, data_name)
        handoff = as_transfer(data)
    storage.write_atomic(json.dumps(info).encode(), CACHE_DIR, manifest_name)
    return handoff


def _digest(data: Any) -> tuple[str, int]:
    """(sha256 hex, size) of checkpoint bytes."""
    return hashlib.sha256(data).hexdigest(), len(data)


class _HashingWriter:
    """A binary file that hashes and counts what is written to it, and keeps the OSError a
    write raised (torch.save reports it as its own RuntimeError)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.nbytes = 0
        self.error: OSError | None = None

    def write(self, chunk: Any) -> int:
        try:
            written = self.file.write(chunk)
        except OSError as exc:
            self.error = exc
            raise
        view = memoryview(chunk)
        self.hash.update(view)
        self.nbytes += view.nbytes
        return int(written)

    def flush(self) -> None:
        self.file.flush()


class StagedFile:
    """A stage checkpoint's cache file on a local storage, written under a hidden temp name
    beside it (`.<name>.<pid>.<random>.tmp`: readers and the cache skip dot names), hashed as it is
    written, and renamed into place by `publish` once the self-check has read it back.
    `stages.selfcheck.CheckpointFile`."""

    def __init__(self, target: str) -> None:
        self.target = target
        folder, name = os.path.split(target)
        from orchestrator.store.faults import temp_tag

        self.tmp = os.path.join(folder, f".{name}.{temp_tag()}.tmp")
        self.sha256 = ""
        self.nbytes = 0

    def write(self, ckpt: Any) -> str:
        from orchestrator.store.faults import as_storage_fault

        os.makedirs(os.path.dirname(self.tmp), exist_ok=True)
        writer: _HashingWriter | None = None
        try:
            with open(self.tmp, "wb") as f:
                writer = _HashingWriter(f)
                ckpt.save(writer)
        except BaseException as exc:
            cause = writer.error if writer and writer.error else exc
            fault = as_storage_fault(cause, self.target)
            if fault is not None:  # a full or read-only storage, not the stage's fault
                raise fault from cause
            raise
        self.sha256, self.nbytes = writer.hash.hexdigest(), writer.nbytes
        return self.tmp

    @contextlib.contextmanager
    def kept_on_success(self) -> Iterator[None]:
        """Remove the temp file when the block raises (the stage failed: nothing is cached)."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(self.tmp)
            raise

    def publish(self) -> str:
        """Rename the checked temp file into place; return the cache file's path."""
        from orchestrator.store.faults import storage_writes

        with storage_writes(self.target):
            os.replace(self.tmp, self.target)
        return self.target


@functools.lru_cache(maxsize=24)
def _worker_fingerprint(task_name: str, seed: int, part: str) -> str:
    """One fingerprint part of this worker's copy of the task, computed once per process and
    only where a stage checks it (distill checks the student and the data: no teacher build)."""
    from stages.fingerprint import fingerprint_part
    from stages.tasks import load_task

    return fingerprint_part(load_task(task_name, check_models=False), part, seed=seed)


def check_same_task(request: StageRequest) -> None:
    """The task this worker loaded must be the one the driver fingerprinted (stage keys name
    the driver's): a node with other code or data, or a task factory whose models or data
    are not reproducible, would otherwise store a different model under the same key."""
    from stages.errors import SqueezerayError

    differ = [
        name
        for name, value in request.fingerprint.items()
        if _worker_fingerprint(request.task, request.seed, name) != value
    ]
    if differ:
        raise SqueezerayError(
            f"task {request.task!r}: its {' and '.join(differ)} on this worker "
            f"({socket.gethostname()}) differ from the driver's; give every node the same "
            "code and data (the same version of your task module and its files), and make the "
            "task's factories reproducible: models initialised from torch's seeded generator "
            "(or given weights), datasets built the same way in every process"
        )


def idlest_cpu(allowed: set[int], *, window_s: float = 0.05) -> int:
    """The CPU of `allowed` with the most idle time over the next `window_s` (from
    /proc/stat; ties: the highest-numbered), or the highest-numbered where /proc/stat is not
    readable."""
    first = _idle_jiffies()
    time.sleep(window_s)
    second = _idle_jiffies()
    if not first or not second:
        return max(allowed)
    return max(allowed, key=lambda cpu: (second.get(cpu, 0) - first.get(cpu, 0), cpu))


def _idle_jiffies() -> dict[int, int]:
    """{cpu: idle + iowait jiffies} from /proc/stat; empty where it is not readable."""
    out: dict[int, int] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    out[int(name[3:])] = int(fields[3]) + int(fields[4])
    except (OSError, ValueError, IndexError):
        return {}
    return out


@contextlib.contextmanager
def pinned_to_one_cpu() -> Iterator[None]:
    """Pin this worker to one CPU while it measures latency, then restore its affinity.

    Migrations between cores add to the spread of single-thread timings; the node-exclusive
    latency slot already keeps two measurements from overlapping. The CPU is the idlest one
    this worker may use at the start (`idlest_cpu`), not always the same one: stage tasks of
    the sweep run beside a measurement on the node, and a fixed core would time the model
    against whatever stage the OS put there. No-op where the OS has no affinity API.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {idlest_cpu(before)})
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def execute_measure(request: MeasureRequest, checkpoint: Any) -> dict[str, Any]:
    """Accuracy (test split, reported) and val_accuracy (validation split, selects), size,
    parameter counts and single-thread latency of a model."""
    from stages.metrics import evaluate
    from stages.tasks import load_task

    _prepare_worker(request.sys_path, request.threads)
    task = load_task(request.task, check_models=False)  # the driver checked its models
    where = _cache_file(request.storage, request.key) if request.storage else request.key
    ckpt = _load_input(checkpoint, where)
    with pinned_to_one_cpu():
        m = evaluate(
            task,
            ckpt,
            warmup=request.warmup,
            repeats=request.repeats,
            batch_size=request.batch_size,
            threads=request.threads,
            time_cap_s=request.time_cap_s,
            precision=request.precision,
        )
    return {
        "test_accuracy": m.accuracy,
        "val_accuracy": m.val_accuracy,
        "size_bytes": m.size_bytes,
        "params_total": m.params_total,
        "params_nonzero": m.params_nonzero,
        "quantized_fraction": m.quantized_fraction,
        "latency_ms_sweep": m.latency_ms,
        "latency_ms_sweep_p90": m.latency_ms_p90,
        "latency_repeats_sweep": m.latency_repeats,
        "latency_ci_sweep": m.latency_ci,
        "runtime": m.runtime,
        "eval_batch_size": task.eval_batch_size,
        "compile_s": m.compile_s,
        # the task's own metric: flat keys for the search and constraints, names for the row
        **m.custom,
        "custom_metric_names": sorted(m.custom),
    }


def execute_remeasure(
    request: MeasureRequest, rounds: int, calls: tuple[int | None, ...], *checkpoints: Any
) -> list[dict]:
    """The final latency phase: `checkpoints[0]` (the baseline) and every other checkpoint
    timed in `rounds` interleaved rounds on one pinned CPU (`stages.latency.
    interleaved_latency`), each about as many timed calls as `calls` gives it (its in-sweep
    measurement's; None: as many as fit the time cap); one dict per checkpoint with
    latency_ms_final (median of the round medians), latency_ms_final_p90, latency_cv, speedup
    (paired per round, vs the baseline), latency_rounds and latency_repeats_final (the timed
    calls of all rounds)."""
    from stages.latency import interleaved_latency
    from stages.tasks import load_task

    _prepare_worker(request.sys_path, request.threads)
    task = load_task(request.task, check_models=False)  # the driver checked its models
    ckpts = [_load_input(c, f"a checkpoint of sweep model {i}") for i, c in enumerate(checkpoints)]
    with pinned_to_one_cpu():
        results = interleaved_latency(
            task,
            ckpts,
            rounds=rounds,
            warmup=request.warmup,
            repeats=request.repeats,
            batch_size=request.batch_size,
            threads=request.threads,
            time_cap_s=request.time_cap_s,
            calls=calls,
        )
    return [
        {
            "latency_ms_final": r.median_ms,
            "latency_ms_final_p90": r.p90_ms,
            "latency_cv": r.cv,
            "speedup": r.speedup,
            "latency_rounds": r.rounds,
            "latency_repeats_final": r.repeats,
            "round_medians_ms": list(r.round_medians_ms),
        }
        for r in results
    ]


def cache_actor_name(sweep_id: str) -> str:
    return f"squeezeray-cache-{sweep_id}"


def measure_clock_key(key: str) -> str:
    """The key under which a measurement's start is recorded (beside stage keys)."""
    return f"measure:{key}"


def _cache_actor(sweep_id: str) -> Any:
    """The sweep's cache actor, looked up once per task; None without one (best effort)."""
    if not sweep_id:
        return None
    try:
        return ray.get_actor(cache_actor_name(sweep_id))
    except Exception:
        return None


def _announce_start(actor: Any, key: str) -> None:
    """Tell the sweep's cache actor that this task has left the queue and is running, so a
    trial's time limit counts running time only (best effort: no actor, no clock)."""
    if actor is None:
        return
    with contextlib.suppress(Exception):
        actor.started.remote(key, time.time())


def release_memory(*, freeze: bool = True) -> None:
    """Hand the memory a finished task freed back to the OS (Linux glibc: `malloc_trim`).

    Ray reuses a worker for the next task, and glibc keeps freed heap pages: at 50M parameters
    a worker that had run stage tasks measured the next model at 5.4 GB resident. No-op where
    there is no glibc.

    The full collection first frees a task's models held in reference cycles. What survives it
    after a task that returned is the worker's long-lived state (imported modules, task
    caches): `freeze` moves it out of later collections (`gc.freeze`), which otherwise rescan
    the ~230k objects torch and Ray import on every call (0.1-0.3 CPU s each, once per task:
    the largest fixed cost of a task at 10M parameters). A frozen object is still freed when
    its last reference goes; only a cycle among frozen objects stays, so a task that raised
    does not freeze (its traceback's frames hold its models in a cycle)."""
    import gc

    from stages.heap import trim

    gc.collect()
    if freeze:
        gc.freeze()
    trim()


@contextlib.contextmanager
def _released() -> Iterator[None]:
    """Run a task body, then `release_memory` (its models are garbage once it has returned)."""
    try:
        yield
    except BaseException:
        release_memory(freeze=False)
        raise
    release_memory()


def _reported_to(actor: Any, key: str) -> contextlib.AbstractContextManager[None]:
    """The stage's progress ("epoch 1/3, batch 40/400", `stages.progress`) sent to the sweep's
    cache actor for its display, fire and forget (best effort: no actor, no progress)."""
    from stages.progress import reporting

    if actor is None:
        return contextlib.nullcontext()
    return reporting(functools.partial(_report_progress, actor, key))


def _report_progress(actor: Any, key: str, text: str) -> None:
    with contextlib.suppress(Exception):  # a progress line is never worth failing a stage
        actor.progress.remote(key, text)


def _stage_task(request: StageRequest, parent: Any, teacher: Any) -> tuple[Any, dict[str, Any]]:
    actor = _cache_actor(request.sweep_id)
    _announce_start(actor, request.key)
    with _released(), _reported_to(actor, request.key):
        return execute_stage(request, parent, teacher)


def _measure_task(request: MeasureRequest, checkpoint: Any) -> dict[str, Any]:
    _announce_start(_cache_actor(request.sweep_id), measure_clock_key(request.key))
    with _released():
        return execute_measure(request, checkpoint)


def _remeasure_task(
    request: MeasureRequest, rounds: int, calls: tuple[int | None, ...], *checkpoints: Any
) -> list[dict]:
    with _released():
        return execute_remeasure(request, rounds, calls, *checkpoints)


# Deterministic stages are safe to retry when a worker dies (max_retries); an exception raised
# by the stage itself is not retried (retry_exceptions=False): it would fail again.
run_stage: Any = ray.remote(num_returns=2, max_retries=3)(_stage_task)
run_measure: Any = ray.remote(max_retries=3)(_measure_task)
run_remeasure: Any = ray.remote(max_retries=1)(_remeasure_task)
