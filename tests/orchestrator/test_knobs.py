"""Every searched knob is visible in `squeezeray pareto` and usable in `--where`, not only the
six knobs with columns of their own."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.query.knobs import varying_knobs, with_knob_columns
from orchestrator.store.results import append_results, load_results
from tests.rows import T0, make_rows

runner = CliRunner()


def _store(tmp_path: Path) -> Path:
    """Two front-worthy trials that differ only in lowrank.rank_ratio (and their metrics)."""
    rows = make_rows("lr-1", n=2, seed=3, failures=0)
    for row, ratio, acc, size in zip(
        rows[1:], (0.25, 0.75), (0.90, 0.95), (5_000, 9_000), strict=True
    ):
        knobs = {"prune.ratio": 0.5, "lowrank.rank_ratio": ratio, "distill.lr": 0.003}
        row["prune.ratio"] = 0.5  # the other two live only in the params JSON, as a sweep writes
        row.update(
            params=json.dumps(knobs),
            test_accuracy=acc,
            val_accuracy=acc,
            size_bytes=size,
            latency_ms_sweep=0.01,
            status="ok",
            started_at=T0 + timedelta(seconds=ratio),
        )
    storage = tmp_path / "runs"
    append_results(storage, rows)
    return storage


def test_knob_columns_come_from_the_params_json(tmp_path: Path) -> None:
    table = with_knob_columns(load_results(_store(tmp_path), sweep="all"))
    assert table.schema.field("lowrank.rank_ratio").type == "double"
    trials = [r for r in table.to_pylist() if not r["is_baseline"]]
    assert sorted(r["lowrank.rank_ratio"] for r in trials) == [0.25, 0.75]
    # distill.lr is the same in both trials: it does not tell them apart
    assert "lowrank.rank_ratio" in varying_knobs(table)
    assert "distill.lr" not in varying_knobs(table)


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_pareto_shows_and_filters_on_a_searched_knob(tmp_path: Path, fmt: str) -> None:
    storage = _store(tmp_path)
    result = runner.invoke(
        app, ["pareto", "--storage", str(storage), "--format", fmt], terminal_width=160
    )
    assert result.exit_code == 0, result.stdout
    assert "lowrank.rank_ratio" in result.stdout
    assert "0.25" in result.stdout and "0.75" in result.stdout

    result = runner.invoke(
        app,
        [
            "pareto",
            "--storage",
            str(storage),
            "--format",
            "json",
            "--where",
            "lowrank.rank_ratio < 0.5",
        ],
    )
    assert result.exit_code == 0, result.stdout
    rows = json.loads(result.stdout)  # the baseline first (no knobs), then the front
    assert [r["lowrank.rank_ratio"] for r in rows if not r["is_baseline"]] == [0.25]
