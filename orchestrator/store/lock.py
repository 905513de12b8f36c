"""Locks on a storage: one nightly run per storage (`storage_lock`), one driver per sweep
(`sweep_lock`), and the in-use mark running sweeps share (`storage_in_use`).

Local storage (a path or a file:// URI): an OS file lock (`filelock`) on
`<storage>/.squeezeray.lock`. The holder writes who it is (pid, host, start time, command)
into the sidecar `<storage>/.squeezeray.lock.json`, so a blocked run can name it. The OS drops
the lock when its holder dies, so a crashed run leaves no stale lock (a stale sidecar is simply
overwritten by the next holder). On a shared disk the lock holds across machines when the
filesystem supports locks (NFSv4, or NFSv3 with lockd; Lustre/CephFS with locking on).

Object stores (s3://, gs://) and other fsspec URIs have no lock primitive that pyarrow
exposes. There the lock is host-local: a file lock under `~/.cache/squeezeray/locks/`, keyed by
the URI. It keeps runs scheduled on one machine apart, not runs started on two machines, so
schedule the nightly runs of one object-store storage from one place.

A sweep's driver lock is the same kind of lock on `<storage>/sweeps/.<sweep id>.lock` (beside its
manifest): a second driver of that sweep is refused at once, naming the running one's pid and
host; a driver that died released it with its process, so the next run takes it over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.store.faults import storage_writes, write_local_atomic
from orchestrator.store.storage import SWEEPS_DIR, Storage, canonical_uri, open_storage
from stages.errors import SqueezerayError

log = logging.getLogger(__name__)

LOCK_NAME = ".squeezeray.lock"  # hidden: the results readers skip names starting with "."
SIDECAR_NAME = ".squeezeray.lock.json"
DEFAULT_TIMEOUT_S = 6 * 3600.0  # a nightly run waits at most this long for the one before it
HOST_LOCK_DIR = Path("~/.cache/squeezeray/locks")


@dataclass(frozen=True)
class LockHolder:
    """Who holds a storage lock (written to the sidecar by the holder)."""

    pid: int
    host: str
    started_at: str  # ISO 8601, UTC
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started_at} ({self.command})"


class StorageLocked(SqueezerayError):
    """Another run holds the storage lock (and we did not, or could no longer, wait)."""

    def __init__(self, message: str, holder: LockHolder | None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LockFiles:
    """Where a storage's lock lives: the OS-locked file and the holder sidecar."""

    lock: Path
    sidecar: Path
    host_local: bool  # True for object stores (see the module docstring)


def lock_files(store: Storage) -> LockFiles:
    if store.is_local:
        root = Path(store.root)
        return LockFiles(root / LOCK_NAME, root / SIDECAR_NAME, host_local=False)
    digest = hashlib.sha256(canonical_uri(store.uri).encode()).hexdigest()[:16]
    base = HOST_LOCK_DIR.expanduser() / digest
    return LockFiles(base.with_suffix(".lock"), base.with_suffix(".json"), host_local=True)


def read_holder(files: LockFiles) -> LockHolder | None:
    """The holder recorded in the sidecar, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(files.sidecar.read_text())
        return LockHolder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started_at=str(data["started_at"]),
            command=str(data["command"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _me() -> LockHolder:
    return LockHolder(
        pid=os.getpid(),
        host=socket.gethostname(),
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "python",
    )


@contextlib.contextmanager
def storage_lock(
    storage: str | os.PathLike[str] | Storage,
    *,
    wait: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 0.25,
) -> Iterator[LockHolder]:
    """Hold the storage's lock for the `with` block; yield this process's LockHolder.

    `wait=False` fails at once when another run holds it; `wait=True` waits up to `timeout_s`
    seconds. Either way the failure is a StorageLocked error naming the holder.
    """
    if timeout_s < 0:
        raise SqueezerayError(f"lock timeout={timeout_s:g} s must be >= 0")
    store = storage if isinstance(storage, Storage) else open_storage(storage, create=True)
    files = lock_files(store)
    t0 = time.monotonic()
    try:
        with _held(files, timeout_s=timeout_s if wait else 0, poll_s=poll_s) as me:
            yield me
    except _Taken as taken:
        who = (
            taken.holder.describe()
            if taken.holder
            else f"a holder that left no {files.sidecar.name}"
        )
        waited = f" after waiting {time.monotonic() - t0:.0f} s" if wait else ""
        scope = " (host-local lock for an object store)" if files.host_local else ""
        retry = "give it longer with --lock-timeout" if wait else "rerun with --wait"
        raise StorageLocked(
            f"storage {store.uri} is locked{scope} by {who}{waited}; another squeezeray run is "
            f"writing it. Wait for it to finish, or {retry} (lock file: {files.lock})",
            taken.holder,
        ) from None


class _Taken(Exception):
    """The lock is held by another process (named by its sidecar, when it left one)."""

    def __init__(self, holder: LockHolder | None) -> None:
        super().__init__(holder.describe() if holder else "unknown holder")
        self.holder = holder


@contextlib.contextmanager
def _held(files: LockFiles, *, timeout_s: float, poll_s: float) -> Iterator[LockHolder]:
    """Hold the OS lock on `files.lock` with this process named in the sidecar (written
    atomically), or raise _Taken naming the holder after `timeout_s` seconds. A holder that
    died released the OS lock with it, so its lock (and the sidecar it left) is taken over.
    Read-only or full storage is a StorageFault naming the lock file."""
    import filelock

    with storage_writes(str(files.lock)):
        files.lock.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(files.lock), thread_local=False)
        try:
            lock.acquire(timeout=timeout_s, poll_interval=poll_s)
        except filelock.Timeout:
            raise _Taken(read_holder(files)) from None
    try:
        me = _me()
        stale = read_holder(files)
        if stale is not None and stale.pid != me.pid:
            log.info("took over %s from %s, which has ended", files.lock, stale.describe())
        write_local_atomic(str(files.sidecar), json.dumps(asdict(me), indent=2).encode())
        yield me
    finally:
        with contextlib.suppress(OSError):
            files.sidecar.unlink()
        lock.release()


# -- one driver per sweep ---------------------------------------------------------------------


def sweep_lock_files(store: Storage, sweep_id: str) -> LockFiles:
    """The lock of one sweep's driver: `<storage>/sweeps/.<sweep id>.lock` and its sidecar
    (host-local for object stores, as `lock_files`)."""
    if store.is_local:
        base = Path(store.root) / SWEEPS_DIR / f".{sweep_id}"
        return LockFiles(
            base.with_name(base.name + ".lock"),
            base.with_name(base.name + ".lock.json"),
            host_local=False,
        )
    key = f"{canonical_uri(store.uri)}#sweep={sweep_id}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = HOST_LOCK_DIR.expanduser() / digest
    return LockFiles(base.with_suffix(".lock"), base.with_suffix(".json"), host_local=True)


@contextlib.contextmanager
def sweep_lock(store: Storage, sweep_id: str) -> Iterator[LockHolder]:
    """Be the one driver of sweep `sweep_id` for the `with` block: a second driver (`--resume`
    while it runs, or the same `--sweep-id` twice) fails at once with a StorageLocked error
    naming this one's pid and host. The OS drops the lock when its holder dies, so a crashed
    driver's lock is taken over by the next run."""
    files = sweep_lock_files(store, sweep_id)
    try:
        with _held(files, timeout_s=0, poll_s=0.05) as me:
            yield me
    except _Taken as taken:
        raise _sweep_busy(store, sweep_id, files, taken.holder) from None


