"""The shared-prefix stage cache: one long-lived actor owns every stage's object refs.

Trials ask the actor for a stage by key. The first asker starts the Ray task; everyone after
(even while it is still running) gets the same refs, so a shared prefix (teacher, KD settings)
is computed once. Refs created by the actor outlive the trial that asked first (a ref owned by
a finished trial would die with it). Every computed stage is also checkpointed under
`<storage>/cache/`, so a later or restarted sweep on the same storage loads it instead.

Refs travel inside lists (`get.remote(request, [parent_ref])`) so the actor never waits for, or
copies, a model: it only hands refs on.

A trial that runs out of time calls `release(trial_id)`: a stage no other trial is waiting for is
then cancelled, so a runaway stage does not hold its CPUs for the rest of the sweep.

Sweeps sharing a storage share stages: before computing a key the actor looks for its checkpoint
on disk (another sweep may have written it since) and takes an on-disk claim on it
(`claims.StageClaims`); a key claimed by another live sweep is waited for (its checkpoint
polled) instead of computed. The actor restarts when it dies (`CACHE_RESTARTS`; the method calls
in flight are retried on the new one): it keeps nothing but the disk, so the restarted actor
loads every finished stage from its checkpoint, and trials whose refs died with the old actor
walk their chain again (`pipeline.run_pipeline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import warnings
from datetime import datetime
from typing import Any

import ray

from orchestrator.engine.requests import (
    BASELINE_TRIAL,
    MeasureRequest,
    StageRequest,
    StoredCheckpoint,
)
from orchestrator.engine.stage_tasks import (
    CACHE_DIR,
    as_transfer,
    checkpoint_path,
    measure_clock_key,
    run_measure,
    run_stage,
)
from orchestrator.store.claims import HEARTBEAT_S, POLL_S, StageClaims
from orchestrator.store.storage import open_storage

log = logging.getLogger(__name__)


class _StageCache:
    """Owns stage refs for one sweep; writes the `stages` table rows of executed stages."""

    def __init__(
        self,
        storage: str,
        sweep_id: str,
        *,
        stage_options: dict[str, Any],
        measure_options: dict[str, Any],
        run_started: float | None = None,
    ) -> None:
        """`run_started`: when this sweep run began (time.time()); a restarted actor counts the
        stages its dead predecessor executed in this run from the `stages` rows since then."""
        self.storage = open_storage(storage, create=True)
        self.storage_uri = storage
        self.sweep_id = sweep_id
        self.stage_options = stage_options
        self.measure_options = measure_options
        self.refs: dict[str, tuple[ray.ObjectRef, ray.ObjectRef]] = {}
        self.measures: dict[str, ray.ObjectRef] = {}
        self.executed: list[str] = []  # keys this actor ran (not loaded), in order
        self.loaded: list[str] = []  # keys loaded from disk checkpoints
        self.corrupt: list[str] = []  # keys whose checkpoint failed its checksum
        self.cancelled: list[str] = []  # keys cancelled after every waiting trial timed out
        self.waiting: dict[str, set[str]] = {}  # running stage key -> trial ids waiting on it
        self.stage_names: dict[str, str] = {}  # stage key this actor started -> its stage name
        self.measuring: dict[str, ray.ObjectRef] = {}  # measured pipeline key -> metrics ref
        # key -> wall time (time.time()) its task left the queue and started running
        self.started_at: dict[str, float] = {}
        self.progress_text: dict[str, str] = {}  # running stage key -> "epoch 1/3, batch 9/40"
        self.rows: list[dict[str, Any]] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self.claims = StageClaims(self.storage)
        self.waited: list[str] = []  # keys another sweep was computing: waited for, then loaded
        self.pending: dict[str, asyncio.Future[None]] = {}  # key -> its lookup under way
        self._heartbeat: asyncio.Task[None] | None = None
        # A restarted actor (it died and Ray started it again) knows only what is on disk.
        self.restarted = _restarted()
        if self.restarted:
            log.warning("stage cache of sweep %s restarted; stages load from disk", sweep_id)
            self.executed = _executed_since(storage, sweep_id, run_started)

    async def get(
        self,
        request: StageRequest,
        parent: list[ray.ObjectRef],
        teacher: list[ray.ObjectRef],
    ) -> list[ray.ObjectRef]:
        """[checkpoint_ref, info_ref] for a stage: from memory, from disk, or computed (after
        waiting for another sweep that claimed it, when one did)."""
        key = request.key
        while key not in self.refs:
            await self._resolve(request, parent, teacher)
        if key in self.waiting:
            self.waiting[key].add(request.trial_id)
        return list(self.refs[key])

    async def _resolve(
        self, request: StageRequest, parent: list[ray.ObjectRef], teacher: list[ray.ObjectRef]
    ) -> None:
        """Fill `refs[key]`: loaded from disk, or the stage started. One lookup per key at a
        time; the trials asking meanwhile wait for it."""
        key = request.key
        under_way = self.pending.get(key)
        if under_way is not None:
            await asyncio.shield(under_way)
            return
        done = asyncio.get_running_loop().create_future()
        self.pending[key] = done
        try:
            loaded = await self._load_or_claim(key)
            if loaded is not None:
                self.refs[key] = loaded
            else:
                self._start(request, parent, teacher)
        finally:
            del self.pending[key]
            done.set_result(None)

    async def _load_or_claim(self, key: str) -> tuple[ray.ObjectRef, ray.ObjectRef] | None:
        """The key's checkpoint refs from disk, or None once this actor holds its claim (it
        computes it). While another live sweep holds the claim, poll for its checkpoint."""
        waited = False
        while True:
            loaded = self._load_from_disk(key)
            if loaded is None and self.claims.acquire(key):
                # Look again: the claimant may have written it and let go since our look.
                loaded = self._load_from_disk(key)
                if loaded is None:
                    self._start_heartbeat()
                    return None
                self.claims.release(key)
            if loaded is not None:
                self.loaded.append(key)
                if waited:
                    self.waited.append(key)
                return loaded
            waited = True
            await asyncio.sleep(POLL_S)

    def _start(
        self, request: StageRequest, parent: list[ray.ObjectRef], teacher: list[ray.ObjectRef]
    ) -> None:
        """Start the stage's task (this actor owns its refs) and the watcher that records it."""
        ckpt_ref, info_ref = run_stage.options(**self.stage_options).remote(
            request,
            parent[0] if parent else None,
            teacher[0] if teacher else None,
        )
        key = request.key
        self.refs[key] = (ckpt_ref, info_ref)
        self.executed.append(key)
        self.stage_names[key] = request.stage
        self.waiting[key] = set()
        watcher = asyncio.get_running_loop().create_task(self._record(request, info_ref))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        """Keep this actor's claims fresh while it holds any."""
        while self.claims.held:
            self.claims.refresh()
            await asyncio.sleep(HEARTBEAT_S)

    async def measure(
        self, request: MeasureRequest, checkpoint: list[ray.ObjectRef]
    ) -> list[ray.ObjectRef]:
        """[metrics_ref] for a final checkpoint; identical pipelines are measured once."""
        memo = json.dumps(
            [
                request.key,
                request.warmup,
                request.repeats,
                request.time_cap_s,
                request.precision,
                request.batch_size,
                request.threads,
            ]
        )
        if memo not in self.measures:
            self.measures[memo] = run_measure.options(**self.measure_options).remote(
                request, checkpoint[0]
            )
            self.measuring[request.key] = self.measures[memo]
        return [self.measures[memo]]

    async def _record(self, request: StageRequest, info_ref: ray.ObjectRef) -> None:
        """When a stage finishes, add its row to the `stages` table; forget failed stages."""
        try:
            info = await info_ref
        except Exception:
            # A failed stage is retried by the next trial that needs it, not served from cache
            # (unless a retry under the same key has already replaced these refs).
            if self._current(request.key, info_ref):
                self.refs.pop(request.key, None)
                self.waiting.pop(request.key, None)
                self.progress_text.pop(request.key, None)
                self.started_at.pop(request.key, None)
                self.claims.release(request.key)
            return
        if self._current(request.key, info_ref):
            self.waiting.pop(request.key, None)
            self.progress_text.pop(request.key, None)
            self.claims.release(request.key)  # its checkpoint is written: others load it
        row = {
            "stage_key": request.key,
            "stage": request.stage,
            "params": json.dumps(request.params, sort_keys=True),
            "parent_key": request.parent_key,
            "sweep_id": self.sweep_id,
            "trial_id": request.trial_id,
            "wall_s": float(info["wall_s"]),
            "cpu_s": float(info["cpu_s"]),
            "finished_at": datetime.fromisoformat(info["finished_at"]),
        }
        self.rows.append(row)
        self._flush([row])

    def _current(self, key: str, info_ref: ray.ObjectRef) -> bool:
        refs = self.refs.get(key)
        return refs is not None and refs[1] == info_ref

    def _flush(self, rows: list[dict[str, Any]]) -> None:
        """Write stage rows. On a full or read-only storage they are left out with a warning
        (they describe stages, not results); the trials' own writes stop the sweep."""
        from orchestrator.store.faults import StorageFault
        from orchestrator.store.results import append_stage_rows

        try:
            append_stage_rows(self.storage_uri, rows)
        except StorageFault as fault:
            log.warning("%d stage row(s) not written: %s", len(rows), fault)

    def _load_from_disk(self, key: str) -> tuple[ray.ObjectRef, ray.ObjectRef] | None:
        data_name, manifest_name = checkpoint_path(key)
        if not self.storage.exists(CACHE_DIR, manifest_name):
            return None
        try:
            info = json.loads(self.storage.read_bytes(CACHE_DIR, manifest_name))
            data, digest = self._read_checkpoint(data_name)
        except (OSError, ValueError) as exc:
            log.warning("stage checkpoint %s unreadable (%s); recomputing", key, exc)
            self.corrupt.append(key)
            return None
        if digest != info.get("sha256"):
            log.warning("stage checkpoint %s fails its checksum; recomputing", key)
            self.corrupt.append(key)
            self.storage.delete(CACHE_DIR, manifest_name)
            return None
        info = {**info, "cached": True}
        return ray.put(data), ray.put(info)

    def _read_checkpoint(self, data_name: str) -> tuple[Any, str]:
        """(the checkpoint as tasks take it, its sha256): on a local storage its file
        (`StoredCheckpoint`, hashed in chunks: this actor never holds the model), else its
        bytes as a numpy array that readers map from the object store instead of copying."""
        if not self.storage.is_local:
            data = self.storage.read_bytes(CACHE_DIR, data_name)
            return as_transfer(data), hashlib.sha256(data).hexdigest()
        path = self.storage.path(CACHE_DIR, data_name)
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            size = os.fstat(f.fileno()).st_size
        stored = StoredCheckpoint(path=path, nbytes=size, sha256=digest)
        return stored, digest

    async def checkpoints(self, keys: list[str]) -> list[ray.ObjectRef | None]:
        """The checkpoint refs of `keys` (from memory or from their disk checkpoints); None
        for a key this sweep has neither of (its checkpoint was deleted)."""
        out: list[ray.ObjectRef | None] = []
        for key in keys:
            refs = self.refs.get(key) or self._load_from_disk(key)
            if refs is not None:
                self.refs.setdefault(key, refs)
            out.append(refs[0] if refs is not None else None)
        return out

    async def started(self, key: str, at: float) -> None:
        """A stage or measure task started running (called by the task itself)."""
        self.started_at.setdefault(key, at)

    async def progress(self, key: str, text: str) -> None:
        """Where a running stage is (called by its task: `stages.progress`)."""
        if key in self.waiting:
            self.progress_text[key] = text

    async def running_since(self, key: str) -> float | None:
        """When the task of `key` started running (wall time), or None while it is queued."""
        return self.started_at.get(key)

    async def running(self) -> dict[str, Any]:
        """What runs now, for progress displays: `stages`, the stage names of the tasks that
        left the queue and have not finished (a stage shared by trials once; measurements as
        `measure`), sorted; `trials`, beside each, how many trials wait on that one task (a
        shared teacher: 3; the baseline, waiting on the teacher too, is not a trial);
        `progress`, beside each, where the stage is ("epoch 1/3, batch 9/40", "" before it
        says); `queued`, the stage tasks started but still waiting for CPUs. Cheap: no task
        is waited for."""
        running = [
            (
                self.stage_names.get(k, "?"),
                max(1, len(trials - {BASELINE_TRIAL})),
                self.progress_text.get(k, ""),
            )
            for k, trials in self.waiting.items()
            if k in self.started_at
        ]
        queued = sum(k not in self.started_at for k in self.waiting)
        started = self.started_at
        measures = {k: r for k, r in self.measuring.items() if measure_clock_key(k) in started}
        if measures:
            done, _ = ray.wait(list(measures.values()), num_returns=len(measures), timeout=0)
            finished = set(done)
            for key, ref in measures.items():
                if ref in finished:
                    del self.measuring[key]
                else:
                    running.append(("measure", 1, ""))
        running.sort()
        return {
            "stages": [name for name, _, _ in running],
            "trials": [n for _, n, _ in running],
            "progress": [text for _, _, text in running],
            "queued": queued,
        }

    async def release(self, trial_id: str) -> list[str]:
        """A trial gave up (its time limit): cancel the running stages only it was waiting for.

        Returns the cancelled keys. A cancelled stage is forgotten, so a later trial that needs
        it starts it again (and runs into its own time limit if it hangs again).
        """
        cancelled = []
        for key, trials in list(self.waiting.items()):
            trials.discard(trial_id)
            if trials:
                continue
            del self.waiting[key]
            self.progress_text.pop(key, None)
            refs = self.refs.get(key)
            if refs is None or ray.wait([refs[1]], timeout=0)[0]:
                continue  # finished meanwhile: keep it, its watcher records it
            del self.refs[key]
            self.started_at.pop(key, None)
            self.claims.release(key)
            # force=True kills the worker: a stage stuck in native code never checks for a
            # cancellation. A cancelled task is not retried.
            ray.cancel(refs[0], force=True)
            cancelled.append(key)
        self.cancelled.extend(cancelled)
        return cancelled

    async def stats(self, wait: bool = True) -> dict[str, Any]:
        """Counts for the sweep summary and tests; `wait` first lets running stages finish
        recording (an interrupted sweep does not wait)."""
        if self._watchers and wait:
            await asyncio.gather(*self._watchers, return_exceptions=True)
        return {
            "executed": list(self.executed),
            "loaded": list(self.loaded),
            "corrupt": list(self.corrupt),
            "cancelled": list(self.cancelled),
            "waited": list(self.waited),
            "rows": len(self.rows),
            "restarted": self.restarted,
        }

    async def close(self) -> None:
        """Let go of every claim this actor holds (the sweep ends; its stages are recorded or
        abandoned), so another sweep waiting on one computes it at once."""
        self.claims.release_all()


