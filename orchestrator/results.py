"""The results store: one Parquet dataset per storage location, hive-partitioned by sweep.

    <storage>/results/sweep_id=<id>/<pid>-<token>-<seq>.parquet   trial + baseline rows
    <storage>/stages/sweep_id=<id>/<pid>-<token>-<seq>.parquet    stage rows

Every append is a new file with the explicit schema (`orchestrator.schema`), written under a
hidden temp name and renamed into place, so readers (which skip names starting with `.` or
`_`) never see a partial file, and two processes never write the same name. The partition
column `sweep_id` lives in the directory name only (the hive convention), so pandas
(`pd.read_parquet(storage + "/results")`), `pyarrow.dataset` and DuckDB
(`read_parquet('.../results/*/*.parquet', hive_partitioning=true)`) read the files unchanged.
Ids are percent-encoded in directory names when they hold characters outside [A-Za-z0-9._-].

A trial may be written twice (a resumed sweep re-reports it): `load_results` keeps, for each
(sweep_id, trial_id), the row with the latest `finished_at` (on equal or missing times, the
one read last).
"""

from __future__ import annotations

import itertools
import os
import re
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.schema import RESULTS_SCHEMA, STAGES_SCHEMA
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

RESULTS_DIR = "results"
STAGES_DIR = "stages"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # pyarrow's (and Hive's) name for a null value

_seq = itertools.count()
_writer: tuple[int, str] | None = None  # (pid, token): a forked child gets its own token


def resolve_storage(storage: str | Path) -> tuple[pafs.FileSystem, str]:
    """A filesystem and the root path on it, for a local path or a URI (file://, s3://, gs://,
    memory:// and other fsspec protocols)."""
    from orchestrator.storage import open_storage

    store = open_storage(storage)
    return store.fs, store.root.rstrip("/") or "/"


def _writer_name() -> str:
    global _writer
    pid = os.getpid()
    if _writer is None or _writer[0] != pid:
        _writer = (pid, uuid.uuid4().hex[:12])
    return f"{pid}-{_writer[1]}-{next(_seq):06d}"


# Partition values that hive readers type-infer to something other than a string: pandas and
# pyarrow read `sweep_id=007` as the int32 7 (also 0x1f, 0b101); DuckDB reads 20250101 as a
# BIGINT, 2025-01-01 as a DATE, 2025-01-01T10:00 as a TIMESTAMP and 'epoch'/'infinity' as dates.
_INTEGER_LIKE = re.compile(r"[+-]?([0-9][0-9_]*|0[xXbBoO][0-9A-Fa-f_]+)")
_DATE_LIKE = re.compile(r"[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}([Tt ].*)?")
_DATE_WORDS = frozenset({"epoch", "infinity", "-infinity", "inf", "-inf", "nan"})


def ambiguous_sweep_id(value: str) -> str | None:
    """Why a hive-partitioned reader would not read `value` back as the string it is (a
    number, a date), or None when it would. Checked against pandas/pyarrow and DuckDB."""
    text = value.strip()
    if _INTEGER_LIKE.fullmatch(text):
        return "an integer (pandas and pyarrow read sweep_id=007 as the number 7)"
    if _DATE_LIKE.fullmatch(text) or text.lower() in _DATE_WORDS:
        return "a date or a special number (DuckDB reads it as a DATE/TIMESTAMP or float)"
    try:
        float(text)
    except ValueError:
        return None
    return "a number (a hive reader may read it as a float)"


def check_sweep_id_unambiguous(value: str, *, what: str = "sweep_id") -> None:
    """Refuse a sweep id that hive partitioning would read back as a number or a date."""
    reason = ambiguous_sweep_id(value)
    if reason is not None:
        raise SqueezerayError(
            f"{what} {value!r} looks like {reason}: results are partitioned by sweep id "
            "(hive style), so readers would not give it back as the string you filter on; "
            f"accepted: an id with a word in it, e.g. 'run-{value}'"
        )


def _partition_dir(value: str | None) -> str:
    if value is None:
        return f"sweep_id={NULL_PARTITION}"
    if not value:
        raise SqueezerayError("sweep_id='' is empty; every row needs a sweep id")
    check_sweep_id_unambiguous(value)
    return "sweep_id=" + urllib.parse.quote(value, safe="-._~")


# -- writing --------------------------------------------------------------------------------


