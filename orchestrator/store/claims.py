"""On-disk claims on stage keys: sweeps sharing a storage compute each stage once.

Before a cache actor computes a stage whose checkpoint is not on disk, it claims the key by
creating `<storage>/cache/.claims/<key>.claim` with `O_CREAT | O_EXCL` (atomic on a local
filesystem and on NFS v3+), holding who claimed it (pid, host, a token per claimant, time).
Another claimant (another sweep's cache actor) that finds the claim does not compute the
stage: it waits for the checkpoint (`cache._StageCache`). The owner removes its claim when the
stage ends (checkpoint written, stage failed or cancelled) and touches it every `HEARTBEAT_S`
while the stage is queued or running.

A claim is stale, and is taken over, when its owner ran on this host and its pid is gone (a
killed or restarted actor, a killed sweep), or when it was not touched for `STALE_S` (an owner
on another host that died). Taking over renames the stale file to a name of our own, checks
that what it moved is the claim it judged stale (else puts it back) and claims afresh.

`squeezeray gc` removes the claims left behind (`remove_stale_claims`): those judged stale as
above, and the leftovers of an interrupted takeover; it never touches a live claim.

Object stores (s3://, gs://) and other fsspec URIs have no create-if-absent that pyarrow
exposes, so there are no claims there (`supported` is False, `acquire` always grants): two
sweeps may then compute one stage at the same time. Each still loads any checkpoint already
on disk when it looks, and checkpoints are written whole (`Storage.write_atomic`), so results
stay correct; only the work is duplicated. Claims are an optimisation, never a lock that
correctness depends on.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.store.storage import CACHE_DIR, Storage

CLAIMS_DIR = ".claims"  # hidden: `squeezeray gc` and the readers skip it
HEARTBEAT_S = 10.0  # how often an owner touches the claims it holds
STALE_S = 120.0  # a claim untouched this long is stale whoever holds it
POLL_S = 1.0  # how often a waiter looks for the checkpoint (and the claim's owner)


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim (the claim file's JSON)."""

    pid: int
    host: str
    token: str  # one per claimant (a cache actor's life): a restarted actor gets a new one
    claimed_at: float  # time.time()

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    return True


class StageClaims:
    """One claimant's claims on the stage keys of a storage (see the module docstring)."""

    def __init__(self, store: Storage, *, token: str | None = None, stale_s: float = STALE_S):
        self.supported = store.is_local
        self.directory = Path(store.path(CACHE_DIR, CLAIMS_DIR)) if self.supported else None
        self.owner = ClaimOwner(
            pid=os.getpid(),
            host=socket.gethostname(),
            token=token or uuid.uuid4().hex,
            claimed_at=time.time(),
        )
        self.stale_s = stale_s
        self.held: set[str] = set()

    def path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.claim"

    def acquire(self, key: str) -> bool:
        """Claim `key`: True when it is ours now (or claims are unsupported here), False when
        a live claimant holds it."""
        if self.directory is None:
            return True
        if key in self.held:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a claim freed or taken over between two looks: look again
            if self._create(key):
                self.held.add(key)
                return True
            if not self._take_over_if_stale(key):
                return False
        return False

    def holder(self, key: str) -> ClaimOwner | None:
        """Who holds `key`'s claim, or None (no claim, claims unsupported, or unreadable)."""
        if self.directory is None:
            return None
        return _read_owner(self.path(key))

    def release(self, key: str) -> None:
        """Drop our claim on `key` (a claim someone took over from us is left alone)."""
        if key not in self.held:
            return
        self.held.discard(key)
        path = self.path(key)
        owner = _read_owner(path)
        if owner is not None and owner.token == self.owner.token:
            with contextlib.suppress(OSError):
                path.unlink()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def refresh(self) -> None:
        """Touch every claim we hold (the heartbeat that keeps them from going stale)."""
        for key in list(self.held):
            with contextlib.suppress(OSError):
                os.utime(self.path(key))

    def is_stale(self, key: str) -> bool:
        """Whether `key`'s claim (if any) belongs to a dead or silent claimant."""
        path = self.path(key)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False  # gone: nothing to take over
        if age > self.stale_s:
            return True
        owner = _read_owner(path)
        if owner is None:  # being written this instant, or damaged: judged by its age alone
            return False
        if owner.token == self.owner.token:
            return False
        return owner.host == self.owner.host and not pid_alive(owner.pid)

    def _create(self, key: str) -> bool:
        try:
            fd = os.open(self.path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(self.owner), f)
        except BaseException:
            # Not left half written (a full disk): a claim without an owner is judged by its
            # age alone and would hold the key for STALE_S.
            with contextlib.suppress(OSError):
                self.path(key).unlink()
            raise
        return True

    def _take_over_if_stale(self, key: str) -> bool:
        """Move a stale claim out of the way; True when the key is free to claim again."""
        path = self.path(key)
        if not self.is_stale(key):
            return not path.exists()
        try:
            judged = path.read_bytes()
        except OSError:
            return True  # released meanwhile
        moved = path.with_name(f"{key}{TAKEOVER_MARK}{self.owner.token}")
        try:
            os.rename(path, moved)
        except OSError:
            return True  # released or taken over meanwhile: try to claim again
        if moved.read_bytes() != judged:
            # Another claimant took it over between our look and the rename: we moved its fresh
            # claim. Put it back (unless a third claimed meanwhile) and let it keep it.
            with contextlib.suppress(OSError):
                os.link(moved, path)
            with contextlib.suppress(OSError):
                moved.unlink()
            return False
        with contextlib.suppress(OSError):
            moved.unlink()
        return True


# A claim moved aside while it is taken over (`StageClaims._take_over_if_stale`).
TAKEOVER_MARK = ".claim.stale."


def remove_stale_claims(store: Storage, *, dry_run: bool = False) -> tuple[str, ...]:
    """The claim files under `<storage>/cache/.claims/` whose claimant is dead or silent
    (`StageClaims.is_stale`: its pid gone on this host, or untouched for `STALE_S`), and the
    leftovers of a takeover interrupted between its rename and its delete (untouched for
    `STALE_S`), removed unless `dry_run`; their paths. A live claim is never touched: a stale one
    is removed as a takeover moves it (renamed, checked to be the claim judged stale, deleted).
    Object stores have no claims: ()."""
    judge = StageClaims(store)
    if judge.directory is None or not judge.directory.is_dir():
        return ()
    removed = []
    for path in sorted(judge.directory.iterdir()):
        if path.name.endswith(".claim"):
            key = path.name[: -len(".claim")]
            if judge.is_stale(key) and (dry_run or _removed(judge, key)):
                removed.append(str(path))
        elif TAKEOVER_MARK in path.name and _age_s(path) > judge.stale_s:
            if not dry_run:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(str(path))
    return tuple(removed)


def _removed(judge: StageClaims, key: str) -> bool:
    """Remove `key`'s stale claim as a takeover does; False when it was claimed afresh."""
    return judge._take_over_if_stale(key) and not judge.path(key).exists()


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _read_owner(path: Path) -> ClaimOwner | None:
    try:
        data = json.loads(path.read_text())
        return ClaimOwner(
            pid=int(data["pid"]),
            host=str(data["host"]),
            token=str(data["token"]),
            claimed_at=float(data["claimed_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