CACHE_RESTARTS = 5
"""How often Ray restarts a dead cache actor (and retries the method calls in flight), per
sweep run. A restarted actor loads finished stages from their checkpoints."""

# The actor: no CPU of its own (it only hands refs on); concurrent calls so one trial waiting on
# a stage never blocks another trial's lookup.
_ray: Any = ray
StageCache: Any = _ray.remote(
    num_cpus=0,
    max_concurrency=1000,
    max_restarts=CACHE_RESTARTS,
    max_task_retries=CACHE_RESTARTS,
)(_StageCache)


def _executed_since(storage: str, sweep_id: str, since: float | None) -> list[str]:
    """The stage keys sweep `sweep_id` executed (its `stages` rows) since `since` (time.time()),
    in order: what a restarted actor's predecessor ran in this run."""
    from orchestrator.store.results import load_stages

    if since is None:
        return []
    try:
        rows = load_stages(storage, sweep=sweep_id).to_pylist()
    except Exception:  # nothing written yet, or unreadable: count from here
        return []
    recent = [r for r in rows if r["finished_at"] and r["finished_at"].timestamp() >= since]
    return [r["stage_key"] for r in sorted(recent, key=lambda r: r["finished_at"])]


def _restarted() -> bool:
    """Whether this actor was restarted by Ray after it died (False outside an actor)."""
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:  # not in an actor (a test building the cache directly)
        return False
    with warnings.catch_warnings():
        # The property is public and current; it reads Ray's own deprecated `actor_id` inside.
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(context.was_current_actor_reconstructed)


