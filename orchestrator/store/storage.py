"""Files under a sweep storage: a local path or a URI (file://, s3://, gs://, memory://).

Everything squeezeray writes goes through `write_atomic` (`faults.atomic_write`): the bytes land
under a hidden temp name (readers skip names starting with `.` or `_`) and are then renamed into
place, so a partial file is never visible; a failed write removes its temp file, and a full,
read-only or forbidden storage is a `faults.StorageFault`. `probe_writable` finds such a storage
before any work starts.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow.fs as pafs

from orchestrator.store.faults import StorageFault, atomic_write, remove_quietly, storage_writes
from stages.errors import SqueezerayError

CACHE_DIR = "cache"  # stage checkpoints: <storage>/cache/<key>.ckpt + <key>.json
SWEEPS_DIR = "sweeps"  # sweep manifests, <storage>/sweeps/<id>.json, and their drivers' locks
PROBE_BYTES = 64 * 1024  # `probe_writable`'s file: a disk without this much room holds no row


@dataclass(frozen=True)
class Storage:
    """A filesystem and the root path on it; `uri` is what the user gave (for messages)."""

    fs: pafs.FileSystem
    root: str
    uri: str

    def path(self, *parts: str) -> str:
        """A path on `fs` (no scheme, no query string): what filesystem calls take."""
        return "/".join([self.root.rstrip("/"), *parts])

    def location(self, *parts: str) -> str:
        """Where `parts` is, for a person or another process: the local path, or the URI with
        the sub-path joined to its path part (the query string, e.g. an endpoint, kept)."""
        return self.path(*parts) if self.is_local else join_uri(self.uri, *parts)

    def exists(self, *parts: str) -> bool:
        info = self.fs.get_file_info(self.path(*parts))
        return bool(info.type != pafs.FileType.NotFound)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return bytes(f.read())

    def write_atomic(self, data: bytes | memoryview, *parts: str) -> str:
        """Write `data` to `<root>/<parts>` via a hidden temp file + rename; return where it is
        (`location`: a local path or a URI). A failed write leaves no temp file; a full,
        read-only or forbidden storage raises StorageFault (`faults.atomic_write`)."""
        atomic_write(self.fs, self.path(*parts), lambda stream: stream.write(data))
        return self.location(*parts)

    def delete(self, *parts: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(self.path(*parts))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def join_uri(uri: str, *parts: str) -> str:
    """`uri` with `parts` joined to its path: `s3://b/runs?endpoint_override=h:9000` + `tune`
    -> `s3://b/runs/tune?endpoint_override=h:9000`. A plain path joins as a path."""
    if not parts:
        return uri
    base, sep, query = uri.partition("?") if "://" in uri else (uri, "", "")
    joined = "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return f"{joined}{sep}{query}"


def canonical_uri(uri: str) -> str:
    """One spelling per location, for keys such as a host-local lock: the path part without a
    trailing `/`, the query parameters sorted (`?b=2&a=1` and `/?a=1&b=2` are one storage)."""
    import urllib.parse

    base, _, query = uri.partition("?")
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return base.rstrip("/") + (f"?{urllib.parse.urlencode(pairs)}" if pairs else "")


def tune_storage(store: Storage, *parts: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Tune: local storage as a plain path; a URI
    as its filesystem and the path on it, so Tune never has to parse (and append to) a URI
    whose query string it does not know."""
    if store.is_local:
        return store.path(*parts), None
    return store.path(*parts), store.fs


def open_storage(storage: str | os.PathLike[str], *, create: bool = False) -> Storage:
    """Resolve a storage location; with `create`, make the root directory."""
    text = os.fspath(storage)
    if not text:
        raise SqueezerayError(
            "storage='' is empty; give a directory or a URI such as s3://bucket/x"
        )
    try:
        if "://" in text and not text.startswith("file://"):
            fs, root = _from_uri(text)
        else:
            local = text.removeprefix("file://")
            fs, root = pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    except (pafs.ArrowInvalid, ValueError, ImportError) as exc:  # type: ignore[attr-defined]
        raise SqueezerayError(
            f"storage={text!r} is not a usable location ({exc}); accepted: a local path, "
            "file://, s3://, gs://, or any fsspec URI whose package is installed"
        ) from exc
    if fs.type_name == "local" and "://" not in text:
        # Absolute: Ray Tune runs each trial in its own working directory, so a relative
        # path handed to a trial (error logs, checkpoints) would land under Ray's temp dir.
        text = root
    result = Storage(fs=fs, root=root, uri=text)
    if create:
        with storage_writes(result.location()):
            fs.create_dir(root, recursive=True)
    return result


def probe_writable(store: Storage) -> None:
    """Check before any work that `store` takes a write: create its root, write PROBE_BYTES to
    a hidden probe file, fsync it (local storage: a full disk may only say so then) and remove
    it. Raises StorageFault naming the storage and the fix; another OSError (an object store
    refusing) is a SqueezerayError saying what failed."""
    probe = store.path(f".squeezeray-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with storage_writes(store.location()):
            store.fs.create_dir(store.root, recursive=True)
            if store.is_local:
                _probe_local(probe)
            else:
                with store.fs.open_output_stream(probe) as stream:
                    stream.write(b"\0" * PROBE_BYTES)
                remove_quietly(store.fs, probe)
    except StorageFault:
        raise
    except OSError as exc:
        raise SqueezerayError(
            f"storage {store.uri} cannot be written ({exc}); check the location and its "
            "credentials, or give --storage a writable location"
        ) from exc


def _probe_local(probe: str) -> None:
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        stream: IO[bytes] = os.fdopen(fd, "wb", closefd=False)
        with stream:
            stream.write(b"\0" * PROBE_BYTES)
            stream.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        return fs, root
    except Exception:
        # memory:// and other fsspec protocols pyarrow does not know natively
        import fsspec

        fsspec_fs, root = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs)), root
