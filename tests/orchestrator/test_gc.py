"""Stage-cache gc: exactly the unreferenced checkpoints go, results are never touched, a running
sweep blocks it, and after two real sweeps the last one's every stage still loads."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.engine.stage_tasks import CACHE_DIR, checkpoint_path
from orchestrator.store.gc import cache_entries, collect, plan_gc
from orchestrator.store.lock import StorageLocked, storage_in_use, storage_lock
from orchestrator.store.results import append_results, append_stage_rows, load_results
from stages.errors import SqueezerayError

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def _checkpoint(storage: Path, key: str, size: int = 100) -> None:
    data_name, manifest_name = checkpoint_path(key)
    cache = storage / CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    (cache / data_name).write_bytes(data)
    (cache / manifest_name).write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest()}))


def _sweep(storage: Path, sweep: str, days_ago: int, trials: dict[str, list[str]]) -> None:
    start = NOW - timedelta(days=days_ago)
    rows: list[dict[str, Any]] = []
    for i, (trial, keys) in enumerate(trials.items()):
        rows.append(
            {
                "sweep_id": sweep,
                "trial_id": trial,
                "started_at": start + timedelta(minutes=i),
                "finished_at": start + timedelta(minutes=i + 1),
                "status": "ok",
                "is_baseline": trial == "baseline",
                "stage_keys": keys,
            }
        )
    append_results(storage, rows)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three sweeps (60, 20 and 1 days old) sharing a teacher; two orphan checkpoints."""
    _sweep(tmp_path, "old", 60, {"baseline": ["T"], "t1": ["T", "A1", "B1"]})
    _sweep(tmp_path, "mid", 20, {"baseline": ["T"], "t1": ["T", "A2", "B2"], "t2": ["T", "A2"]})
    _sweep(tmp_path, "new", 1, {"baseline": ["T"], "t1": ["T", "A3", "B3"]})
    # A stage the newest sweep executed for a trial that then failed before its row.
    append_stage_rows(
        tmp_path,
        [{"stage_key": "S3", "stage": "distill", "sweep_id": "new", "finished_at": NOW}],
    )
    for key in ("T", "A1", "B1", "A2", "B2", "A3", "B3", "S3", "orphan1", "orphan2"):
        _checkpoint(tmp_path, key, size=100 if key != "orphan2" else 250)
    return tmp_path


def _keys(plan: Any) -> set[str]:
    return {e.key for e in plan.remove}


def test_dry_run_lists_exactly_the_unreferenced_checkpoints(store: Path) -> None:
    files_before = sorted(p.name for p in (store / CACHE_DIR).iterdir())
    plan = collect(store, dry_run=True, now=NOW)
    assert _keys(plan) == {"orphan1", "orphan2"}
    assert plan.bytes_freed == sum(e.bytes for e in cache_entries(store) if e.key.startswith("o"))
    assert plan.dry_run and sorted(p.name for p in (store / CACHE_DIR).iterdir()) == files_before

    plan = collect(store, keep_last=1, dry_run=True, now=NOW)
    assert _keys(plan) == {"A1", "B1", "A2", "B2", "orphan1", "orphan2"}
    assert plan.kept_sweeps == ("new",) and plan.dropped_sweeps == ("old", "mid")

    assert _keys(plan_gc(store, older_than_s=30 * 86400, now=NOW)) == {
        "A1", "B1", "orphan1", "orphan2",
    }  # fmt: skip
    # Either rule keeps a sweep: the newest one, or one started within 30 days.
    assert _keys(plan_gc(store, keep_last=1, older_than_s=30 * 86400, now=NOW)) == {
        "A1", "B1", "orphan1", "orphan2",
    }  # fmt: skip
    assert sorted(p.name for p in (store / CACHE_DIR).iterdir()) == files_before


def test_gc_deletes_them_and_never_touches_results(store: Path) -> None:
    results_before = {p: p.read_bytes() for p in (store / "results").rglob("*") if p.is_file()}
    table_before = load_results(store, sweep="all")
    sizes = {e.key: e.bytes for e in cache_entries(store)}
    plan = collect(store, keep_last=1, now=NOW)
    assert not plan.dry_run
    assert {e.key for e in cache_entries(store)} == {"T", "A3", "B3", "S3"}
    assert plan.bytes_freed == sum(sizes[k] for k in ("A1", "B1", "A2", "B2", "orphan1", "orphan2"))
    assert not list((store / CACHE_DIR).glob("A1.*"))  # data and manifest both gone
    results_after = {p: p.read_bytes() for p in (store / "results").rglob("*") if p.is_file()}
    assert results_after == results_before
    assert load_results(store, sweep="all").equals(table_before)
    # Nothing left to collect.
    assert _keys(collect(store, keep_last=1, now=NOW)) == set()


def test_gc_refuses_while_a_sweep_runs_and_waits_for_the_storage_lock(store: Path) -> None:
    with storage_in_use(store), pytest.raises(StorageLocked, match="a sweep is running"):
        collect(store, keep_last=1)
    assert {e.key for e in cache_entries(store)} >= {"A1", "orphan1"}
    with storage_lock(store), pytest.raises(StorageLocked, match="is locked"):
        collect(store, keep_last=1, wait=False)
    # The dry run takes no lock: it may list while a sweep runs.
    with storage_in_use(store):
        assert "orphan1" in _keys(collect(store, dry_run=True))


