"""Stage-cache garbage collection: `squeezeray gc --storage STORAGE`.

Every executed stage leaves a checkpoint under `<storage>/cache/` (`<key>.ckpt` + its
`<key>.json` manifest). Nothing else ever deletes them, so a year of nightly sweeps keeps every
model it ever trained. `collect` removes the checkpoints that no *kept* sweep references:

- the sweeps of a storage are its results and stage partitions, ordered by start time;
- kept: all of them by default; with `keep_last=N` the N newest, with `older_than_s` those
  started within that many seconds; with both, a sweep either rule keeps is kept
  (as `restic forget --keep-last N --keep-within D`);
- referenced: every `stage_keys` entry of a kept sweep's results rows (each trial's chain, the
  baseline's teacher) and every `stage_key` of its stage rows.

It also removes stage claims left behind by sweeps that died (`<storage>/cache/.claims/`,
`claims.remove_stale_claims`: the claimant's process gone, or silent beyond the claims' stale
bound); a live claim is never touched.

So every stage of a kept sweep stays loadable, and repeating or resuming it hits the cache. The
results and stage tables are never touched (rows of dropped sweeps stay queryable; only their
models go). The collection holds the storage lock (as a nightly run does) and the in-use lock
alone (`lock.exclusive_use`): while any sweep runs it refuses, since a running sweep may load
any checkpoint. On object stores both locks are host-local (see `orchestrator.store.lock`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.store.results import (
    RESULTS_DIR,
    STAGES_DIR,
    PartitionedTable,
    resolve_storage,
    sweep_starts,
)
from orchestrator.store.schema import RESULTS_SCHEMA, STAGES_SCHEMA
from orchestrator.store.storage import CACHE_DIR
from stages.errors import SqueezerayError

CHECKPOINT_SUFFIXES = (".ckpt", ".json")


@dataclass(frozen=True)
class CacheEntry:
    """One cached stage: its key, its files (data + manifest) and their total size."""

    key: str
    paths: tuple[str, ...]
    bytes: int
    modified: datetime | None


@dataclass(frozen=True)
class GcPlan:
    """What a collection removes (or, with dry_run, would remove)."""

    storage: str
    kept_sweeps: tuple[str, ...]
    dropped_sweeps: tuple[str, ...]
    remove: tuple[CacheEntry, ...]
    kept_entries: int
    kept_bytes: int
    dry_run: bool
    claims: tuple[str, ...] = ()  # stale stage-claim files removed (or that would be)

    @property
    def bytes_freed(self) -> int:
        return sum(e.bytes for e in self.remove)


def cache_entries(storage: str | Path) -> list[CacheEntry]:
    """Every checkpoint under `<storage>/cache/`, by key (hidden temp files are not listed)."""
    import pyarrow.fs as pafs

    fs, root = resolve_storage(storage)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{CACHE_DIR}", allow_not_found=True))
    grouped: dict[str, list[Any]] = {}
    for info in infos:
        name = info.base_name
        if info.type != pafs.FileType.File or name.startswith((".", "_")):
            continue
        if not name.endswith(CHECKPOINT_SUFFIXES):
            continue
        grouped.setdefault(name.rsplit(".", 1)[0], []).append(info)
    entries = []
    for key, files in sorted(grouped.items()):
        stamps = [f.mtime for f in files if f.mtime is not None]
        entries.append(
            CacheEntry(
                key=key,
                # the manifest first: without it the checkpoint is no longer offered
                paths=tuple(
                    f.path for f in sorted(files, key=lambda f: f.base_name[-5:] != ".json")
                ),
                bytes=sum(f.size or 0 for f in files),
                modified=max(stamps).astimezone(timezone.utc) if stamps else None,
            )
        )
    return entries


def cache_size(storage: str | Path) -> tuple[int, int]:
    """(checkpoints, bytes) of the storage's stage cache."""
    entries = cache_entries(storage)
    return len(entries), sum(e.bytes for e in entries)


