"""Writes that fail leave the store as it was (issue 21 item 1), on a real small filesystem.

Every writer of the store and engine - an atomic file (manifest, cache checkpoint, error log),
a stage task's checkpoint file,
results and stage rows, a compaction's merged file and summary, the lock's holder file - is
run against a full tmpfs (ENOSPC) and a read-only one (EROFS): each raises one StorageFault
naming the path and the fix, leaves no temp file, and every file written before is unchanged.
The sweep command refuses such storage before Ray starts, before it prints a resume hint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.faults import StorageFault
from orchestrator.store.storage import open_storage
from tests.rows import result_row

from .small_fs import SmallFs, small_fs, snapshot, temp_files


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallFs]:
    with small_fs(tmp_path / "disk") as fs:
        yield fs


def _rows(sweep_id: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [result_row(sweep_id, f"t{i}", i) for i in range(start, start + n)]


def _stage_row(sweep_id: str, key: str) -> dict[str, Any]:
    return {
        "stage_key": key, "stage": "teacher", "params": "{}", "parent_key": None,
        "sweep_id": sweep_id, "trial_id": "t0", "wall_s": 1.0, "cpu_s": 1.0,
        "finished_at": datetime.now(timezone.utc),
    }  # fmt: skip


def _write_atomic(storage: Path) -> None:
    open_storage(storage).write_atomic(b"x" * 200_000, "cache", "k2.ckpt")


def _stage_checkpoint(storage: Path) -> None:
    """A stage task: its checkpoint is serialised straight into its cache file's temp."""
    from orchestrator.engine.requests import StageRequest
    from orchestrator.engine.stage_tasks import execute_stage

    request = StageRequest(
        stage="teacher", params={"epochs": 0}, key="k3" * 8, parent_key=None, task="blobs",
        storage=str(storage),
    )  # fmt: skip
    execute_stage(request, None, None)


def _append_results(storage: Path) -> None:
    from orchestrator.store.results import append_results

    append_results(str(storage), _rows("s", 50, start=10))


def _append_stage_rows(storage: Path) -> None:
    from orchestrator.store.results import append_stage_rows

    append_stage_rows(str(storage), [_stage_row("s", f"k{i}") for i in range(50)])


def _compact(storage: Path) -> None:
    from orchestrator.store.compact import compact_sweep

    compact_sweep(str(storage), "s")


def _lock(storage: Path) -> None:
    from orchestrator.store.lock import storage_lock

    with storage_lock(storage, wait=False):
        pass


_PREPARED: dict[str, Any] = {}  # the sweep `_manifest` writes, prepared before the disk fills


def _manifest(storage: Path) -> None:
    from orchestrator.engine.manifest import write_manifest

    write_manifest(open_storage(storage), _PREPARED["sweep"], status="running")


WRITERS: dict[str, Callable[[Path], None]] = {
    "atomic file": _write_atomic,
    "stage checkpoint": _stage_checkpoint,
    "results rows": _append_results,
    "stage rows": _append_stage_rows,
    "compaction": _compact,
    "lock holder": _lock,
    "manifest": _manifest,
}


def _seed(storage: Path) -> None:
    """What an earlier run wrote: a checkpoint, rows in several files, a manifest."""
    from orchestrator.store.results import append_results

    store = open_storage(storage, create=True)
    store.write_atomic(b"c" * 1000, "cache", "k1.ckpt")
    store.write_atomic(b'{"status": "running"}', "sweeps", "s.json")
    for i in range(3):
        append_results(str(storage), _rows("s", 2, start=2 * i))


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_every_writer_on_full_or_read_only_storage_raises_one_fault_and_leaves_it_as_it_was(
    disk: SmallFs, kind: str
) -> None:
    from orchestrator.engine.prepare import prepare_sweep

    storage = disk.root / "results"
    _seed(storage)
    _PREPARED["sweep"] = prepare_sweep("tiny", storage=storage, sweep_id="m")
    before = snapshot(disk.root)
    if kind == "full":
        disk.fill()
    else:
        disk.read_only()
    for name, writer in WRITERS.items():
        with pytest.raises(StorageFault) as info:
            writer(storage)
        message = str(info.value)
        assert str(disk.root) in message, (name, message)
        if kind == "full":
            assert "is full" in message and "free space" in message, (name, message)
        else:
            assert "read-only" in message and "writable" in message, (name, message)
        assert "\n" not in message, (name, message)
        assert temp_files(disk.root) == [], (name, temp_files(disk.root))
        assert snapshot(disk.root) == before, name
    disk.read_only(False)
    disk.free()
    for writer in WRITERS.values():  # with room again, every writer works
        writer(storage)
    assert temp_files(disk.root) == []


def _no_ray(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("Ray was started: the storage must be refused before")


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_sweep_and_resume_on_unwritable_storage_stop_before_ray_with_one_line(
    disk: SmallFs, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.engine.manifest import write_manifest
    from orchestrator.engine.prepare import prepare_sweep

    monkeypatch.setattr("orchestrator.engine.runtime.init_ray", _no_ray)
    storage = disk.root / "results"
    started = prepare_sweep("tiny", storage=storage, sweep_id="run-a")
    write_manifest(started.storage, started, status="interrupted")
    before = snapshot(disk.root)
    disk.fill() if kind == "full" else disk.read_only()
    for args in (["tiny"], ["--resume", "--sweep-id", "run-a"]):
        result = CliRunner().invoke(app, ["sweep", *args, "--storage", str(storage)])
        out = " ".join(result.output.split())
        assert result.exit_code == 2, (result.output, result.exception)
        assert out.startswith("error: storage"), out
        assert str(storage) in out
        assert ("is full" if kind == "full" else "is read-only") in out
        assert "continue with" not in out and "Traceback" not in out
        assert temp_files(disk.root) == []
        assert snapshot(disk.root) == before


def test_a_query_writing_its_output_to_a_read_only_disk_is_one_line(disk: SmallFs) -> None:
    """Outside the store (a front written with --output), a full or read-only disk is the same
    one line and exit 2 from the CLI's one handler, not a traceback."""
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.store.results import append_results
    from tests.rows import make_rows

    storage = disk.root.parent / "readable"
    append_results(str(storage), make_rows("run-a", 6))
    disk.read_only()
    output = disk.root / "front.csv"
    result = CliRunner().invoke(
        app, ["pareto", "--storage", str(storage), "--format", "csv", "--output", str(output)]
    )
    out = " ".join(result.output.split())
    assert result.exit_code == 2, (result.output, result.exception)
    assert out.startswith("error: storage is read-only") and str(output) in out, out


def test_two_writers_of_one_stage_checkpoint_never_share_a_temp_file(tmp_path: Path) -> None:
    """Two tasks writing one cache file (two hosts on a shared storage can have one pid; a
    retried task has its predecessor's) each write their own temp file, as every other writer
    of the store does, so one never renames or removes the other's half-written bytes."""
    from orchestrator.engine.stage_tasks import StagedFile
    from stages.checkpoint import ModelCheckpoint

    target = str(tmp_path / "cache" / "k" / "checkpoint.pt")
    first, second = StagedFile(target), StagedFile(target)
    assert first.tmp != second.tmp
    ckpt = ModelCheckpoint(task="t", state_dict={})
    assert Path(first.write(ckpt)).exists() and Path(second.write(ckpt)).exists()
    with pytest.raises(RuntimeError), second.kept_on_success():
        raise RuntimeError("the second task failed")
    assert Path(first.publish()).exists() and not Path(second.tmp).exists()
