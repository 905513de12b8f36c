"""Results compaction: every row survives (with appends and readers running alongside), a crash
between the merged write and the part deletion loses and duplicates nothing, new columns are
carried, and queries read only the partition they need."""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.store import compact as compact_mod
from orchestrator.store.compact import compact_storage, compact_sweep
from orchestrator.store.results import (
    SUMMARY_NAME,
    append_results,
    append_stage_rows,
    list_sweeps,
    load_results,
    load_stages,
)
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError
from tests.rows import T0, result_row


def _row(sweep: str, trial: str, minute: int, **values: Any) -> dict[str, Any]:
    """A row of sweep `s<N>` starts N days after T0 (sweeps in order), `minute` into it."""
    day = int(sweep[1:]) if sweep[1:].isdigit() else 0
    return result_row(sweep, trial, minute, start=T0 + timedelta(days=day), **values)


def _parts(storage: Path | str, sweep: str, table: str = "results") -> list[str]:
    directory = Path(storage) / table / f"sweep_id={sweep}"
    return sorted(n for n in os.listdir(directory) if n.endswith(".parquet") and n[0] not in "._")


def _ids(table: pa.Table) -> list[tuple[str, str]]:
    return list(
        zip(table.column("sweep_id").to_pylist(), table.column("trial_id").to_pylist(), strict=True)
    )


def _fill(storage: Path, sweeps: int, trials: int) -> None:
    for s in range(sweeps):
        append_results(storage, [_row(f"s{s}", "baseline", 0)])
        for t in range(trials):
            append_results(storage, [_row(f"s{s}", f"t{t:03d}", t + 1)])
        append_stage_rows(
            storage,
            [
                {
                    "stage_key": f"k{s}-{j}",
                    "stage": "teacher",
                    "sweep_id": f"s{s}",
                    "finished_at": T0,
                }
                for j in range(2)
            ],
        )
        append_stage_rows(
            storage,
            [{"stage_key": f"k{s}-9", "stage": "distill", "sweep_id": f"s{s}", "finished_at": T0}],
        )


def test_compaction_merges_each_sweep_into_one_file_and_keeps_every_row(tmp_path: Path) -> None:
    _fill(tmp_path, sweeps=3, trials=6)
    before, listing, stages = (
        load_results(tmp_path, sweep="all"),
        list_sweeps(tmp_path),
        load_stages(tmp_path, sweep="all"),
    )
    done = compact_storage(tmp_path)
    assert {(c.sweep_id, c.table) for c in done if c.changed} == {
        (f"s{i}", t) for i in range(3) for t in ("results", "stages")
    }
    for s in range(3):
        assert len(_parts(tmp_path, f"s{s}")) == 1
        assert len(_parts(tmp_path, f"s{s}", "stages")) == 1
    assert load_results(tmp_path, sweep="all").equals(before)
    assert list_sweeps(tmp_path).equals(listing)
    assert sorted(load_stages(tmp_path, sweep="all").column("stage_key").to_pylist()) == sorted(
        stages.column("stage_key").to_pylist()
    )
    # Compacting again changes nothing.
    assert not any(c.changed for c in compact_storage(tmp_path))
    assert load_results(tmp_path, sweep="all").equals(before)


