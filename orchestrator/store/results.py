"""The results store: one Parquet dataset per storage location, hive-partitioned by sweep.

    <storage>/results/sweep_id=<id>/<pid>-<token>-<seq>.parquet   trial + baseline rows
    <storage>/stages/sweep_id=<id>/<pid>-<token>-<seq>.parquet    stage rows

Every append is a new file with the explicit schema (`orchestrator.store.schema`), written under a
hidden temp name and renamed into place (`faults.atomic_write`), so readers (which skip names
starting with `.` or `_`) never see a partial file, and two processes never write the same
name. The partition column `sweep_id` lives in the directory name only (the hive convention),
so pandas (`pd.read_parquet(storage + "/results")`), `pyarrow.dataset` and DuckDB
(`read_parquet('.../results/*/*.parquet', hive_partitioning=true)`) read the files unchanged.
Ids are percent-encoded in directory names when they hold characters outside [A-Za-z0-9._-].

A trial may be written twice (a resumed sweep re-reports it): `load_results` keeps, for each
(sweep_id, trial_id), the row with the latest `finished_at` (on equal or missing times, the
one read last).

When a sweep ends, `orchestrator.store.compact` merges its partition into one `merged-*.parquet` per
table and writes `results/sweep_id=<id>/_summary.json` (its `list_sweeps` row and the file it
describes). Readers list partitions themselves and read only those a query needs; "latest"
and `list_sweeps` use the summaries where they are current.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.store.faults import atomic_write
from orchestrator.store.schema import RESULTS_READ_SCHEMA, RESULTS_SCHEMA, STAGES_SCHEMA
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

RESULTS_DIR = "results"
STAGES_DIR = "stages"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # pyarrow's (and Hive's) name for a null value

_seq = itertools.count()
_writer: tuple[int, str] | None = None  # (pid, token): a forked child gets its own token


def resolve_storage(storage: str | Path) -> tuple[pafs.FileSystem, str]:
    """A filesystem and the root path on it, for a local path or a URI (file://, s3://, gs://,
    memory:// and other fsspec protocols)."""
    from orchestrator.store.storage import open_storage

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
    """One new file per sweep partition (`faults.atomic_write`: a failed write leaves no temp
    file and the partition as it was; a full or read-only storage is a StorageFault)."""
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
        name = f"{_writer_name()}.parquet"
        atomic_write(fs, f"{directory}/{name}", functools.partial(write_parquet, part))


def write_parquet(table: pa.Table, sink: Any) -> None:
    """Write `table` to an open output stream as zstd Parquet (the store's one format)."""
    import pyarrow.parquet as pq

    pq.write_table(table, sink, compression="zstd")


# -- reading --------------------------------------------------------------------------------
#
# Readers list the partition directories themselves and open only the partitions a query needs
# (`--sweep ID`, `latest`); "all" reads every partition. A compaction (`orchestrator.store.compact`)
# writes a sweep's merged file before it deletes the parts, so for a moment a reader may see a
# row twice (de-duplicated below, as a re-reported trial is) or find that a part it listed is
# gone (the read is retried with a fresh listing).

READ_ATTEMPTS = 5
SUMMARY_NAME = "_summary.json"  # per results partition; "_" keeps dataset readers off it


def _visible(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _partition_id(dirname: str) -> str | None:
    value = urllib.parse.unquote(dirname.removeprefix("sweep_id="))
    return None if value == NULL_PARTITION else value


def list_partitions(storage: str | Path, kind: str) -> dict[str | None, str]:
    """sweep_id -> partition directory of table `kind` ("results" or "stages"); empty when the
    table does not exist yet."""

    fs, root = resolve_storage(storage)
    return _list_partitions(fs, f"{root}/{kind}")


def _list_partitions(fs: pafs.FileSystem, base: str) -> dict[str | None, str]:
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except FileNotFoundError:
        return {}
    return {
        _partition_id(i.base_name): i.path
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("sweep_id=")
    }


def partition_files(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    """The visible Parquet files of one partition directory (sorted by name)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    files = [i for i in infos if i.type == pafs.FileType.File and _visible(i.base_name)]
    return sorted(files, key=lambda i: i.base_name)


class PartitionedTable:
    """One table (results or stages) of a storage, read partition by partition."""

    def __init__(self, storage: str | Path, kind: str, schema: pa.Schema) -> None:
        self.storage = storage
        self.kind = kind
        self.schema = schema
        self.fs, root = resolve_storage(storage)
        self.base = f"{root}/{kind}"
        self._partitions: dict[str | None, str] | None = None

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self.fs.get_file_info(self.base).type == pafs.FileType.Directory)

    def partitions(self, *, refresh: bool = False) -> dict[str | None, str]:
        if self._partitions is None or refresh:
            self._partitions = _list_partitions(self.fs, self.base)
        return self._partitions

    def read(
        self, sweep_ids: Sequence[str | None] | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """Rows of the given sweeps (None: all), with the schema's columns (or `columns`).

        A part deleted between listing and reading (a compaction finishing) is retried."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._read_once(sweep_ids, columns, refresh=attempt > 0)
            except FileNotFoundError:
                if attempt == READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _read_once(
        self, sweep_ids: Sequence[str | None] | None, columns: list[str] | None, *, refresh: bool
    ) -> pa.Table:
        import pyarrow as pa
        import pyarrow.dataset as ds

        partitions = self.partitions(refresh=refresh)
        chosen = (
            partitions
            if sweep_ids is None
            else {s: partitions[s] for s in sweep_ids if s in partitions}
        )
        paths = [f.path for d in chosen.values() for f in partition_files(self.fs, d)]
        partitioning = ds.partitioning(pa.schema([("sweep_id", pa.string())]), flavor="hive")
        dataset = ds.dataset(
            paths,
            schema=self.schema,
            format="parquet",
            filesystem=self.fs,
            partitioning=partitioning,
            partition_base_dir=self.base,
        )
        return dataset.to_table(columns=columns)

    def summary(self, sweep_id: str | None) -> dict[str, Any] | None:
        """The partition's `_summary.json` when it still describes exactly its files."""
        import json

        directory = self.partitions().get(sweep_id)
        if directory is None:
            return None
        try:
            with self.fs.open_input_stream(f"{directory}/{SUMMARY_NAME}") as f:
                data = json.loads(f.read())
            names = {i.base_name for i in partition_files(self.fs, directory)}
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or set(data.get("files") or ()) != names or not names:
            return None
        if data.get("version") != summary_version():
            return None  # written by other code: its hypervolume may be computed otherwise
        return data


@functools.cache
def summary_version() -> str:
    """A hash of the code that computes a summary (this module and `orchestrator.query.pareto`): a
    summary written by other code is not trusted, and the next compaction rewrites it."""
    import hashlib
    import importlib.util

    h = hashlib.sha256(b"summary-2")
    for module in ("orchestrator.store.results", "orchestrator.query.pareto"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def _dataset(storage: str | Path, kind: str, schema: pa.Schema) -> PartitionedTable:
    table = PartitionedTable(storage, kind, schema)
    if not table.exists():
        raise SqueezerayError(
            f"no {kind} at {table.base!s} (storage={str(storage)!r}); run a sweep that writes "
            f"there first: squeezeray sweep --storage {storage}"
        )
    return table


def sweep_starts(table: PartitionedTable) -> dict[str | None, Any]:
    """sweep_id -> the earliest started_at of its rows: from the partition summary where it is
    current, else from that partition's started_at column alone."""
    starts: dict[str | None, Any] = {}
    stale: list[str | None] = []
    for sweep_id in table.partitions():
        summary = table.summary(sweep_id)
        if summary is not None:
            starts[sweep_id] = _parse_time(summary["sweep"].get("started_at"))
        else:
            stale.append(sweep_id)
    if stale:
        rows = table.read(stale, columns=["sweep_id", "started_at"])
        for row in rows.group_by("sweep_id").aggregate([("started_at", "min")]).to_pylist():
            starts[row["sweep_id"]] = row["started_at_min"]
    return starts


def _parse_time(value: str | None) -> Any:
    from datetime import datetime

    return None if value is None else datetime.fromisoformat(value)


def _choose_sweep(table: PartitionedTable, sweep: str, storage: str | Path) -> str | None:
    """None for "all"; the id for "latest" or an id (checked to exist)."""
    if sweep == "all":
        return None
    if sweep != "latest" and sweep in table.partitions():
        return sweep
    ids = [s for s in table.partitions() if s is not None]
    if not ids:
        raise SqueezerayError(
            f"storage={str(storage)!r} holds no results yet; run: squeezeray sweep "
            f"--storage {storage}"
        )
    if sweep == "latest":
        starts = sweep_starts(table)
        ranked = sorted(
            ((s, t) for s, t in starts.items() if s is not None),
            key=lambda it: (it[1] is not None, it[1]),
        )
        return str(ranked[-1][0])
    raise SqueezerayError(
        f"--sweep {sweep!r} is not in storage={str(storage)!r}; accepted: all, latest, or "
        f"one of {', '.join(sorted(map(str, ids)))} (see `squeezeray sweeps --storage {storage}`)"
    )


def load_results(storage: str | Path, *, sweep: str = "latest") -> pa.Table:
    """The results rows of one sweep (`sweep` = "latest", the default as everywhere in the
    API and the CLI, or an id) or of all sweeps ("all").

    Rows come sorted by sweep_id, started_at, trial_id; a trial written twice keeps its row
    with the latest finished_at. Only the chosen sweep's partition is read (for "latest" the
    start times come from the partition summaries a compaction writes). A missing storage or
    an empty one is a SqueezerayError that says how to create it.
    """
    dataset = _dataset(storage, RESULTS_DIR, RESULTS_READ_SCHEMA)
    chosen = _choose_sweep(dataset, sweep, storage)
    table = dataset.read(None if chosen is None else [chosen])
    if table.num_rows == 0:
        raise SqueezerayError(
            f"storage={str(storage)!r} holds no results yet; run: squeezeray sweep "
            f"--storage {storage}"
        )
    table = upgrade_columns(keep_last_per_trial(table))
    table = expand_custom_metrics(table)
    return table.sort_by(
        [("sweep_id", "ascending"), ("started_at", "ascending"), ("trial_id", "ascending")]
    )


def upgrade_columns(table: pa.Table) -> pa.Table:
    """Rows written before the metric names said their split or measurement, in today's
    columns: `accuracy` -> `test_accuracy`; `latency_ms`/`latency_ms_p90`/`latency_repeats`
    -> the `_final` columns on re-measured rows (latency_rounds set), else the `_sweep` ones
    (where those are empty). The legacy columns are then dropped, so every table has one set
    of names."""
    import pyarrow.compute as pc

    from orchestrator.store.schema import LEGACY_COLUMNS

    present = [name for name in LEGACY_COLUMNS if name in table.column_names]
    if not present:
        return _with_eval_batch_size(table)
    remeasured = pc.is_valid(table.column("latency_rounds"))
    moves = [
        ("accuracy", "test_accuracy", None),
        ("latency_ms", "latency_ms_final", remeasured),
        ("latency_ms", "latency_ms_sweep", pc.invert(remeasured)),
        ("latency_ms_p90", "latency_ms_final_p90", remeasured),
        ("latency_ms_p90", "latency_ms_sweep_p90", pc.invert(remeasured)),
        ("latency_repeats", "latency_repeats_final", remeasured),
        ("latency_repeats", "latency_repeats_sweep", pc.invert(remeasured)),
    ]
    for old, new, when in moves:
        if old not in present:
            continue
        legacy = table.column(old)
        if when is not None:
            legacy = pc.if_else(when, legacy, None)
        merged = pc.coalesce(table.column(new), legacy)
        table = table.set_column(table.schema.get_field_index(new), new, merged)
    return _with_eval_batch_size(table.drop_columns(present))


def _with_eval_batch_size(table: pa.Table) -> pa.Table:
    """Rows measured before `eval_batch_size` was recorded were measured in batches of 256
    (then the only batch size): say so on the rows that have an accuracy."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "eval_batch_size" not in table.column_names:
        return table
    measured = pc.or_(pc.is_valid(table.column("val_accuracy")),
                      pc.is_valid(table.column("test_accuracy")))  # fmt: skip
    old = pc.if_else(measured, pa.scalar(256, pa.int64()), pa.scalar(None, pa.int64()))
    filled = pc.coalesce(table.column("eval_batch_size"), old)
    return table.set_column(table.schema.get_field_index("eval_batch_size"), "eval_batch_size",
                            filled)  # fmt: skip


def expand_custom_metrics(table: pa.Table) -> pa.Table:
    """Append two float64 columns per task metric found in the `custom_metrics` JSON column
    (which stores {name: test value, val_<name>: validation value}): `test_<name>` and
    `val_<name>`, null in rows without it, so `--where`, objectives, constraints and fronts
    use a task's own metric like any built-in column, under the same split-naming rule as
    accuracy (`orchestrator.space.metrics`). A name that is already a column is left alone."""
    import pyarrow as pa

    from orchestrator.store.schema import CUSTOM_METRICS

    if CUSTOM_METRICS not in table.column_names:
        return table
    parsed = [json.loads(text) if text else {} for text in table.column(CUSTOM_METRICS).to_pylist()]
    stored = sorted({name for values in parsed for name in values})
    for name in stored:
        column = name if name.startswith("val_") else f"test_{name}"
        if column in table.column_names:
            continue
        values = [None if values.get(name) is None else float(values[name]) for values in parsed]
        table = table.append_column(pa.field(column, pa.float64()), pa.array(values, pa.float64()))
    return table


def keep_last_per_trial(table: pa.Table) -> pa.Table:
    """For each (sweep_id, trial_id) keep the row with the latest finished_at (ties and
    nulls: the later row of the table)."""
    return keep_last(table, ["sweep_id", "trial_id"])


def keep_last(table: pa.Table, keys: Sequence[str], when: str = "finished_at") -> pa.Table:
    """For each distinct combination of the `keys` columns keep the row with the latest `when`
    (ties and nulls: the later row of the table). Order of the kept rows is unchanged."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if n < 2:
        return table
    codes = []
    for name in keys:
        encoded = pc.dictionary_encode(table.column(name)).combine_chunks()
        codes.append(np.asarray(encoded.indices.fill_null(-1), dtype=np.int64))
    _, key = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    key = key.reshape(-1)
    if np.unique(key).size == n:
        return table
    finished = pc.cast(table.column(when), pa.int64())
    stamp = np.asarray(finished.fill_null(np.iinfo(np.int64).min), dtype=np.int64)
    order = np.lexsort((np.arange(n), stamp, key))
    last = np.ones(n, dtype=bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    return table.take(np.sort(order[last]))


STAGE_ROW_KEY = ("sweep_id", "stage_key", "trial_id")


def load_stages(storage: str | Path, *, sweep: str = "latest") -> pa.Table:
    """The stage rows of one sweep (an id or "latest", as in `load_results`) or of all.

    A row seen twice (during a compaction) is returned once."""
    import pyarrow.compute as pc

    dataset = _dataset(storage, STAGES_DIR, STAGES_SCHEMA)
    chosen: str | None = None
    if sweep != "all":
        results = PartitionedTable(storage, RESULTS_DIR, RESULTS_SCHEMA)
        if sweep == "latest" and results.exists() and results.partitions():
            chosen = _choose_sweep(results, "latest", storage)
        elif sweep == "latest":
            ids = dataset.read(columns=["sweep_id", "finished_at"])
            chosen = ids.sort_by([("finished_at", "descending")]).column("sweep_id")[0].as_py()
        else:
            chosen = sweep
    table = dataset.read(None if chosen is None else [chosen])
    if chosen is not None:  # a sweep id that is not a partition's name reads nothing
        table = table.filter(pc.equal(table.column("sweep_id"), chosen))
    return keep_last(table, STAGE_ROW_KEY)


SWEEP_COLUMNS = (
    "sweep_id", "sweep_name", "task", "started_at", "finished_at",
    "trials_ok", "trials_stopped", "trials_failed", "hypervolume", "status", "resume_command",
)  # fmt: skip


def summarise_sweep(rows: pa.Table) -> dict[str, Any]:
    """One sweep's listing row (SWEEP_COLUMNS) from its (de-duplicated) results rows, plus
    what its hypervolume needs: `front_points` (the default objectives' values of its front)
    and `reference` (its own baseline reference, `pareto.baseline_reference`); `hypervolume`
    is against that reference (`list_sweeps` uses the task's earliest sweep's instead)."""
    import warnings

    import pyarrow.compute as pc

    from orchestrator.query.pareto import (
        DEFAULT_OBJECTIVES,
        baseline_reference,
        hypervolume_of_points,
        pareto_front,
    )

    trials = rows.filter(pc.invert(rows.column("is_baseline")))
    statuses = trials.column("status")
    ok = int(pc.sum(pc.equal(statuses, "ok")).as_py() or 0)
    stopped = int(pc.sum(pc.equal(statuses, "stopped")).as_py() or 0)
    columns = list(DEFAULT_OBJECTIVES)
    try:
        reference: dict[str, float] | None = baseline_reference(rows, DEFAULT_OBJECTIVES)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rows without objectives: counted by `pareto`
            front = pareto_front(rows, DEFAULT_OBJECTIVES).select(columns).to_pylist()
        points = [[float(r[c]) for c in columns] for r in front]
        hv: float | None = hypervolume_of_points(points, DEFAULT_OBJECTIVES, reference or {})
    except SqueezerayError:
        reference, points, hv = None, [], None
    return {
        "sweep_id": _first(rows.column("sweep_id").to_pylist()),
        "sweep_name": _first(rows.column("sweep_name").to_pylist()),
        "task": _first(rows.column("task").to_pylist()),
        "started_at": pc.min(rows.column("started_at")).as_py(),
        "finished_at": pc.max(rows.column("finished_at")).as_py(),
        "trials_ok": ok,
        "trials_stopped": stopped,  # stopped early by the scheduler (ASHA): not a failure
        "trials_failed": trials.num_rows - ok - stopped,
        "hypervolume": hv,
        "front_points": points,
        "reference": reference,
    }


def list_sweeps(storage: str | Path) -> pa.Table:
    """One row per sweep: sweep_id, sweep_name, task, started_at, finished_at, trials_ok,
    trials_stopped (stopped early by the scheduler, ASHA: not failures), trials_failed (the
    other trials not ok: error, timeout, lost), hypervolume (front of val_accuracy:max,
    size_bytes:min, latency_ms_sweep:min; null when it cannot be computed), status (its
    manifest's: running, finished, interrupted or failed; null without one) and resume_command
    (for a sweep not finished). A sweep with a manifest and no rows (it crashed first) is
    listed with 0 trials. The columns mean the same for every status: `started_at` is when
    the sweep started (its manifest's `started_at`: Ray up and its checks passed; its earliest
    row's for a sweep without one), `sweep_name` its space's name, else its id (as its rows
    say).
    A storage in which sweeps were started but none got that far (each refused by a check
    before it started: memory, resources) gives an empty table; a storage holding nothing at
    all is a SqueezerayError.

    A compacted sweep is listed from its partition summary (`_summary.json`, written by the
    compaction and trusted only while the partition holds exactly the files it names); other
    sweeps are computed from their rows.

    Every sweep of a task is measured against one reference, the task's earliest sweep's
    (`pareto.baseline_reference`: 0 for accuracy, 2 x the baseline's size and latency), as
    nightly reports do, so hypervolumes of one task compare across sweeps."""
    import pyarrow as pa

    from orchestrator.store.storage import SWEEPS_DIR, open_storage

    manifests = _sweep_manifests(storage)
    started = bool(manifests) or open_storage(storage).exists(SWEEPS_DIR)
    out = _listed_from_rows(storage, started=started)
    _add_manifests(out, manifests)
    if not out and not started:
        raise SqueezerayError(
            f"storage={str(storage)!r} holds no results yet; run: squeezeray sweep "
            f"--storage {storage}"
        )
    schema = pa.schema(
        [
            ("sweep_id", pa.string()),
            ("sweep_name", pa.string()),
            ("task", pa.string()),
            ("started_at", RESULTS_SCHEMA.field("started_at").type),
            ("finished_at", RESULTS_SCHEMA.field("finished_at").type),
            ("trials_ok", pa.int64()),
            ("trials_stopped", pa.int64()),
            ("trials_failed", pa.int64()),
            ("hypervolume", pa.float64()),
            ("status", pa.string()),
            ("resume_command", pa.string()),
        ]
    )
    _task_hypervolumes(out)
    columns = {name: [row.get(name) for row in out] for name in SWEEP_COLUMNS}
    return pa.table(columns, schema=schema).sort_by([("started_at", "ascending")])


def _listed_from_rows(storage: str | Path, *, started: bool) -> list[dict[str, Any]]:
    """One listing row per sweep that wrote results (from its summary where current);
    none when there is no results/ but sweeps were started there (`started`: they crashed
    or were refused first)."""
    import pyarrow.compute as pc

    out: list[dict[str, Any]] = []
    if started and not PartitionedTable(storage, RESULTS_DIR, RESULTS_READ_SCHEMA).exists():
        return out
    dataset = _dataset(storage, RESULTS_DIR, RESULTS_READ_SCHEMA)
    stale: list[str | None] = []
    for sweep_id in dataset.partitions():
        summary = dataset.summary(sweep_id)
        if summary is None or "trials_stopped" not in summary["sweep"]:
            # (a summary written before stopped trials had their own count: its trials_failed
            # counts them, so the sweep is listed from its rows)
            stale.append(sweep_id)
            continue
        row = dict(summary["sweep"])
        row["sweep_id"] = sweep_id
        for name in ("started_at", "finished_at"):
            row[name] = _parse_time(row.get(name))
        out.append(row)
    if stale:
        table = expand_custom_metrics(upgrade_columns(keep_last_per_trial(dataset.read(stale))))
        for sweep_id in pc.unique(table.column("sweep_id")).to_pylist():
            out.append(summarise_sweep(table.filter(pc.equal(table.column("sweep_id"), sweep_id))))
    return out


# A sweep in one of these states has trials left to run: `--resume` continues it.
_RESUMABLE = ("failed", "interrupted", "running")


def _sweep_manifests(storage: str | Path) -> dict[str, dict[str, Any]]:
    """sweep_id -> its manifest (`<storage>/sweeps/<id>.json`, written when a sweep starts
    and ends: `orchestrator.engine.manifest`); {} when there are none. A manifest that cannot
    be read is skipped (its sweep is still listed from its rows)."""
    import pyarrow.fs as pafs

    from orchestrator.store.storage import SWEEPS_DIR, open_storage

    store = open_storage(storage)
    if not store.exists(SWEEPS_DIR):
        return {}
    found: dict[str, dict[str, Any]] = {}
    for info in store.fs.get_file_info(pafs.FileSelector(store.path(SWEEPS_DIR))):
        if not info.base_name.endswith(".json") or info.base_name.startswith("."):
            continue
        try:
            data = json.loads(store.read_bytes(SWEEPS_DIR, info.base_name))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found[info.base_name.removesuffix(".json")] = data
    return found


def _add_manifests(listing: list[dict[str, Any]], manifests: dict[str, dict[str, Any]]) -> None:
    """Each sweep's status and resume command from its manifest (in place), and a row for a
    sweep that has a manifest but no result rows (one that crashed before its first trial)."""
    listed = {row.get("sweep_id") for row in listing}
    for sweep_id, manifest in manifests.items():
        if sweep_id not in listed:
            # the name as a row writes it (`tuner`: the space's name, else the sweep id)
            row = {"sweep_id": sweep_id, "sweep_name": manifest.get("name") or sweep_id,
                   "task": manifest.get("task"), "trials_ok": 0, "trials_stopped": 0,
                   "trials_failed": 0,
                   "started_at": _parse_time(manifest.get("updated_at"))}  # fmt: skip
            listing.append(row)
    for row in listing:
        manifest = manifests.get(row.get("sweep_id") or "", {})
        row["status"] = manifest.get("status")
        if manifest.get("started_at"):  # the sweep's start, not its first row's
            row["started_at"] = _parse_time(manifest["started_at"])
        if row["status"] in _RESUMABLE:
            row["resume_command"] = manifest.get("resume_command")


def _task_hypervolumes(listing: list[dict[str, Any]]) -> None:
    """Set each sweep's hypervolume against its task's earliest sweep's reference (in place);
    a summary written before fronts were kept keeps the hypervolume it has."""
    from orchestrator.query.pareto import DEFAULT_OBJECTIVES, hypervolume_of_points

    never = datetime.max.replace(tzinfo=timezone.utc)
    references: dict[Any, dict[str, float]] = {}
    for row in sorted(listing, key=lambda r: r.get("started_at") or never):
        if row.get("reference") and row.get("task") not in references:
            references[row.get("task")] = row["reference"]
    for row in listing:
        reference = references.get(row.get("task"))
        if reference is not None and "front_points" in row:
            row["hypervolume"] = hypervolume_of_points(
                row["front_points"], DEFAULT_OBJECTIVES, reference
            )


def _first(values: list[Any]) -> Any:
    return next((v for v in values if v is not None), None)
