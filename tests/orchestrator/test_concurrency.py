"""Two processes appending results to one storage at once, with a reader watching: no file is
ever seen half-written, no row is lost or mixed up, and every row loads afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds

from orchestrator.store.results import RESULTS_DIR, load_results

ROOT = Path(__file__).resolve().parents[2]
APPENDS = 60  # per writer
ROWS_PER_APPEND = 5

# Each writer appends APPENDS batches of ROWS_PER_APPEND rows to the same sweep partition.
WRITER = """
import sys
from datetime import datetime, timezone
from orchestrator.store.results import append_results

storage, name, appends, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(appends):
    rows = [
        {
            "sweep_id": "shared",
            "trial_id": f"{name}-{i:03d}-{j}",
            "started_at": datetime.now(timezone.utc),
            "finished_at": datetime.now(timezone.utc),
            "task": name,
            "status": "ok",
            "is_baseline": False,
            "test_accuracy": i / appends,
            "size_bytes": 1000 * i + j,
            "stage_keys": [name, str(i), str(j)],
        }
        for j in range(per)
    ]
    append_results(storage, rows)
"""


def test_two_writers_and_a_reader_never_see_a_partial_or_mixed_row(tmp_path: Path) -> None:
    storage = tmp_path / "shared store"
    # A file a crashed writer left behind (hidden temp name) is never read.
    partition = storage / RESULTS_DIR / "sweep_id=shared"
    partition.mkdir(parents=True)
    (partition / ".123-deadbeef-000000.parquet.tmp").write_bytes(b"PAR1 half a file")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(storage), name, str(APPENDS), str(ROWS_PER_APPEND)],
            cwd=ROOT,
            env=env,
        )
        for name in ("alpha", "beta")
    ]
    reads = 0
    seen = 0
    while any(w.poll() is None for w in writers):
        # A reader lists then reads files: it only ever finds complete ones, each a whole append.
        count = ds.dataset(str(storage / RESULTS_DIR), format="parquet").count_rows()
        assert count % ROWS_PER_APPEND == 0 and count >= seen
        seen = count
        reads += 1
        time.sleep(0.01)
    assert [w.wait() for w in writers] == [0, 0]
    assert reads > 0

    table = load_results(str(storage), sweep="shared")
    total = 2 * APPENDS * ROWS_PER_APPEND
    assert table.num_rows == total
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    assert len(rows) == total
    for name in ("alpha", "beta"):
        for i in range(APPENDS):
            for j in range(ROWS_PER_APPEND):
                row = rows[f"{name}-{i:03d}-{j}"]
                # Every value of a row came from the same writer and the same append.
                assert row["task"] == name
                assert row["size_bytes"] == 1000 * i + j
                assert row["stage_keys"] == [name, str(i), str(j)]
    # One file per append, none shared between writers, no temp file of theirs left.
    names = [p.name for p in partition.iterdir()]
    assert len([n for n in names if n.endswith(".parquet")]) == 2 * APPENDS
    assert [n for n in names if n.startswith(".")] == [".123-deadbeef-000000.parquet.tmp"]
