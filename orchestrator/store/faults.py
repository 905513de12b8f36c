"""Storage that cannot take a write: a full disk, a quota, read-only or forbidden storage.

Every writer of the store and the engine goes through `atomic_write` (or `storage_writes` for
the lock files): the bytes land under a hidden temp name that is renamed into place, a failed
write removes its temp file, and an `OSError` of a storage kind (`FAULTS`) becomes a
`StorageFault` - a `SqueezerayError`, so the CLI prints one line naming the path and the fix and
exits 2. Everything written before the failing write is left as it was.

`storage.probe_writable` finds such storage before Ray starts (`engine.prepare`): it writes,
fsyncs and removes a small probe file, so a read-only or full storage is refused before any work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# errno -> (what the storage is, what the user does). EACCES/EPERM: the user may not write there.
FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: (
        "is full (no space left on device)",
        "free space on it (or give --storage a location with room)",
    ),
    errno.EDQUOT: (
        "is over its disk quota",
        "free space within the quota (or give --storage a location with room)",
    ),
    errno.EROFS: (
        "is read-only",
        "remount it read-write, or give --storage a writable location (queries such as "
        "`squeezeray pareto` still read it)",
    ),
    errno.EACCES: (
        "is not writable by this user (permission denied)",
        "give this user write permission on it, or give --storage a writable location",
    ),
    errno.EPERM: (
        "does not permit this write (operation not permitted)",
        "give this user write permission on it, or give --storage a writable location",
    ),
}


class StorageFault(SqueezerayError):
    """A write to the storage failed because the storage is full, read-only or forbidden.

    The message names the path, the kind and the fix; `errno` keeps the OS error number.
    Constructed from the message alone, so it survives pickling (a Ray task's error)."""

    errno: int | None = None


def as_storage_fault(exc: BaseException, path: str) -> StorageFault | None:
    """The storage fault behind `exc` - `exc` itself, its causes, or a Ray task error's
    original exception - as a StorageFault (an OSError of a FAULTS kind becomes one naming
    `path`); None when there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)  # a Ray task error's original exception
        if isinstance(inner, BaseException) and id(inner) not in seen:
            current = inner
            continue
        if isinstance(current, StorageFault):
            return current
        number = getattr(current, "errno", None)
        if isinstance(current, OSError) and number in FAULTS:
            return _fault(int(number), path)
        current = current.__cause__ or current.__context__
    return None


def _fault(number: int, path: str) -> StorageFault:
    what, fix = FAULTS[number]
    fault = StorageFault(
        f"storage {what}: could not write {path} ({os.strerror(number)}); {fix}. "
        "Everything written before this write is intact"
    )
    fault.errno = number
    return fault


@contextlib.contextmanager
def storage_writes(path: str) -> Iterator[None]:
    """Turn a storage-kind OSError raised in the block into a StorageFault naming `path`."""
    try:
        yield
    except OSError as exc:
        fault = as_storage_fault(exc, path)
        if fault is None:
            raise
        raise fault from exc


def temp_tag() -> str:
    """The tag of a hidden temp file's name (`.<name>.<tag>.tmp`): the writing process's pid
    and a random part, so two writers of one target (two hosts on a shared storage, a retried
    task) never share a temp file."""
    return f"{os.getpid()}.{uuid.uuid4().hex[:8]}"


def atomic_write(
    fs: pafs.FileSystem,
    target: str,
    write: Callable[[Any], None],
    *,
    tmp_tag: str | None = None,
) -> None:
    """Write `target` on `fs` all or nothing: `write(stream)` fills a hidden temp file beside
    it (`.<name>.<tag>.tmp`; readers skip names starting with `.`), which is then renamed into
    place. An object store (s3, gcs) publishes an object only once its upload completes, so
    there the target is written directly. On failure the temp file is removed and a storage
    fault (full, read-only, forbidden) is raised as a StorageFault; the target is untouched."""
    parent, _, name = target.rpartition("/")
    direct = fs.type_name in ("s3", "gcs")
    tag = tmp_tag or temp_tag()
    tmp = target if direct else f"{parent}/.{name}.{tag}.tmp"
    with storage_writes(target):
        fs.create_dir(parent, recursive=True)
        try:
            with fs.open_output_stream(tmp) as stream:
                write(stream)
            if not direct:
                fs.move(tmp, target)
        except BaseException:
            if not direct:
                remove_quietly(fs, tmp)
            raise


def remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):
        fs.delete_file(path)


def write_local_atomic(path: str, data: bytes) -> None:
    """`atomic_write` for a plain local file (the lock's holder sidecar)."""
    import pyarrow.fs as pafs

    atomic_write(pafs.LocalFileSystem(), path, lambda stream: stream.write(data))
