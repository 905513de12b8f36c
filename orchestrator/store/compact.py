"""Compaction: one Parquet file per sweep and table instead of one per trial.

A sweep writes one small file per finished trial (and per executed stage); after a year of
nightly sweeps a query opens thousands of files, and their count, not the rows, sets its cost.
`compact_sweep` merges one sweep's partition into a single file:

1. list the partition's visible files (a snapshot; files that appear later are left alone),
2. read exactly those files, de-duplicate rows as the readers do (`keep_last_per_trial`),
3. write the merged file under a new name (`merged-<writer>.parquet`), atomically: on a local
   disk via a hidden temp name and a rename, on an object store as one upload,
4. delete the snapshot's files (the parts, and any earlier merged file),
5. (results) write the partition's `_summary.json`, the sweep's listing row, naming the one
   file it describes.

Nothing is deleted before the rows it holds are in a durable merged file, so a crash at any
point loses nothing; between steps 3 and 4 (or after a crash there) the rows exist twice, and
the readers return them once (they de-duplicate per trial and retry a read whose part vanished).
The next compaction of that sweep merges the leftovers. Two compactions of one sweep at once,
or a sweep appending while it is compacted, are safe for the same reasons. The merged file
carries every column the files hold: the store's schema, plus any column a newer writer added.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.store.faults import atomic_write
from orchestrator.store.results import (
    RESULTS_DIR,
    STAGE_ROW_KEY,
    STAGES_DIR,
    SUMMARY_NAME,
    PartitionedTable,
    _writer_name,
    keep_last,
    keep_last_per_trial,
    partition_files,
    summarise_sweep,
    summary_version,
    write_parquet,
)
from orchestrator.store.schema import RESULTS_SCHEMA, STAGES_SCHEMA
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

MERGED_PREFIX = "merged-"
TABLES: dict[str, pa.Schema] = {RESULTS_DIR: RESULTS_SCHEMA, STAGES_DIR: STAGES_SCHEMA}


@dataclass(frozen=True)
class Compaction:
    """What compacting one sweep's partition of one table did."""

    sweep_id: str | None
    table: str  # "results" or "stages"
    files_before: int
    rows: int  # rows in the merged file
    merged: str | None  # the merged file's path; None when there was nothing to merge
    deleted: int  # files removed after the merged write

    @property
    def changed(self) -> bool:
        return self.merged is not None


def compact_sweep(storage: str | Path, sweep_id: str | None) -> list[Compaction]:
    """Merge sweep `sweep_id`'s results and stage files into one file per table (see the module
    docstring). A sweep with nothing to merge is left as it is (its summary is refreshed)."""
    done = []
    for kind in (RESULTS_DIR, STAGES_DIR):
        table = PartitionedTable(storage, kind, TABLES[kind])
        directory = table.partitions().get(sweep_id)
        if directory is not None:
            done.append(_compact_partition(table, sweep_id, directory))
    return done


def compact_storage(storage: str | Path, *, sweep: str | None = None) -> list[Compaction]:
    """Compact one sweep (`sweep`) or every sweep of a storage; a SqueezerayError when the
    storage has no results or the sweep is not in it."""
    results = PartitionedTable(storage, RESULTS_DIR, RESULTS_SCHEMA)
    stages = PartitionedTable(storage, STAGES_DIR, STAGES_SCHEMA)
    ids: set[str | None] = set(results.partitions()) | set(stages.partitions())
    if not ids:
        raise SqueezerayError(
            f"storage={str(storage)!r} holds no results or stage rows to compact; run a sweep "
            f"there first: squeezeray sweep --storage {storage}"
        )
    if sweep is not None:
        if sweep not in ids:
            known = ", ".join(sorted(str(i) for i in ids))
            raise SqueezerayError(
                f"--sweep {sweep!r} is not in storage={str(storage)!r}; accepted: one of {known}"
            )
        return compact_sweep(storage, sweep)
    done: list[Compaction] = []
    for sweep_id in sorted(ids, key=lambda i: (i is None, i or "")):
        done.extend(compact_sweep(storage, sweep_id))
    return done


