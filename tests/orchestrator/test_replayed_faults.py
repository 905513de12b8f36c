"""Faults replayed from public bug reports (issue 15) and whole error messages (issue 12 item 7).

Each test names the fault it covers. The ones that need Ray use the session fixture and are
marked `slow`; the rest run without Ray.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.results import append_results, load_results
from orchestrator.sweep import prepare_sweep
from stages.errors import SqueezerayError

T0 = datetime(2026, 1, 5, 2, 0, tzinfo=timezone.utc)


def _row(sweep: str, trial: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sweep_id": sweep,
        "trial_id": trial,
        "started_at": T0,
        "finished_at": T0,
        "task": "blobs",
        "status": "ok",
        "is_baseline": trial == "baseline",
    }
    row.update(values)
    return row


# --- fault 7: sweep ids that a hive reader takes for numbers or dates ------------------------

# Candidates a user might type: every one is either refused up front or read back unchanged,
# as a string, by pandas (pyarrow's hive inference) and DuckDB (hive_types_autocast).
CANDIDATE_IDS = [
    "007", "20250101", "2025-01-01", "2025-1-1", "2025-01-01T10:00:00", "0x1f", "0XFF",
    "0b101", "2147483648", "20250101120000", "epoch", "inf", "Infinity", "nan", "1e5", "12.5",
    "run-007", "007a", "nightly-20250101", "20250101-120000-1234", "2025-01", "v1", "1.2.3",
    "a_1", "today",
]  # fmt: skip


@pytest.mark.parametrize("sweep_id", ["007", "20250101", "2025-01-01", "0x1f", "epoch", "1e5"])
def test_sweep_ids_read_as_numbers_or_dates_are_refused_before_ray(
    tmp_path: Path, sweep_id: str
) -> None:
    with pytest.raises(SqueezerayError, match=f"--sweep-id {sweep_id!r}") as info:
        prepare_sweep("tiny", storage=tmp_path / "runs", sweep_id=sweep_id)
    message = str(info.value)
    assert "hive" in message and "e.g. 'run-" in message, message
    assert not (tmp_path / "runs").exists()  # nothing written
    # The store itself refuses to write such a partition (the Python API path).
    with pytest.raises(SqueezerayError, match=f"sweep_id {sweep_id!r}"):
        append_results(tmp_path / "api", [_row(sweep_id, "t1")])


def test_every_accepted_sweep_id_reads_back_unchanged_through_pandas_and_duckdb(
    tmp_path: Path,
) -> None:
    import duckdb
    import pandas as pd

    accepted = []
    for sweep_id in CANDIDATE_IDS:
        storage = tmp_path / f"s{len(accepted)}-{abs(hash(sweep_id))}"
        try:
            append_results(storage, [_row(sweep_id, "t1", accuracy=0.5)])
        except SqueezerayError:
            continue
        accepted.append(sweep_id)
        frame = pd.read_parquet(storage / "results")
        assert frame["sweep_id"].astype(object).tolist() == [sweep_id], sweep_id
        assert len(frame[frame["sweep_id"] == sweep_id]) == 1  # a filter on the id matches
        glob = (storage / "results" / "*" / "*.parquet").as_posix()
        read = duckdb.sql(
            f"SELECT sweep_id FROM read_parquet('{glob}', hive_partitioning = true)"
        ).fetchall()
        assert read == [(sweep_id,)], (sweep_id, read)
        assert load_results(storage).column("sweep_id").to_pylist() == [sweep_id]
    # The refusal is narrow: ids with a word in them stay usable.
    assert {"run-007", "007a", "nightly-20250101", "20250101-120000-1234", "v1"} <= set(accepted)
    assert not {"007", "20250101", "2025-01-01", "0x1f", "epoch", "inf"} & set(accepted)


# --- fault 3: warm-start points and constraints on columns that are not objectives -----------


def test_warm_start_constraint_values_come_from_the_stored_rows() -> None:
    import dataclasses
    import json

    from orchestrator.config import Constraint, load_space
    from orchestrator.nightly import warm_start_from
    from orchestrator.results import rows_to_table
    from orchestrator.schema import RESULTS_SCHEMA
    from orchestrator.search import make_search

    space = load_space("tiny").with_overrides(algorithm="optuna")
    space = dataclasses.replace(space, constraints=(Constraint("params_nonzero", "<=", 100.0),))
    objectives = {"accuracy": 0.97, "size_bytes": 4000, "latency_ms": 0.05}
    rows = [
        _row("night-1", "t1", params=json.dumps({"prune.ratio": 0.3, "quantize.mode": "none"}),
             params_nonzero=1007, **objectives),
        _row("night-1", "t2", params=json.dumps({"prune.ratio": 0.6, "quantize.mode": "none"}),
             params_nonzero=1690, **objectives),
        # No params_nonzero stored: not known to meet the constraint, so not a warm-start point.
        _row("night-1", "t3", params=json.dumps({"prune.ratio": 0.3, "quantize.mode":
             "dynamic_int8"}), **objectives),
    ]  # fmt: skip
    warm = warm_start_from(rows_to_table(rows, RESULTS_SCHEMA), space)
    assert warm is not None
    points, rewards, constraint_values = warm
    assert points == [
        {"prune.ratio": 0.3, "quantize.mode": "none"},
        {"prune.ratio": 0.6, "quantize.mode": "none"},
    ]
    assert constraint_values == [{"params_nonzero": 1007.0}, {"params_nonzero": 1690.0}]
    constraints = (("params_nonzero", "<=", 100.0),)
    alg, _, _ = make_search(
        space,
        constraints=constraints,
        points_to_evaluate=points,
        evaluated_rewards=rewards,
        warm_constraint_values=constraint_values,
    )
    trials = getattr(alg, "inner", alg).searcher._ot_study.trials
    assert [t.constraints for t in trials] == [
        {"params_nonzero <= 100": pytest.approx(907.0)},
        {"params_nonzero <= 100": pytest.approx(1590.0)},
    ]
    # Without the stored values (a caller passing only knobs and objectives), a constraint on a
    # column that is not an objective is unknown: the point is left out, not assumed feasible.
    alg, _, _ = make_search(
        space, constraints=constraints, points_to_evaluate=points, evaluated_rewards=rewards
    )
    assert getattr(alg, "inner", alg).searcher._ot_study.trials == []
