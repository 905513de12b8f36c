"""The storage lock: a second process waits for, or fails on, a lock another process holds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store.lock import LOCK_NAME, SIDECAR_NAME, StorageLocked, lock_files, storage_lock
from orchestrator.store.storage import open_storage

HOLDER = """
import sys, time
from orchestrator.store.lock import storage_lock
with storage_lock(sys.argv[1], wait=False):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def _hold(storage: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that takes the lock for `seconds`; returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(storage), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    proc = _hold(tmp_path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageLocked) as info, storage_lock(tmp_path, wait=False):
            pass
        assert time.monotonic() - t0 < 5
        message = str(info.value)
        assert f"pid {proc.pid}" in message and "--wait" in message
        assert info.value.holder is not None and info.value.holder.pid == proc.pid
        assert (tmp_path / LOCK_NAME).exists() and (tmp_path / SIDECAR_NAME).exists()
    finally:
        proc.kill()
        proc.wait()


def test_waiting_run_times_out_then_gets_the_lock_once_released(tmp_path: Path) -> None:
    proc = _hold(tmp_path, 1.5)
    try:
        with (
            pytest.raises(StorageLocked, match=r"after waiting \d+ s"),
            storage_lock(tmp_path, wait=True, timeout_s=0.3, poll_s=0.05),
        ):
            pass
        t0 = time.monotonic()
        with storage_lock(tmp_path, wait=True, timeout_s=30, poll_s=0.05) as me:
            waited = time.monotonic() - t0
            holder = lock_files(open_storage(tmp_path)).sidecar.read_text()
            assert f'"pid": {me.pid}' in holder
        assert 0.3 < waited < 20  # it waited for the other process to let go
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / SIDECAR_NAME).exists()  # released cleanly


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    proc = _hold(tmp_path, 60)
    proc.kill()
    proc.wait()
    # The OS dropped the lock with the process; only a stale sidecar may remain.
    with storage_lock(tmp_path, wait=False) as me:
        assert me.pid != proc.pid


def test_object_store_uri_gets_a_host_local_lock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("orchestrator.store.lock.HOST_LOCK_DIR", tmp_path / "locks")
    store = open_storage("memory://squeezeray-lock-test/run")
    files = lock_files(store)
    assert files.host_local and files.lock.parent == tmp_path / "locks"
    # A second lock object on the same file conflicts even within one process.
    with (
        storage_lock(store, wait=False),
        pytest.raises(StorageLocked, match="host-local"),
        storage_lock(store, wait=False),
    ):
        pass