def uncompacted_sweeps(storage: str | Path) -> list[str | None]:
    """Sweeps whose results or stage partition holds more than one file (one directory listing
    per partition; nothing is read)."""
    out: list[str | None] = []
    for kind in (RESULTS_DIR, STAGES_DIR):
        table = PartitionedTable(storage, kind, TABLES[kind])
        for sweep_id, directory in table.partitions().items():
            if sweep_id not in out and len(partition_files(table.fs, directory)) > 1:
                out.append(sweep_id)
    return out


def _compact_partition(table: PartitionedTable, sweep_id: str | None, directory: str) -> Compaction:
    fs = table.fs
    snapshot = partition_files(fs, directory)
    names = [f.base_name for f in snapshot]
    if len(snapshot) <= 1:
        if table.kind == RESULTS_DIR and snapshot and table.summary(sweep_id) is None:
            rows = _read_files(fs, [f.path for f in snapshot], table.schema, sweep_id)
            _write_summary(fs, directory, rows, names)
        return Compaction(sweep_id, table.kind, len(snapshot), 0, None, 0)
    merged = _read_files(fs, [f.path for f in snapshot], table.schema, sweep_id)
    if table.kind == RESULTS_DIR:
        merged = keep_last_per_trial(merged)
        merged = merged.sort_by([("started_at", "ascending"), ("trial_id", "ascending")])
    else:
        merged = keep_last(merged, STAGE_ROW_KEY)
    name = f"{MERGED_PREFIX}{_writer_name()}.parquet"
    path = _write_merged(fs, directory, name, merged.drop_columns(["sweep_id"]))
    deleted = _delete_parts(fs, [f.path for f in snapshot])
    if table.kind == RESULTS_DIR:
        _write_summary(fs, directory, merged, [name])
    return Compaction(sweep_id, table.kind, len(snapshot), merged.num_rows, path, deleted)


def _read_files(
    fs: pafs.FileSystem, paths: list[str], schema: pa.Schema, sweep_id: str | None
) -> pa.Table:
    """The rows of exactly `paths`, with `sweep_id` added: the store's schema first, then any
    column a file holds beyond it (written by a newer squeezeray), so nothing is dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(path, filesystem=fs) for path in paths]
    base = schema.remove(schema.get_field_index("sweep_id"))
    try:
        unified = pa.unify_schemas(
            [base, *(t.schema for t in tables)], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SqueezerayError(
            f"cannot compact sweep {sweep_id!r}: its files disagree on column types ({exc}); "
            "leave it uncompacted (queries still read it) and report the files"
        ) from exc
    unified = pa.schema([unified.field(n) for n in unified.names])
    aligned = []
    for t in tables:
        columns = [
            t.column(f.name).cast(f.type)
            if f.name in t.column_names
            else pa.nulls(t.num_rows, f.type)
            for f in unified
        ]
        aligned.append(pa.Table.from_arrays(columns, schema=unified))
    rows = pa.concat_tables(aligned)
    ids = pa.array([sweep_id] * rows.num_rows, type=pa.string())
    return rows.add_column(0, pa.field("sweep_id", pa.string()), ids)


def _write_merged(fs: pafs.FileSystem, directory: str, name: str, rows: pa.Table) -> str:
    target = f"{directory}/{name}"
    atomic_write(fs, target, functools.partial(write_parquet, rows))
    return target


def _delete_parts(fs: pafs.FileSystem, paths: Iterable[str]) -> int:
    """Delete the merged-away files; one already gone (another compaction) is fine."""
    count = 0
    for path in paths:
        try:
            fs.delete_file(path)
            count += 1
        except FileNotFoundError:
            pass
    return count


def _write_summary(fs: pafs.FileSystem, directory: str, rows: pa.Table, files: list[str]) -> None:
    row = summarise_sweep(keep_last_per_trial(rows))
    sweep: dict[str, Any] = {k: v for k, v in row.items() if k != "sweep_id"}
    for key in ("started_at", "finished_at"):
        value = sweep[key]
        sweep[key] = value.isoformat() if isinstance(value, datetime) else None
    data = {"files": files, "rows": rows.num_rows, "version": summary_version(), "sweep": sweep}
    payload = json.dumps(data, indent=1).encode()
    atomic_write(fs, f"{directory}/{SUMMARY_NAME}", lambda sink: sink.write(payload))