def append_results(storage: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append trial/baseline rows (dicts keyed by RESULTS_SCHEMA columns; missing -> null)."""
    _append(storage, RESULTS_DIR, RESULTS_SCHEMA, rows)


def append_stage_rows(storage: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append stage rows (dicts keyed by STAGES_SCHEMA columns; missing -> null)."""
    _append(storage, STAGES_DIR, STAGES_SCHEMA, rows)


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows -> a table with exactly `schema`; unknown keys, nulls in required columns and
    values of the wrong type are SqueezerayErrors naming the column."""
    import pyarrow as pa

    names = set(schema.names)
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - names)
        if unknown:
            raise SqueezerayError(
                f"row {i} has unknown column(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(schema.names)}"
            )
    arrays = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if not field.nullable and any(v is None for v in values):
            i = next(i for i, v in enumerate(values) if v is None)
            raise SqueezerayError(f"row {i} has no value for required column {field.name!r}")
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SqueezerayError(
                f"column {field.name!r} expects {field.type}; could not convert {values[:3]!r}"
                f" ({exc})"
            ) from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def _append(
    storage: str | Path, kind: str, schema: pa.Schema, rows: Sequence[Mapping[str, Any]]
) -> None:
    import pyarrow.parquet as pq

    if not rows:
        return
    table = rows_to_table(rows, schema)
    fs, root = resolve_storage(storage)
    by_sweep: dict[str | None, list[int]] = {}
    for i, sweep_id in enumerate(table.column("sweep_id").to_pylist()):
        by_sweep.setdefault(sweep_id, []).append(i)
    for sweep_id, indices in by_sweep.items():
        part = table.take(indices) if len(by_sweep) > 1 else table
        part = part.drop_columns(["sweep_id"])  # the directory name carries it
        directory = f"{root}/{kind}/{_partition_dir(sweep_id)}"
        fs.create_dir(directory, recursive=True)
        name = f"{_writer_name()}.parquet"
        if fs.type_name in ("s3", "gcs"):
            # An object store publishes an object only once its upload completes.
            with fs.open_output_stream(f"{directory}/{name}") as sink:
                pq.write_table(part, sink, compression="zstd")
            continue
        tmp = f"{directory}/.{name}.tmp"
        with fs.open_output_stream(tmp) as sink:
            pq.write_table(part, sink, compression="zstd")
        fs.move(tmp, f"{directory}/{name}")


# -- reading --------------------------------------------------------------------------------


def _dataset(
    storage: str | Path, kind: str, schema: pa.Schema, *, required: bool = True
) -> ds.Dataset | None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs, root = resolve_storage(storage)
    base = f"{root}/{kind}"
    info = fs.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        if not required:
            return None
        raise SqueezerayError(
            f"no {kind} at {base!s} (storage={str(storage)!r}); run a sweep that writes there "
            f"first: squeezeray sweep --storage {storage}"
        )
    partitioning = ds.partitioning(pa.schema([("sweep_id", pa.string())]), flavor="hive")
    return ds.dataset(
        base, schema=schema, format="parquet", filesystem=fs, partitioning=partitioning
    )


def _sweep_starts(dataset: ds.Dataset) -> pa.Table:
    """(sweep_id, started_at) per sweep: the earliest started_at of its rows."""
    table = dataset.to_table(columns=["sweep_id", "started_at"])
    return table.group_by("sweep_id").aggregate([("started_at", "min")])


def _choose_sweep(dataset: ds.Dataset, sweep: str, storage: str | Path) -> str | None:
    """None for "all"; the id for "latest" or an id (checked to exist)."""
    if sweep == "all":
        return None
    starts = _sweep_starts(dataset)
    ids = starts.column("sweep_id").to_pylist()
    if not ids:
        raise SqueezerayError(
            f"storage={str(storage)!r} holds no results yet; run: squeezeray sweep "
            f"--storage {storage}"
        )
    if sweep == "latest":
        times = starts.column("started_at_min").to_pylist()
        ranked = sorted(zip(ids, times, strict=True), key=lambda it: (it[1] is not None, it[1]))
        return str(ranked[-1][0])
    if sweep not in ids:
        raise SqueezerayError(
            f"--sweep {sweep!r} is not in storage={str(storage)!r}; accepted: all, latest, or "
            f"one of {', '.join(sorted(map(str, ids)))} (see `squeezeray sweeps {storage}`)"
        )
    return sweep


def load_results(storage: str | Path, *, sweep: str = "all") -> pa.Table:
    """The results rows of one sweep (`sweep` = an id or "latest") or of all sweeps ("all").

    Rows come sorted by sweep_id, started_at, trial_id; a trial written twice keeps its row
    with the latest finished_at. A missing storage or an empty one is a SqueezerayError that
    says how to create it.
    """
    import pyarrow.dataset as ds

    dataset = _dataset(storage, RESULTS_DIR, RESULTS_SCHEMA)
    assert dataset is not None
    chosen = _choose_sweep(dataset, sweep, storage)
    flt = None if chosen is None else ds.field("sweep_id") == chosen
    table = dataset.to_table(filter=flt)
    if table.num_rows == 0:
        raise SqueezerayError(
            f"storage={str(storage)!r} holds no results yet; run: squeezeray sweep "
            f"--storage {storage}"
        )
    table = keep_last_per_trial(table)
    return table.sort_by(
        [("sweep_id", "ascending"), ("started_at", "ascending"), ("trial_id", "ascending")]
    )


def keep_last_per_trial(table: pa.Table) -> pa.Table:
    """For each (sweep_id, trial_id) keep the row with the latest finished_at (ties and
    nulls: the later row of the table)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    sweep_codes = pc.dictionary_encode(table.column("sweep_id")).combine_chunks()
    trial_codes = pc.dictionary_encode(table.column("trial_id")).combine_chunks()
    s = np.asarray(sweep_codes.indices.fill_null(-1), dtype=np.int64)
    t = np.asarray(trial_codes.indices.fill_null(-1), dtype=np.int64)
    key = (s + 1) * (len(trial_codes.dictionary) + 1) + (t + 1)  # one int per (sweep, trial)
    if np.unique(key).size == n:
        return table
    finished = pc.cast(table.column("finished_at"), pa.int64())
    when = np.asarray(finished.fill_null(np.iinfo(np.int64).min), dtype=np.int64)
    order = np.lexsort((np.arange(n), when, key))
    last = np.ones(n, dtype=bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    return table.take(np.sort(order[last]))


def load_stages(storage: str | Path, *, sweep: str = "all") -> pa.Table:
    """The stage rows of one sweep (an id or "latest", as in `load_results`) or of all."""
    import pyarrow.dataset as ds

    dataset = _dataset(storage, STAGES_DIR, STAGES_SCHEMA)
    assert dataset is not None
    chosen: str | None = None
    if sweep != "all":
        results = _dataset(storage, RESULTS_DIR, RESULTS_SCHEMA, required=False)
        if sweep == "latest" and results is not None:
            chosen = _choose_sweep(results, "latest", storage)
        elif sweep == "latest":
            ids = dataset.to_table(columns=["sweep_id", "finished_at"])
            chosen = ids.sort_by([("finished_at", "descending")]).column("sweep_id")[0].as_py()
        else:
            chosen = sweep
    flt = None if chosen is None else ds.field("sweep_id") == chosen
    return dataset.to_table(filter=flt)


def list_sweeps(storage: str | Path) -> pa.Table:
    """One row per sweep: sweep_id, sweep_name, task, started_at, finished_at, trials_ok,
    trials_failed, hypervolume (front of accuracy:max, size_bytes:min, latency_ms:min against
    `pareto.default_reference` of that sweep; null when it cannot be computed).

    Hypervolumes of different sweeps use each sweep's own reference, so compare them only
    between sweeps of the same task and similar baselines."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from orchestrator.pareto import DEFAULT_OBJECTIVES, hypervolume

    table = load_results(storage, sweep="all")
    out: dict[str, list[Any]] = {
        name: []
        for name in (
            "sweep_id", "sweep_name", "task", "started_at", "finished_at",
            "trials_ok", "trials_failed", "hypervolume",
        )
    }  # fmt: skip
    for sweep_id in pc.unique(table.column("sweep_id")).to_pylist():
        rows = table.filter(pc.equal(table.column("sweep_id"), sweep_id))
        trials = rows.filter(pc.invert(rows.column("is_baseline")))
        ok = int(pc.sum(pc.equal(trials.column("status"), "ok")).as_py() or 0)
        try:
            hv: float | None = hypervolume(rows, DEFAULT_OBJECTIVES)
        except SqueezerayError:
            hv = None
        out["sweep_id"].append(sweep_id)
        out["sweep_name"].append(_first(rows.column("sweep_name").to_pylist()))
        out["task"].append(_first(rows.column("task").to_pylist()))
        out["started_at"].append(pc.min(rows.column("started_at")).as_py())
        out["finished_at"].append(pc.max(rows.column("finished_at")).as_py())
        out["trials_ok"].append(ok)
        out["trials_failed"].append(trials.num_rows - ok)
        out["hypervolume"].append(hv)
    schema = pa.schema(
        [
            ("sweep_id", pa.string()),
            ("sweep_name", pa.string()),
            ("task", pa.string()),
            ("started_at", RESULTS_SCHEMA.field("started_at").type),
            ("finished_at", RESULTS_SCHEMA.field("finished_at").type),
            ("trials_ok", pa.int64()),
            ("trials_failed", pa.int64()),
            ("hypervolume", pa.float64()),
        ]
    )
    return pa.table(out, schema=schema).sort_by([("started_at", "ascending")])


def _first(values: list[Any]) -> Any:
    return next((v for v in values if v is not None), None)
