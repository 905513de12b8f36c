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


# --- one driver per sweep (issue 21 item 2) --------------------------------------------------

DRIVER = """
import sys, time
from orchestrator.store.lock import sweep_lock
from orchestrator.store.storage import open_storage
with sweep_lock(open_storage(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _drive(storage: Path, sweep_id: str, seconds: float) -> subprocess.Popen[str]:
    """Another process that is the driver of `sweep_id` for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(storage), sweep_id, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _no_ray(*args: object, **kwargs: object) -> None:
    raise AssertionError("Ray was started: a second driver must be refused before")


def test_a_second_driver_of_a_sweep_is_refused_naming_the_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.engine.manifest import read_manifest, write_manifest
    from orchestrator.engine.prepare import prepare_sweep
    from orchestrator.engine.sweep import execute_sweep

    monkeypatch.setattr("orchestrator.engine.runtime.init_ray", _no_ray)
    storage = tmp_path / "results"
    started = prepare_sweep("tiny", storage=storage, sweep_id="run-a")
    write_manifest(started.storage, started, status="running")
    proc = _drive(storage, "run-a", 60)
    try:
        for args in (["--resume", "--sweep-id", "run-a"], ["tiny", "--sweep-id", "run-a"]):
            result = CliRunner().invoke(app, ["sweep", *args, "--storage", str(storage)])
            out = " ".join(result.output.split())
            assert result.exit_code == 2, (result.output, result.exception)
            assert f"sweep run-a is already being run by pid {proc.pid} on" in out, out
            assert socket.gethostname() in out and "continue with" not in out, out
        # Past the checks (a race, or the Python API): execute_sweep refuses too, and the
        # running sweep's manifest is left alone (not marked failed by the refused driver).
        with pytest.raises(StorageLocked, match=f"pid {proc.pid}"):
            execute_sweep(started)
        assert read_manifest(started.storage, "run-a")["status"] == "running"
    finally:
        proc.kill()
        proc.wait()
    # The driver died: its lock (and the holder file it left) is taken over.
    from orchestrator.store.lock import read_holder, sweep_lock, sweep_lock_files

    files = sweep_lock_files(started.storage, "run-a")
    assert read_holder(files) is not None and read_holder(files).pid == proc.pid  # type: ignore[union-attr]
    with sweep_lock(started.storage, "run-a") as me:
        assert me.pid != proc.pid
        assert read_holder(files) == me
    assert prepare_sweep(None, storage=storage, resume=True, sweep_id="run-a").resume