def check_no_driver(store: Storage, sweep_id: str) -> None:
    """Refuse (StorageLocked naming its pid and host) when a driver runs sweep `sweep_id` now;
    creates nothing (`prepare`: before Ray starts and before the resume hint is printed)."""
    import filelock

    files = sweep_lock_files(store, sweep_id)
    if not files.lock.exists():
        return
    lock = filelock.FileLock(str(files.lock), thread_local=False)
    try:
        with storage_writes(str(files.lock)):
            lock.acquire(timeout=0)
    except filelock.Timeout:
        raise _sweep_busy(store, sweep_id, files, read_holder(files)) from None
    lock.release()


def _sweep_busy(
    store: Storage, sweep_id: str, files: LockFiles, holder: LockHolder | None
) -> StorageLocked:
    who = holder.describe() if holder else f"a driver that left no {files.sidecar.name}"
    return StorageLocked(
        f"sweep {sweep_id} is already being run by {who}; one driver runs a sweep at a time. "
        f"Wait for it to end (or stop it: kill {holder.pid if holder else '<pid>'} on "
        f"{holder.host if holder else 'its host'}), then continue it with --resume "
        f"(lock file: {files.lock}; storage {store.uri})",
        holder,
    )


# -- "in use" marks: running sweeps share it, `squeezeray gc` needs it alone -------------------

USE_LOCK_NAME = ".squeezeray.use.lock"


def _use_lock_path(store: Storage) -> Path:
    files = lock_files(store)
    return (
        files.lock.with_name(USE_LOCK_NAME)
        if not files.host_local
        else files.lock.with_suffix(".use.lock")
    )


@contextlib.contextmanager
def storage_in_use(storage: str | os.PathLike[str] | Storage) -> Iterator[None]:
    """Mark the storage as used by a running sweep for the `with` block (a shared OS lock on
    `<storage>/.squeezeray.use.lock`; host-local for object stores, as `storage_lock`).

    Any number of sweeps share it; `exclusive_use` (taken by `squeezeray gc`) waits for none and
    fails while one holds it, so a collection never deletes a checkpoint a running sweep may load.
    A sweep started while a collection runs waits for it (it takes seconds). On systems without
    `fcntl` (Windows) the mark is skipped."""
    with _flock(storage, exclusive=False, wait=True):
        yield


@contextlib.contextmanager
def exclusive_use(storage: str | os.PathLike[str] | Storage) -> Iterator[None]:
    """Hold the storage's in-use lock alone, or raise StorageLocked when a sweep is running."""
    store = storage if isinstance(storage, Storage) else open_storage(storage, create=True)
    try:
        with _flock(store, exclusive=True, wait=False):
            yield
    except _Busy as exc:
        raise StorageLocked(
            f"a sweep is running on storage {store.uri} (it holds {_use_lock_path(store)}); "
            "its stages may load any cached checkpoint, so nothing was collected. Run "
            "`squeezeray gc` again when it has finished",
            None,
        ) from exc


class _Busy(Exception):
    """The in-use lock is held by someone else (and we did not wait)."""


@contextlib.contextmanager
def _flock(
    storage: str | os.PathLike[str] | Storage, *, exclusive: bool, wait: bool
) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no shared locks here
        yield
        return
    store = storage if isinstance(storage, Storage) else open_storage(storage, create=True)
    path = _use_lock_path(store)
    with storage_writes(str(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise _Busy(str(path)) from exc
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