def test_compact_unknown_sweep_and_empty_storage_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SqueezerayError, match="holds no results"):
        compact_storage(tmp_path)
    _fill(tmp_path, sweeps=1, trials=1)
    with pytest.raises(SqueezerayError, match=r"'nope' is not in storage.*s0"):
        compact_storage(tmp_path, sweep="nope")


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=8),
    concurrent=st.integers(min_value=0, max_value=8),
    repeats=st.integers(min_value=1, max_value=3),
)
def test_property_compaction_preserves_every_row_with_appends_and_readers(
    batches: list[int], concurrent: int, repeats: int
) -> None:
    """Rows appended in batches; while the sweep is compacted (`repeats` times), another thread
    appends `concurrent` more trials and a reader polls: every read sees each trial at most once
    and every trial whose append had returned before the read began; at the end every row is
    there exactly once, with its values."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        written: dict[str, dict[str, Any]] = {}
        n = 0
        for size in batches:
            rows = [_row("s1", f"t{n + i:04d}", n + i) for i in range(size)]
            append_results(storage, rows)
            written.update({r["trial_id"]: r for r in rows})
            n += size
        append_results(storage, [_row("s2", "t0000", 0)])  # another sweep, not compacted
        done: set[str] = set(written)  # trials whose append has returned
        guard = threading.Lock()
        stop = threading.Event()
        problems: list[str] = []

        def appender() -> None:
            for i in range(concurrent):
                row = _row("s1", f"c{i:04d}", 500 + i)
                append_results(storage, [row])
                with guard:
                    written[row["trial_id"]] = row
                    done.add(row["trial_id"])

        def reader() -> None:
            while not stop.is_set():
                with guard:
                    expected = set(done)
                table = load_results(storage, sweep="s1")
                trials = table.column("trial_id").to_pylist()
                if len(trials) != len(set(trials)):
                    problems.append(f"duplicate rows: {sorted(trials)}")
                if missing := expected - set(trials):
                    problems.append(f"rows missing during compaction: {sorted(missing)}")

        real_delete = compact_mod._delete_parts

        def slow_delete(fs: Any, paths: Any) -> int:
            # Widen the overlap (merged file and parts both visible, parts half deleted) so
            # the reader lands in it; a real object store's deletes take this long anyway.
            count = 0
            for path in paths:
                time.sleep(0.01)
                count += real_delete(fs, [path])
            return count

        threads = [threading.Thread(target=appender), threading.Thread(target=reader)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(compact_mod, "_delete_parts", slow_delete)
            for t in threads:
                t.start()
            try:
                for _ in range(repeats):
                    compact_sweep(storage, "s1")
            finally:
                threads[0].join()
                stop.set()
                threads[1].join()
        assert problems == []
        compact_sweep(storage, "s1")
        table = load_results(storage, sweep="s1")
        assert sorted(table.column("trial_id").to_pylist()) == sorted(written)
        for row in table.to_pylist():
            want = written[row["trial_id"]]
            assert (row["test_accuracy"], row["size_bytes"], row["stage_keys"]) == (
                want["test_accuracy"],
                want["size_bytes"],
                want["stage_keys"],
            )
        assert len(_parts(storage, "s1")) == 1
        assert len(_parts(storage, "s2")) == 1  # untouched
        assert load_results(storage, sweep="s2").num_rows == 1


@pytest.mark.parametrize("deleted_before_crash", [0, 2])
def test_crash_between_merged_write_and_part_deletion_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleted_before_crash: int
) -> None:
    _fill(tmp_path, sweeps=2, trials=5)
    before, listing, stages = (
        load_results(tmp_path, sweep="all"),
        list_sweeps(tmp_path),
        load_stages(tmp_path, sweep="all"),
    )
    parts = _parts(tmp_path, "s1")
    real_delete = compact_mod._delete_parts

    def crash(fs: Any, paths: Any) -> int:
        real_delete(fs, list(paths)[:deleted_before_crash])
        raise KeyboardInterrupt("killed between the merged write and the deletion")

    monkeypatch.setattr(compact_mod, "_delete_parts", crash)
    with pytest.raises(KeyboardInterrupt):
        compact_sweep(tmp_path, "s1")
    # The merged file and (some of) the parts exist side by side: nothing lost, nothing twice.
    left = _parts(tmp_path, "s1")
    assert len(left) == len(parts) - deleted_before_crash + 1
    assert load_results(tmp_path, sweep="all").equals(before)
    assert load_results(tmp_path, sweep="s1").equals(load_results(tmp_path, sweep="s1"))
    assert list_sweeps(tmp_path).equals(listing)
    assert load_stages(tmp_path, sweep="all").num_rows == stages.num_rows
    # The next compaction (here: `squeezeray compact`) finishes the job.
    monkeypatch.setattr(compact_mod, "_delete_parts", real_delete)
    compact_storage(tmp_path, sweep="s1")
    assert len(_parts(tmp_path, "s1")) == 1
    assert load_results(tmp_path, sweep="all").equals(before)
    assert list_sweeps(tmp_path).equals(listing)


def test_compaction_carries_columns_beyond_the_schema(tmp_path: Path) -> None:
    """A newer squeezeray added a column: the merged file keeps it (and the store's own)."""
    append_results(tmp_path, [_row("s1", "t1", 1)])
    directory = tmp_path / "results" / "sweep_id=s1"
    newer = pq.read_table(directory / _parts(tmp_path, "s1")[0])
    # (a name no squeezeray schema has: `error_log` was the example until it became a column)
    newer = newer.append_column("newer_column", pa.array(["logs/t2.txt"]))
    newer = newer.set_column(newer.schema.get_field_index("trial_id"), "trial_id", pa.array(["t2"]))
    pq.write_table(newer, directory / "newer-writer.parquet")
    compact_sweep(tmp_path, "s1")
    (merged,) = _parts(tmp_path, "s1")
    table = pq.read_table(directory / merged)
    assert table.column("newer_column").to_pylist() == [None, "logs/t2.txt"]
    # ... and every column the store's schema holds, whatever other developers added to it.
    assert set(RESULTS_SCHEMA.names) - {"sweep_id"} <= set(table.column_names)
    assert set(load_results(tmp_path, sweep="all").column("trial_id").to_pylist()) == {"t1", "t2"}


def test_queries_read_only_the_needed_partition_after_compaction(tmp_path: Path) -> None:
    _fill(tmp_path, sweeps=3, trials=3)
    compact_storage(tmp_path)
    listing = list_sweeps(tmp_path)
    # Break the older sweeps' data files: latest, --sweep s2 and sweeps must not open them.
    for s in ("s0", "s1"):
        (merged,) = _parts(tmp_path, s)
        (tmp_path / "results" / f"sweep_id={s}" / merged).write_bytes(b"not parquet")
    assert set(load_results(tmp_path, sweep="latest").column("sweep_id").to_pylist()) == {"s2"}
    assert load_results(tmp_path, sweep="s2").num_rows == 4
    assert list_sweeps(tmp_path).equals(listing)
    with pytest.raises(Exception):  # noqa: B017 - the broken files are read by "all"
        load_results(tmp_path, sweep="all")


def test_summary_goes_stale_when_a_resumed_sweep_appends(tmp_path: Path) -> None:
    _fill(tmp_path, sweeps=1, trials=2)
    compact_storage(tmp_path)
    assert (tmp_path / "results" / "sweep_id=s0" / SUMMARY_NAME).exists()
    append_results(tmp_path, [_row("s0", "t900", 9, status="error", test_accuracy=None)])
    (row,) = list_sweeps(tmp_path).to_pylist()
    assert (row["trials_ok"], row["trials_failed"]) == (2, 1)
    compact_storage(tmp_path)
    assert list_sweeps(tmp_path).to_pylist() == [row]


def test_a_summary_from_before_the_stopped_count_is_not_trusted(tmp_path: Path) -> None:
    """A partition summary written before `trials_stopped` existed counted ASHA's stops as
    failed: the sweep is listed from its rows instead (stopped apart, new user F21)."""
    import json

    _fill(tmp_path, sweeps=1, trials=2)
    append_results(tmp_path, [_row("s0", "t900", 9, status="stopped", test_accuracy=None)])
    compact_storage(tmp_path)
    (row,) = list_sweeps(tmp_path).to_pylist()
    assert (row["trials_ok"], row["trials_stopped"], row["trials_failed"]) == (2, 1, 0)
    path = tmp_path / "results" / "sweep_id=s0" / SUMMARY_NAME
    old = json.loads(path.read_text())
    del old["sweep"]["trials_stopped"]
    old["sweep"]["trials_failed"] = 1
    path.write_text(json.dumps(old))
    assert list_sweeps(tmp_path).to_pylist() == [row]


def test_compaction_on_an_fsspec_memory_uri() -> None:
    uri = f"memory://squeezeray-compact-{uuid.uuid4().hex[:8]}/store"
    for t in range(4):
        append_results(uri, [_row("s1", f"t{t}", t)])
    before = load_results(uri, sweep="all")
    done = compact_storage(uri)
    assert [c.files_before for c in done if c.changed] == [4]
    assert load_results(uri, sweep="all").equals(before)
    assert list_sweeps(uri).column("trials_ok").to_pylist() == [4]


@pytest.fixture
def s3_uri(s3_server: str) -> str:
    """An S3 URI (MinIO style: endpoint in the query string) on the local moto server."""
    return f"s3://squeeze/store?scheme=http&endpoint_override={s3_server}&region=us-east-1"


def test_compaction_and_gc_on_s3_with_a_crash_between_write_and_delete(
    s3_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an object store there is no rename: the merged object is uploaded, then the parts
    are deleted. A crash in between leaves both; readers see each row once."""
    from orchestrator.store.gc import cache_entries, collect
    from orchestrator.store.storage import open_storage

    store = open_storage(s3_uri)
    assert store.fs.type_name == "s3"
    for s in range(2):
        for t in range(3):
            append_results(s3_uri, [_row(f"s{s}", f"t{t}", t, stage_keys=[f"k{s}", f"k{s}{t}"])])
    before, listing = load_results(s3_uri, sweep="all"), list_sweeps(s3_uri)

    def crash(fs: Any, paths: Any) -> int:
        raise KeyboardInterrupt("killed after the merged upload")

    with monkeypatch.context() as mp:
        mp.setattr(compact_mod, "_delete_parts", crash)
        with pytest.raises(KeyboardInterrupt):
            compact_sweep(s3_uri, "s0")
    assert len(_s3_parts(store, "s0")) == 4  # 3 parts + the merged object
    assert load_results(s3_uri, sweep="all").equals(before)
    assert list_sweeps(s3_uri).equals(listing)

    compact_storage(s3_uri)
    assert [len(_s3_parts(store, s)) for s in ("s0", "s1")] == [1, 1]
    assert load_results(s3_uri, sweep="all").equals(before)
    assert list_sweeps(s3_uri).equals(listing)
    assert load_results(s3_uri, sweep="latest").column("sweep_id").unique().to_pylist() == ["s1"]

    for key in ("k0", "k00", "k1", "k10", "orphan"):
        for name in (f"{key}.ckpt", f"{key}.json"):
            with store.fs.open_output_stream(store.path("cache", name)) as f:
                f.write(b"x" * 10)
    assert {e.key for e in collect(s3_uri, keep_last=1, dry_run=True).remove} == {
        "k0", "k00", "orphan",
    }  # fmt: skip
    collect(s3_uri, keep_last=1)
    assert {e.key for e in cache_entries(s3_uri)} == {"k1", "k10"}
    assert load_results(s3_uri, sweep="all").equals(before)


def _s3_parts(store: Any, sweep: str) -> list[str]:
    from orchestrator.store.results import partition_files

    return [
        f.base_name for f in partition_files(store.fs, store.path("results", f"sweep_id={sweep}"))
    ]


def test_compact_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    _fill(tmp_path, sweeps=2, trials=3)
    runner = CliRunner()
    assert (
        "2 sweep(s) not compacted"
        in runner.invoke(app, ["sweeps", "--storage", str(tmp_path)]).output
    )
    result = runner.invoke(app, ["compact", "--storage", str(tmp_path), "--sweep", "s1"])
    assert result.exit_code == 0, result.output
    assert "compacted 1 sweep(s): 6 file(s) merged into 2" in result.output  # 4 + 2 stage files
    assert len(_parts(tmp_path, "s0")) == 4 and len(_parts(tmp_path, "s1")) == 1
    assert (
        "1 sweep(s) not compacted"
        in runner.invoke(app, ["sweeps", "--storage", str(tmp_path)]).output
    )
    result = runner.invoke(app, ["compact", "--storage", str(tmp_path)])
    assert "not compacted" not in runner.invoke(app, ["sweeps", "--storage", str(tmp_path)]).output
    assert (
        "compacted 1 sweep(s)" in result.output
        and "1 sweep(s) were already compact" in result.output
    )
    result = runner.invoke(app, ["compact", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "holds no results or stage rows" in result.output


def test_a_summary_written_by_other_code_is_not_trusted_and_compact_rewrites_it(
    tmp_path: Path,
) -> None:
    import json

    from orchestrator.store.results import summary_version

    _fill(tmp_path, sweeps=1, trials=2)
    compact_storage(tmp_path)
    path = tmp_path / "results" / "sweep_id=s0" / SUMMARY_NAME
    data = json.loads(path.read_text())
    assert data["version"] == summary_version() and data["sweep"]["trials_ok"] == 2
    data["version"], data["sweep"]["trials_ok"] = "older-code", 999
    path.write_text(json.dumps(data))
    assert list_sweeps(tmp_path).column("trials_ok").to_pylist() == [2]
    assert not any(c.changed for c in compact_storage(tmp_path))  # nothing to merge ...
    assert json.loads(path.read_text())["version"] == summary_version()  # ... summary renewed


def test_a_failing_compaction_at_sweep_end_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep's rows are all written before it compacts: a compaction failure must not turn a
    finished sweep into a failed one. The warning says how to retry."""
    from orchestrator.engine.sweep import _compact_quietly
    from orchestrator.store.storage import open_storage

    _fill(tmp_path, sweeps=1, trials=2)
    before = load_results(tmp_path, sweep="all")

    def broken(storage: Any, sweep_id: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(compact_mod, "compact_sweep", broken)
    with caplog.at_level("WARNING"):
        _compact_quietly(open_storage(tmp_path), "s0")
    assert "could not compact sweep s0 (disk full)" in caplog.text
    assert f"squeezeray compact --storage {tmp_path} --sweep s0" in caplog.text
    assert load_results(tmp_path, sweep="all").equals(before)