def test_gc_rejects_bad_options(store: Path) -> None:
    with pytest.raises(SqueezerayError, match="--keep-last=-1 must be >= 0"):
        plan_gc(store, keep_last=-1)
    result = CliRunner().invoke(app, ["gc", "--storage", str(store), "--older-than", "soon"])
    assert result.exit_code == 2
    assert "--older-than: 'soon' is not a duration" in result.output


def test_gc_cli_dry_run_prints_keys_and_bytes(store: Path) -> None:
    result = CliRunner().invoke(
        app, ["gc", "--storage", str(store), "--dry-run", "--keep-last", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    listed = {line.split()[2] for line in lines if line.startswith("would remove ")}
    gone = {"A1", "B1", "orphan1", "orphan2"}
    assert listed == gone | {"4"}  # the keys, then "would remove 4 checkpoint(s), ..."
    freed = sum(e.bytes for e in cache_entries(store) if e.key in gone)
    assert f"({freed} bytes)" in result.output
    assert (store / CACHE_DIR / "A1.ckpt").exists()
    result = CliRunner().invoke(app, ["sweeps", "--storage", str(store)])
    assert result.exit_code == 0, result.output
    size = sum(e.bytes for e in cache_entries(store))
    assert f"stage cache: 10 checkpoint(s), {size / 1000:.1f} KB" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_gc_after_two_sweeps_keeps_the_last_sweeps_stages_loadable(tmp_path: Path) -> None:
    """Two real sweeps with different teachers; `gc --keep-last 1` removes the first one's
    checkpoints only, and repeating the second sweep computes nothing: every stage loads."""
    from importlib import resources

    from orchestrator.engine.sweep import execute_sweep, prepare_sweep

    storage = tmp_path / "store"
    tiny = resources.files("search_spaces").joinpath("tiny.yaml").read_text()
    other = tmp_path / "tiny-other.yaml"
    other.write_text(tiny.replace("teacher.epochs: 3", "teacher.epochs: 2"))
    assert other.read_text() != tiny

    # One trial a sweep (tiny has four): a teacher, a KD stage and the trial's own stages each,
    # and one Tune trial actor to start per sweep instead of two.
    first = execute_sweep(prepare_sweep("tiny", storage=storage, trials=1))
    second = execute_sweep(prepare_sweep(str(other), storage=storage, trials=1))
    # Each sweep compacted itself when it finished: one file per table and sweep.
    for sweep_id in (first.summary.sweep_id, second.summary.sweep_id):
        for table in ("results", "stages"):
            directory = storage / table / f"sweep_id={sweep_id}"
            assert len([p for p in directory.glob("*.parquet")]) == 1, (table, sweep_id)
    keys_second = {k for keys in second.table.column("stage_keys").to_pylist() for k in keys}
    keys_first = {k for keys in first.table.column("stage_keys").to_pylist() for k in keys}
    assert keys_first and keys_second and not keys_first & keys_second
    assert {e.key for e in cache_entries(storage)} >= keys_first | keys_second

    plan = collect(storage, keep_last=1)
    assert plan.kept_sweeps == (second.summary.sweep_id,)
    assert {e.key for e in plan.remove} >= keys_first
    left = {e.key for e in cache_entries(storage)}
    assert keys_second <= left and not keys_first & left
    assert load_results(storage, sweep=first.summary.sweep_id).num_rows == first.table.num_rows

    again = execute_sweep(prepare_sweep(str(other), storage=storage, trials=1))
    assert again.summary.stages_executed == 0
    assert again.summary.stages_loaded >= 1
    assert again.summary.corrupt_checkpoints == 0
    assert set(again.table.column("status").to_pylist()) == {"ok"}


def test_gc_removes_stale_stage_claims_and_never_a_live_one(store: Path) -> None:
    """Claims left by sweeps that died (`cache/.claims/`, orchestrator.store.claims) go with gc:
    a dead pid's on this host, another host's claim untouched beyond the stale bound, and an
    old leftover of an interrupted takeover; a live claim (a running pid, another host's
    fresh claim, a takeover in progress) stays. A dry run lists them and removes nothing."""
    import socket
    import subprocess
    import sys
    import time

    from orchestrator.store.claims import STALE_S

    claims = store / CACHE_DIR / ".claims"
    claims.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    here = socket.gethostname()

    def claim(name: str, pid: int, host: str, *, age_s: float = 0.0) -> None:
        path = claims / name
        path.write_text(json.dumps({"pid": pid, "host": host, "token": name, "claimed_at": 0.0}))
        then = time.time() - age_s
        os.utime(path, (then, then))

    claim("dead.claim", int(dead.stdout), here)
    claim("silent.claim", 1, "elsewhere", age_s=2 * STALE_S)
    claim("k1.claim.stale.tok", 1, "elsewhere", age_s=2 * STALE_S)
    claim("live.claim", os.getpid(), here)
    claim("remote.claim", 1, "elsewhere", age_s=STALE_S / 2)
    claim("k2.claim.stale.tok", 1, "elsewhere")
    stale = {"dead.claim", "silent.claim", "k1.claim.stale.tok"}
    live = {"live.claim", "remote.claim", "k2.claim.stale.tok"}

    plan = collect(store, dry_run=True, now=NOW)
    assert {Path(p).name for p in plan.claims} == stale
    assert {p.name for p in claims.iterdir()} == stale | live
    result = CliRunner().invoke(app, ["gc", "--storage", str(store)])
    assert result.exit_code == 0, result.output
    assert "removed 3 stale stage claim(s)" in result.output
    assert {p.name for p in claims.iterdir()} == live
    assert collect(store, now=NOW).claims == ()