def plan_gc(
    storage: str | Path,
    *,
    keep_last: int | None = None,
    older_than_s: float | None = None,
    now: datetime | None = None,
) -> GcPlan:
    """Which checkpoints no kept sweep references (see the module docstring); deletes nothing."""
    if keep_last is not None and keep_last < 0:
        raise SqueezerayError(f"--keep-last={keep_last} must be >= 0 (0 keeps no sweep)")
    if older_than_s is not None and older_than_s <= 0:
        raise SqueezerayError(f"--older-than={older_than_s:g} s must be > 0, e.g. 30d")
    results = PartitionedTable(storage, RESULTS_DIR, RESULTS_SCHEMA)
    stages = PartitionedTable(storage, STAGES_DIR, STAGES_SCHEMA)
    starts: dict[str | None, Any] = sweep_starts(results) if results.exists() else {}
    stage_only = [s for s in stages.partitions() if s not in starts]
    if stage_only:  # a sweep that stopped before its first result row
        rows = stages.read(stage_only, columns=["sweep_id", "finished_at"])
        for row in rows.group_by("sweep_id").aggregate([("finished_at", "min")]).to_pylist():
            starts[row["sweep_id"]] = row["finished_at_min"]
    ordered = sorted(starts, key=lambda s: (starts[s] is not None, starts[s] or 0, s or ""))
    kept = _kept(ordered, starts, keep_last, older_than_s, now or datetime.now(timezone.utc))
    referenced: set[str] = set()
    kept_results = [s for s in kept if s in results.partitions()]
    if kept_results:
        column = results.read(kept_results, columns=["stage_keys"]).column("stage_keys")
        referenced.update(k for keys in column.to_pylist() for k in keys or () if k)
    kept_stages = [s for s in kept if s in stages.partitions()]
    if kept_stages:
        column = stages.read(kept_stages, columns=["stage_key"]).column("stage_key")
        referenced.update(k for k in column.to_pylist() if k)
    entries = cache_entries(storage)
    remove = tuple(e for e in entries if e.key not in referenced)
    keep = [e for e in entries if e.key in referenced]
    return GcPlan(
        storage=str(storage),
        kept_sweeps=tuple(str(s) for s in ordered if s in kept),
        dropped_sweeps=tuple(str(s) for s in ordered if s not in kept),
        remove=remove,
        kept_entries=len(keep),
        kept_bytes=sum(e.bytes for e in keep),
        dry_run=True,
        claims=_stale_claims(storage, dry_run=True),
    )


def _stale_claims(storage: str | Path, *, dry_run: bool) -> tuple[str, ...]:
    from orchestrator.store.claims import remove_stale_claims
    from orchestrator.store.storage import open_storage

    return remove_stale_claims(open_storage(os.fspath(storage)), dry_run=dry_run)


def _kept(
    ordered: list[str | None],
    starts: dict[str | None, Any],
    keep_last: int | None,
    older_than_s: float | None,
    now: datetime,
) -> set[str | None]:
    if keep_last is None and older_than_s is None:
        return set(ordered)
    kept: set[str | None] = set()
    if keep_last is not None and keep_last > 0:
        kept.update(ordered[-keep_last:])
    if older_than_s is not None:
        cutoff = now.timestamp() - older_than_s
        # a sweep without a known start time is never old enough to drop
        kept.update(s for s in ordered if starts[s] is None or starts[s].timestamp() >= cutoff)
    return kept


def collect(
    storage: str | Path,
    *,
    keep_last: int | None = None,
    older_than_s: float | None = None,
    dry_run: bool = False,
    wait: bool = True,
    lock_timeout_s: float | None = None,
    locked: bool = False,
    now: datetime | None = None,
) -> GcPlan:
    """Plan and (unless `dry_run`) delete the unreferenced checkpoints; return the plan.

    Takes the storage lock (waiting up to `lock_timeout_s`, or failing at once with
    `wait=False`) unless the caller already holds it (`locked=True`, as a nightly run does),
    then the in-use lock alone: a running sweep makes this a StorageLocked error. A dry run
    takes no lock."""
    if dry_run:
        return plan_gc(storage, keep_last=keep_last, older_than_s=older_than_s, now=now)
    with _locks(storage, wait=wait, lock_timeout_s=lock_timeout_s, locked=locked):
        plan = plan_gc(storage, keep_last=keep_last, older_than_s=older_than_s, now=now)
        fs, _ = resolve_storage(storage)
        for entry in plan.remove:
            for path in entry.paths:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(path)
        claims = _stale_claims(storage, dry_run=False)
    return GcPlan(**{**plan.__dict__, "dry_run": False, "claims": claims})


@contextlib.contextmanager
def _locks(
    storage: str | Path, *, wait: bool, lock_timeout_s: float | None, locked: bool
) -> Iterator[None]:
    from orchestrator.store.lock import DEFAULT_TIMEOUT_S, exclusive_use, storage_lock
    from orchestrator.store.storage import open_storage

    store = open_storage(os.fspath(storage))
    with contextlib.ExitStack() as stack:
        if not locked:
            timeout = DEFAULT_TIMEOUT_S if lock_timeout_s is None else lock_timeout_s
            stack.enter_context(storage_lock(store, wait=wait, timeout_s=timeout))
        stack.enter_context(exclusive_use(store))
        yield


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
