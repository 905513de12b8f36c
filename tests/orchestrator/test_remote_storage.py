"""--storage as a URI: the results/stages/report store functions on an in-memory fsspec
filesystem (a full sweep under file:// is tests/orchestrator/test_sweep.py's tiny sweep).

memory:// lives inside one process, so it cannot hold a real sweep: Ray workers are other
processes and would write their stage checkpoints and stage rows into their own memory. A
subprocess below shows that it sees none of this process's files.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.query.report import Thresholds, build_report, render_markdown, write_report
from orchestrator.store.results import (
    append_results,
    append_stage_rows,
    list_sweeps,
    load_results,
    load_stages,
)
from orchestrator.store.storage import open_storage
from tests.rows import T0, result_row


@pytest.fixture
def memory_uri() -> str:
    return f"memory://squeezeray-test-{uuid.uuid4().hex[:8]}/store"


def test_store_functions_on_an_fsspec_memory_filesystem(memory_uri: str) -> None:
    rows = [
        result_row(
            "night-1", "baseline", 0, test_accuracy=0.99, size_bytes=1000, latency_ms_sweep=0.05
        ),
        result_row("night-1", "t1", 1, test_accuracy=0.97, size_bytes=200, latency_ms_sweep=0.04),
        result_row(
            "night-2", "baseline", 1440, test_accuracy=0.99, size_bytes=1000, latency_ms_sweep=0.05
        ),
        result_row(
            "night-2", "t1", 1441, test_accuracy=0.98, size_bytes=150, latency_ms_sweep=0.03
        ),
    ]
    append_results(memory_uri, rows[:2])
    append_results(memory_uri, rows[2:])
    # A resumed sweep re-reports a trial: the later row wins.
    append_results(
        memory_uri, [{**rows[3], "test_accuracy": 0.985, "finished_at": T0 + timedelta(days=2)}]
    )
    table = load_results(memory_uri, sweep="all")
    assert table.num_rows == 4
    latest = load_results(memory_uri, sweep="latest").to_pylist()
    assert {r["sweep_id"] for r in latest} == {"night-2"}
    assert [r["test_accuracy"] for r in latest if r["trial_id"] == "t1"] == [0.985]

    append_stage_rows(
        memory_uri,
        [
            {"stage_key": "k1", "stage": "teacher", "sweep_id": "night-1", "finished_at": T0},
            {"stage_key": "k2", "stage": "distill", "sweep_id": "night-2", "finished_at": T0},
        ],
    )
    assert [r["stage"] for r in load_stages(memory_uri, sweep="night-1").to_pylist()] == ["teacher"]
    assert load_stages(memory_uri, sweep="all").num_rows == 2

    listing = list_sweeps(memory_uri).to_pylist()
    assert [r["sweep_id"] for r in listing] == ["night-1", "night-2"]
    assert [r["trials_ok"] for r in listing] == [1, 1]
    assert all(r["hypervolume"] is not None for r in listing)

    # The nightly report is written under the storage too (reports/<sweep>.md, .html).
    store = open_storage(memory_uri)
    report = build_report(
        table,
        "night-2",
        objectives={"val_accuracy": "max", "size_bytes": "min"},
        thresholds=Thresholds(),
    )
    md_path, html_path = write_report(report, store=store)
    assert store.exists("reports", "night-2.md") and store.exists("reports", "night-2.html")
    assert md_path.endswith("reports/night-2.md") and html_path.endswith(".html")
    assert store.read_bytes("reports", "night-2.md").decode() == render_markdown(report)


def test_memory_filesystem_is_per_process(memory_uri: str) -> None:
    """Why a real sweep cannot use memory://: another process sees an empty filesystem."""
    append_results(memory_uri, [result_row("s", "t1", 0, test_accuracy=0.9)])
    assert load_results(memory_uri, sweep="all").num_rows == 1
    code = (
        "import sys\n"
        "from orchestrator.store.results import load_results\n"
        "from stages.errors import SqueezerayError\n"
        "try:\n"
        "    load_results(sys.argv[1], sweep='all')\n"
        "except SqueezerayError as exc:\n"
        "    print('empty:', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, memory_uri],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
        check=True,
    )
    assert out.stdout.startswith("empty: no results at"), out.stdout + out.stderr