def cache_stats(cache: Any, *, wait: bool) -> dict[str, Any]:
    """The cache actor's `stats`, from the driver. An actor gone for good (its restarts used
    up, its node lost) answers with empty counts and `gone: True`: the sweep still ends with
    its summary (its trials are `lost` rows), never with a raw Ray error."""
    try:
        return dict(ray.get(cache.stats.remote(wait=wait)))
    except ray.exceptions.RayError as exc:
        log.warning("the stage cache actor is gone (%s); its counts are lost", type(exc).__name__)
        empty: dict[str, Any] = {
            name: [] for name in ("executed", "loaded", "corrupt", "cancelled", "waited")
        }
        return {**empty, "rows": 0, "restarted": True, "gone": True}


def running_stages(cache: Any) -> dict[str, Any]:
    """The cache actor's `running` (stages running now, stage tasks queued), from the driver,
    waiting at most 2 s; empty once the actor is gone (the sweep is ending)."""
    try:
        return dict(ray.get(cache.running.remote(), timeout=2))
    except Exception:  # gone, restarting or slow: a progress display shows nothing
        return {"stages": [], "trials": [], "progress": [], "queued": 0}


def stop_cache(cache: Any) -> None:
    """Free the cache actor's claims, then end it (best effort: it may be gone already)."""
    with contextlib.suppress(ray.exceptions.RayError):
        ray.get(cache.close.remote(), timeout=30)
    with contextlib.suppress(Exception):
        ray.kill(cache)
