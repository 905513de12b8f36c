"""The results store: layout, atomic appends, schema checks, sweep selection, readers."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from orchestrator.store.results import (
    append_results,
    append_stage_rows,
    keep_last_per_trial,
    list_sweeps,
    load_results,
    load_stages,
    resolve_storage,
)
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError
from tests.rows import T0, make_rows


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    append_results(root, make_rows("a-1", seed=1, start=T0))
    append_results(root, make_rows("b-2", seed=2, start=T0 + timedelta(days=1)))
    return root


def test_layout_is_hive_partitioned_and_files_are_complete(storage: Path) -> None:
    parts = sorted(p.name for p in (storage / "results").iterdir())
    assert parts == ["sweep_id=a-1", "sweep_id=b-2"]
    files = list((storage / "results").rglob("*"))
    assert not [f for f in files if f.name.startswith((".", "_"))]  # no temp file left behind
    import pyarrow.parquet as pq

    for f in (storage / "results").rglob("*.parquet"):
        schema = pq.read_schema(f)
        assert "sweep_id" not in schema.names  # carried by the directory name
        assert schema.field("test_accuracy").type == pa.float64()


def test_load_all_latest_and_one(storage: Path) -> None:
    everything = load_results(storage, sweep="all")
    assert everything.schema.names == RESULTS_SCHEMA.names
    assert everything.num_rows == 50
    assert set(everything.column("sweep_id").to_pylist()) == {"a-1", "b-2"}
    latest = load_results(storage, sweep="latest")
    assert set(latest.column("sweep_id").to_pylist()) == {"b-2"}
    one = load_results(str(storage), sweep="a-1")
    assert one.num_rows == 25
    assert one.column("is_baseline").to_pylist().count(True) == 1


def test_latest_is_by_start_time_not_by_name(tmp_path: Path) -> None:
    append_results(tmp_path, make_rows("zzz", n=2, start=T0))
    append_results(tmp_path, make_rows("aaa", n=2, start=T0 + timedelta(hours=1)))
    assert set(load_results(tmp_path, sweep="latest").column("sweep_id").to_pylist()) == {"aaa"}


def test_unknown_sweep_lists_the_known_ones(storage: Path) -> None:
    with pytest.raises(SqueezerayError, match=r"'nope'.*a-1, b-2"):
        load_results(storage, sweep="nope")


def test_missing_storage_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(SqueezerayError, match=r"no results at .*squeezeray sweep --storage"):
        load_results(tmp_path / "nothing-here", sweep="all")


def test_rewritten_trial_keeps_the_latest_finished_row(tmp_path: Path) -> None:
    rows = make_rows("s", n=3, failures=0)
    append_results(tmp_path, rows)
    again = dict(
        rows[1],
        status="error",
        error="second run",
        finished_at=rows[1]["finished_at"] + timedelta(minutes=5),
    )
    older = dict(
        rows[2], test_accuracy=0.1, finished_at=rows[2]["finished_at"] - timedelta(minutes=5)
    )
    append_results(tmp_path, [again, older])
    table = load_results(tmp_path, sweep="all")
    assert table.num_rows == 4
    by_trial = {r["trial_id"]: r for r in table.to_pylist()}
    assert by_trial["t000"]["error"] == "second run"
    assert by_trial["t001"]["test_accuracy"] == rows[2]["test_accuracy"]  # the older copy lost


def test_keep_last_per_trial_breaks_time_ties_by_read_order() -> None:
    rows = make_rows("s", n=1, failures=0)
    table = pa.Table.from_pylist([rows[1], dict(rows[1], test_accuracy=0.5)], schema=RESULTS_SCHEMA)
    assert keep_last_per_trial(table).column("test_accuracy").to_pylist() == [0.5]


def test_unknown_key_and_missing_required_value_are_errors(tmp_path: Path) -> None:
    row = make_rows("s", n=0)[0]
    with pytest.raises(SqueezerayError, match=r"unknown column\(s\) 'acuracy'.*accepted: sweep_id"):
        append_results(tmp_path, [dict(row, acuracy=0.9)])
    with pytest.raises(SqueezerayError, match="required column 'status'"):
        append_results(tmp_path, [dict(row, status=None)])
    with pytest.raises(SqueezerayError, match="'size_bytes' expects int64"):
        append_results(tmp_path, [dict(row, size_bytes="big")])
    assert not (tmp_path / "results").exists() or not list(
        (tmp_path / "results").rglob("*.parquet")
    )


def test_missing_columns_are_null(tmp_path: Path) -> None:
    append_results(
        tmp_path, [{"sweep_id": "s", "trial_id": "t", "status": "error", "is_baseline": False}]
    )
    row = load_results(tmp_path, sweep="all").to_pylist()[0]
    assert row["test_accuracy"] is None and row["stage_keys"] is None and row["sweep_id"] == "s"


def test_two_writers_never_clash(tmp_path: Path) -> None:
    """Many appends of the same sweep (as from several processes) all survive."""
    for i in range(5):
        append_results(tmp_path, make_rows("s", n=2, seed=i, failures=0)[1:])
    assert len(list((tmp_path / "results" / "sweep_id=s").glob("*.parquet"))) == 5
    # same trial ids from each seed -> dedup keeps 2 trials
    assert load_results(tmp_path, sweep="all").num_rows == 2


def test_forked_child_gets_its_own_file_names(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    pid = os.fork()
    if pid == 0:  # child: write and exit at once
        try:
            append_results(tmp_path, make_rows("s", n=1, failures=0)[1:])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    append_results(tmp_path, make_rows("s", n=1, failures=0)[1:])
    names = [p.name for p in (tmp_path / "results" / "sweep_id=s").glob("*.parquet")]
    assert len(names) == 2 and len({n.split("-")[0] for n in names}) == 2


def test_partial_and_hidden_files_are_ignored(storage: Path) -> None:
    part = storage / "results" / "sweep_id=a-1"
    (part / ".123-abc-000009.parquet.tmp").write_bytes(b"PAR1 half a file")
    (part / "_SUCCESS").write_text("")
    assert load_results(storage, sweep="a-1").num_rows == 25


def test_odd_sweep_ids_round_trip(tmp_path: Path) -> None:
    append_results(tmp_path, make_rows("my sweep/ä", n=1))
    assert load_results(tmp_path, sweep="all").column("sweep_id").to_pylist()[0] == "my sweep/ä"


def test_pandas_pyarrow_dataset_and_duckdb_read_it_unchanged(storage: Path) -> None:
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    frame = pd.read_parquet(storage / "results")
    assert len(frame) == 50 and set(frame["sweep_id"].astype(str)) == {"a-1", "b-2"}
    assert ds.dataset(storage / "results", partitioning="hive").count_rows() == 50
    glob = (storage / "results" / "*" / "*.parquet").as_posix()
    rows = duckdb.sql(
        f"SELECT sweep_id, count(*), max(test_accuracy) FROM read_parquet('{glob}', "
        "hive_partitioning = true) WHERE NOT is_baseline GROUP BY sweep_id ORDER BY sweep_id"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("a-1", 24), ("b-2", 24)]
    expected = frame[~frame["is_baseline"] & (frame["sweep_id"] == "a-1")]["test_accuracy"].max()
    assert rows[0][2] == pytest.approx(expected)


def test_memory_uri_storage() -> None:
    uri = f"memory://squeezeray-test-{os.getpid()}/runs"
    append_results(uri, make_rows("m", n=3))
    fs, root = resolve_storage(uri)
    assert fs.type_name.startswith("py")  # fsspec wrapped for pyarrow
    assert root.endswith("runs")
    assert load_results(uri, sweep="all").num_rows == 4


def test_file_uri_is_the_local_path(storage: Path) -> None:
    assert load_results(f"file://{storage}", sweep="a-1").num_rows == 25


def test_stage_rows_round_trip(tmp_path: Path) -> None:
    stage = {
        "stage_key": "k1",
        "stage": "teacher",
        "params": "{}",
        "sweep_id": "s",
        "wall_s": 1.5,
        "cpu_s": 1.2,
        "finished_at": T0,
    }
    append_stage_rows(tmp_path, [stage, dict(stage, stage_key="k2", sweep_id=None)])
    table = load_stages(tmp_path, sweep="all")
    assert sorted(
        zip(
            table.column("stage_key").to_pylist(), table.column("sweep_id").to_pylist(), strict=True
        )
    ) == [("k1", "s"), ("k2", None)]
    assert load_stages(tmp_path, sweep="s").column("stage_key").to_pylist() == ["k1"]


def test_list_sweeps_columns_mean_the_same_for_every_status(storage: Path) -> None:
    """started_at is the sweep's start (its manifest's), not its first row's, and a sweep
    listed from its manifest alone (it crashed before any row) is named as its rows would
    be (the space's name, else its id): one meaning per column whatever the status."""
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app

    sweeps = storage / "sweeps"
    sweeps.mkdir()
    start = T0 - timedelta(minutes=1, seconds=4)  # Ray up, checks passed: before any trial
    (sweeps / "a-1.json").write_text(json.dumps(
        {"status": "interrupted", "name": "a", "started_at": start.isoformat(),
         "updated_at": (T0 + timedelta(hours=1)).isoformat(), "resume_command": "resume a-1"}
    ))  # fmt: skip
    (sweeps / "c-3.json").write_text(json.dumps(
        {"status": "failed", "name": None, "task": "digits",
         "started_at": (T0 + timedelta(days=3)).isoformat(),
         "updated_at": (T0 + timedelta(days=3, minutes=2)).isoformat()}
    ))  # fmt: skip
    rows = {r["sweep_id"]: r for r in list_sweeps(storage).to_pylist()}
    assert rows["a-1"]["started_at"] == start
    assert rows["b-2"]["started_at"] == T0 + timedelta(days=1)  # no manifest: its rows' start
    assert rows["c-3"]["started_at"] == T0 + timedelta(days=3)  # not its last update
    assert rows["c-3"]["sweep_name"] == "c-3" and rows["a-1"]["sweep_name"] == "a"
    listed = CliRunner().invoke(app, ["sweeps", "--storage", str(storage)])
    assert listed.exit_code == 0, listed.output
    assert start.strftime("%Y-%m-%d %H:%M:%S") in listed.stdout


def test_sweeps_of_a_storage_where_no_sweep_started(tmp_path: Path) -> None:
    """A sweep refused by a check after taking its lock leaves only hidden lock files under
    sweeps/: `squeezeray sweeps` says there are none (exit 0), not "no results at"; a storage
    that holds nothing at all is still an error naming how to make one."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    storage = tmp_path / "runs_fit"
    (storage / "sweeps").mkdir(parents=True)
    (storage / "sweeps" / ".tiny-20261207-043056-0001.lock").write_text("")
    assert list_sweeps(storage).num_rows == 0
    listed = CliRunner().invoke(app, ["sweeps", "--storage", str(storage)])
    assert listed.exit_code == 0, listed.output
    assert "no sweeps in" in listed.stdout and "none has started" in listed.stdout
    missing = CliRunner().invoke(app, ["sweeps", "--storage", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "squeezeray sweep --storage" in missing.stderr


def test_list_sweeps(storage: Path) -> None:
    listing = list_sweeps(storage)
    rows = listing.to_pylist()
    assert [r["sweep_id"] for r in rows] == ["a-1", "b-2"]  # by start time
    assert rows[0]["trials_ok"] == 22 and rows[0]["trials_failed"] == 2
    assert rows[0]["trials_stopped"] == 0
    assert rows[0]["task"] == "digits" and rows[0]["sweep_name"] == "a"
    assert rows[0]["started_at"] == T0
    assert all(r["hypervolume"] is not None and r["hypervolume"] > 0 for r in rows)


def test_sweeps_count_scheduler_stops_apart_from_failures(tmp_path: Path) -> None:
    """Trials ASHA stopped early are `stopped`, not failed, in `list_sweeps` and in
    `squeezeray sweeps`, as in the sweep's own summary line (new user F21)."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    rows = make_rows("a-1", n=10, failures=1)  # the baseline, t000 failed, then 9 ok
    for row in rows[2:8]:
        row.update(status="stopped", test_accuracy=None, error="stopped early by the scheduler")
    append_results(tmp_path, rows)
    (listed,) = list_sweeps(tmp_path).to_pylist()
    assert (listed["trials_ok"], listed["trials_stopped"], listed["trials_failed"]) == (3, 6, 1)
    shown = CliRunner().invoke(app, ["sweeps", "--storage", str(tmp_path)], env={"COLUMNS": "160"})
    assert shown.exit_code == 0, shown.output
    header, row = _table_lines(shown.stdout, "stopped"), _table_lines(shown.stdout, "a-1")
    assert header.split()[-4:] == ["ok", "stopped", "failed", "hypervolume"], header
    assert row.split()[-4:-1] == ["3", "6", "1"], row


def _table_lines(text: str, word: str) -> str:
    (line,) = [line for line in text.splitlines() if word in line.split()]
    return line
