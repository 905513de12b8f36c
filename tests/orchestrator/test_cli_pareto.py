"""`squeezeray pareto` and `squeezeray sweeps` through typer's CliRunner on generated results."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.query.pareto import pareto_front
from orchestrator.store.results import append_results, list_sweeps, load_results
from tests.rows import T0, make_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "runs"
    append_results(root, make_rows("old-1", seed=1, start=T0))
    append_results(root, make_rows("new-2", n=30, seed=2, start=T0 + timedelta(days=2)))
    return root


def expected_front(storage: Path, sweep: str = "latest", where: str | None = None) -> set[str]:
    front = pareto_front(load_results(storage, sweep=sweep), where=where)
    return set(front.column("trial_id").to_pylist())


def front_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The front rows of a machine-format answer: its sweeps' baselines come first
    (`is_baseline` true, "true" in CSV), then the front."""
    baselines = [r for r in rows if r["is_baseline"] in (True, "true", "True")]
    assert rows[: len(baselines)] == baselines  # the baselines first, as the table shows them
    return rows[len(baselines) :]


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_default_table_shows_baseline_then_front_with_ratios(storage: Path) -> None:
    code, stdout, _ = invoke("pareto", "--storage", str(storage))
    assert code == 0
    front = expected_front(storage)
    assert 0 < len(front) < 28
    assert stdout.index("baseline") < min(stdout.index(t) for t in front)
    for trial in front:
        assert trial in stdout
    assert "×" in stdout and "189.7 KB" in stdout  # ratios and the baseline's size in KB
    assert "Pareto front: " in stdout and "of 28 ok trials" in stdout


def test_json_goes_to_stdout_alone_and_matches_the_api(storage: Path) -> None:
    code, stdout, _ = invoke(
        "pareto", "--storage", str(storage), "--format", "json", "--sweep", "old-1"
    )
    assert code == 0
    everything = json.loads(stdout)  # nothing but the document on stdout
    assert [r["trial_id"] for r in everything if r["is_baseline"]] == ["baseline"]
    rows = front_rows(everything)
    assert {r["trial_id"] for r in rows} == expected_front(storage, "old-1")
    assert all(r["sweep_id"] == "old-1" and r["status"] == "ok" for r in rows)
    best = rows[0]  # best accuracy first
    assert best["test_accuracy"] == max(r["test_accuracy"] for r in rows)
    assert best["size_x"] == pytest.approx(189_700 / best["size_bytes"])
    # the one latency ratio is the paired speedup of the final phase (none in these rows)
    assert "latency_x" not in best and best["speedup"] is None
    assert best["accuracy_delta_pts"] == pytest.approx((best["test_accuracy"] - 0.9722) * 100)
    assert isinstance(best["stage_keys"], list) and best["started_at"].startswith("2025-03-01")


@pytest.mark.parametrize(
    ("sweep", "where"),
    [
        ("latest", None),
        ("all", None),
        ("old-1", "val_accuracy >= 0.95 and latency_ms_sweep < 0.02"),
    ],
)
def test_the_api_front_with_its_baselines_is_the_cli_answer_row_for_row(
    storage: Path, sweep: str, where: str | None
) -> None:
    """`pareto_front(load_results(...))` left out the baseline row `squeezeray pareto` lists
    (new user F10): one name, two answers. `baseline=True` gives the CLI's rows, the baselines
    first (the CLI also sorts the front best first and adds its ratio columns); without it the
    front alone, as before (what `hypervolume` is computed on)."""
    args = ["pareto", "--storage", str(storage), "--sweep", sweep, "--format", "json"]
    code, stdout, _ = invoke(*args, *(["--where", where] if where else []))
    assert code == 0
    cli = [(r["sweep_id"], r["trial_id"], r["is_baseline"]) for r in json.loads(stdout)]
    api = pareto_front(load_results(storage, sweep=sweep), where=where, baseline=True)
    rows = list(
        zip(
            api.column("sweep_id").to_pylist(),
            api.column("trial_id").to_pylist(),
            api.column("is_baseline").to_pylist(),
            strict=True,
        )
    )
    assert [r for r in rows if r[2]] == [r for r in cli if r[2]]  # the baselines, first
    assert rows[: len([r for r in rows if r[2]])] == [r for r in rows if r[2]]
    assert sorted(rows) == sorted(cli) and any(r[2] for r in rows)
    alone = pareto_front(load_results(storage, sweep=sweep), where=where)
    assert not any(alone.column("is_baseline").to_pylist())
    assert alone.num_rows == api.num_rows - sum(r[2] for r in rows)


def test_csv_with_where_and_top(storage: Path) -> None:
    where = "val_accuracy >= 0.95 and latency_ms_sweep < 0.02"
    code, stdout, _ = invoke(
        "pareto", "--storage", str(storage), "--format", "csv", "--where", where
    )
    assert code == 0
    rows = front_rows(list(csv.DictReader(io.StringIO(stdout))))
    assert {r["trial_id"] for r in rows} == expected_front(storage, where=where)
    assert all(
        float(r["val_accuracy"]) >= 0.95 and float(r["latency_ms_sweep"]) < 0.02 for r in rows
    )
    assert ";" in rows[0]["stage_keys"]  # lists are joined for CSV
    code, stdout, _ = invoke(
        "pareto", "--storage", str(storage), "--format", "csv", "--where", where, "--top", "2"
    )
    top = front_rows(list(csv.DictReader(io.StringIO(stdout))))
    assert [r["trial_id"] for r in top] == [r["trial_id"] for r in rows[:2]]


def test_all_sweeps_and_custom_objectives(storage: Path) -> None:
    code, stdout, _ = invoke(
        "pareto",
        "--storage",
        str(storage),
        "--sweep",
        "all",
        "--format",
        "json",
        "--objectives",
        "val_accuracy:max,params_nonzero",
    )
    assert code == 0
    rows = front_rows(json.loads(stdout))
    expected = pareto_front(
        load_results(storage, sweep="all"), {"val_accuracy": "max", "params_nonzero": "min"}
    )
    assert {(r["sweep_id"], r["trial_id"]) for r in rows} == set(
        zip(
            expected.column("sweep_id").to_pylist(),
            expected.column("trial_id").to_pylist(),
            strict=True,
        )
    )


def test_parquet_needs_output_and_writes_it(storage: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke("pareto", "--storage", str(storage), "--format", "parquet")
    assert code == 2 and "--output" in stderr
    target = tmp_path / "front.parquet"
    code, stdout, stderr = invoke(
        "pareto", "--storage", str(storage), "--format", "parquet", "--output", str(target)
    )
    assert code == 0 and stdout == ""
    table = pq.read_table(target)
    assert {r["trial_id"] for r in front_rows(table.to_pylist())} == expected_front(storage)
    assert "size_x" in table.column_names


def test_output_file_for_text_formats(storage: Path, tmp_path: Path) -> None:
    target = tmp_path / "front.csv"
    code, stdout, stderr = invoke(
        "pareto", "--storage", str(storage), "--format", "csv", "--output", str(target)
    )
    assert code == 0 and stdout == "" and "wrote" in stderr
    assert len(front_rows(list(csv.DictReader(target.open())))) == len(expected_front(storage))


def test_empty_result_is_a_message_and_exit_0(storage: Path) -> None:
    code, stdout, stderr = invoke(
        "pareto", "--storage", str(storage), "--where", "val_accuracy > 2"
    )
    assert code == 0
    assert "no ok trial matches --where 'val_accuracy > 2'" in stderr
    code, stdout, stderr = invoke(
        "pareto", "--storage", str(storage), "--where", "val_accuracy > 2", "--format", "json"
    )
    assert code == 0 and json.loads(stdout) == []


def test_bad_expression_and_unknown_column_exit_2(storage: Path) -> None:
    code, stdout, stderr = invoke(
        "pareto", "--storage", str(storage), "--where", "val_accuracy >> 1"
    )
    assert code == 2 and stdout == ""
    assert "syntax error at position 15" in stderr
    code, _, stderr = invoke("pareto", "--storage", str(storage), "--where", "acc > 0.9")
    assert code == 2
    assert "unknown column 'acc'" in stderr and "latency_ms" in stderr
    code, _, stderr = invoke("pareto", "--storage", str(storage), "--objectives", "val_accuracy:up")
    assert code == 2 and "accepted: max, min" in stderr


def test_missing_storage_exit_2_with_how_to(tmp_path: Path) -> None:
    code, stdout, stderr = invoke("pareto", "--storage", str(tmp_path / "missing"))
    assert code == 2 and stdout == ""
    assert "no results at" in stderr and "squeezeray sweep --storage" in stderr


def test_unknown_sweep_and_format(storage: Path) -> None:
    code, _, stderr = invoke("pareto", "--storage", str(storage), "--sweep", "zzz")
    assert code == 2 and "old-1" in stderr and "new-2" in stderr
    code, _, stderr = invoke("pareto", "--storage", str(storage), "--format", "xml")
    assert code == 2 and "accepted: table, csv, json, parquet" in stderr
    code, _, stderr = invoke("pareto", "--storage", str(storage), "--plot", "front.svg")
    assert code == 2 and ".png, .html" in stderr


def test_plot_option_writes_the_file(storage: Path, tmp_path: Path) -> None:
    target = tmp_path / "front.png"
    code, _, _ = invoke(
        "pareto", "--storage", str(storage), "--plot", str(target), "--format", "json"
    )
    assert code == 0 and target.stat().st_size > 10_000


def test_sweeps_lists_every_sweep(storage: Path) -> None:
    code, stdout, _ = invoke("sweeps", "--storage", str(storage))
    assert code == 0
    assert stdout.index("old-1") < stdout.index("new-2")
    assert "28" in stdout and "22" in stdout  # ok counts of the two sweeps


def test_sweeps_missing_storage(tmp_path: Path) -> None:
    code, _, stderr = invoke("sweeps", "--storage", str(tmp_path / "nothing"))
    assert code == 2 and "squeezeray sweep --storage" in stderr


@pytest.mark.parametrize("width", [80, 160])
def test_knobs_stay_readable_on_narrow_and_wide_consoles(storage: Path, width: int) -> None:
    """On 80 columns the knobs move to a table of their own (instead of a column folded a few
    characters a line); on a wide console they are the front table's last column."""
    from rich.console import Console

    from orchestrator.query.frontview import KNOBS_INLINE_MIN_WIDTH, _knobs, build_front, show_front

    view = build_front(load_results(storage, sweep="all"), None)  # two sweeps: ids repeat
    sink = io.StringIO()
    show_front(view, Console(file=sink, width=width))
    lines = sink.getvalue().splitlines()
    # every front point's knobs appear whole, on one line with its sweep and trial id
    for row in view.front.to_pylist():
        assert any(
            row["sweep_id"] in line and row["trial_id"] in line and _knobs(row, view.knobs) in line
            for line in lines
        ), (row["sweep_id"], row["trial_id"])
    assert (sink.getvalue().count("knobs") == 2) is (width < KNOBS_INLINE_MIN_WIDTH)


def test_sweeps_lists_a_crashed_sweep_from_its_manifest(tmp_path: Path) -> None:
    """A sweep whose manifest says `failed` is listed even with no rows at all, with its
    status and the command that resumes it; a finished one gets no resume command."""

    root = tmp_path / "runs"
    append_results(root, make_rows("done-1", n=5, seed=1, start=T0))
    (root / "sweeps").mkdir(parents=True)
    for sweep_id, status in (("done-1", "finished"), ("crashed-2", "failed")):
        manifest = {
            "sweep_id": sweep_id, "name": f"name-{sweep_id}", "task": "digits",
            "status": status, "error": "boom" if status == "failed" else None,
            "resume_command": f"squeezeray sweep --resume --sweep-id {sweep_id} "
                              f"--storage {root}",
            "updated_at": (T0 + timedelta(days=1)).isoformat(),
        }  # fmt: skip
        (root / "sweeps" / f"{sweep_id}.json").write_text(json.dumps(manifest))
    code, stdout, _ = invoke("sweeps", "--storage", str(root))
    assert code == 0
    text = " ".join(stdout.split())
    assert "crashed-2" in text and "failed" in text and "finished" in text
    assert f"squeezeray sweep --resume --sweep-id crashed-2 --storage {root}" in text
    assert "--sweep-id done-1" not in text
    listing = {r["sweep_id"]: r for r in list_sweeps(root).to_pylist()}
    assert listing["crashed-2"]["trials_ok"] == 0 and listing["crashed-2"]["status"] == "failed"
    assert listing["done-1"]["resume_command"] is None

    only = tmp_path / "only-crashed"  # no results/ at all: still listed, not "no results"
    (only / "sweeps").mkdir(parents=True)
    (root / "sweeps" / "crashed-2.json").rename(only / "sweeps" / "crashed-2.json")
    code, stdout, _ = invoke("sweeps", "--storage", str(only))
    assert code == 0 and "crashed-2" in stdout and "--resume" in stdout


def _final_phase_rows(sweeps: tuple[str, ...]) -> list[dict]:
    """A 50M-parameter-like sweep's rows with the final latency phase's columns."""
    from tests.rows import result_row

    rows = []
    for sweep in sweeps:
        common = {"runtime": "eager", "latency_rounds": 7, "latency_cv": 0.02}
        rows.append(result_row(sweep, "baseline", val_accuracy=0.9123, test_accuracy=0.9034,
                               size_bytes=180_500_000, latency_ms_sweep=41.2,
                               latency_ms_final=40.8, speedup=1.0, **common))  # fmt: skip
        for i, (acc, size, ms) in enumerate([(0.9101, 95e6, 25.0), (0.8871, 30.1e6, 9.8)]):
            rows.append(result_row(sweep, f"a1b2c_0000{i}", minute=i, val_accuracy=acc,
                                   test_accuracy=acc - 0.01, size_bytes=size,
                                   latency_ms_sweep=ms, latency_ms_final=ms * 1.01,
                                   speedup=40.8 / ms, **common))  # fmt: skip
    return rows


@pytest.mark.parametrize("sweeps", [("s1",), ("sweep-20261207-041500-ab12", "sweep-2-xy")])
def test_front_fits_an_80_column_terminal_without_ellipses(
    tmp_path: Path, sweeps: tuple[str, ...]
) -> None:
    """At 80 columns every shown cell is whole (rich cut each column to "0.9…" and the baseline
    to "baseli…"): the ids, val acc, size, latency and speedup stay, the least important columns
    give way, and the caption names them and how to see every column."""
    from rich.console import Console

    from orchestrator.query.frontview import build_front, show_front

    root = tmp_path / "runs"
    append_results(root, _final_phase_rows(sweeps))
    view = build_front(load_results(root, sweep="all"), None)
    sink = io.StringIO()
    show_front(view, Console(file=sink, width=80))
    text = sink.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    lines = text.splitlines()
    baseline = next(line for line in lines if line.lstrip().startswith(("baseline", "sweep")) and
                    "baseline" in line)  # fmt: skip
    assert "0.9123" in baseline and "180.50 MB" in baseline
    point = next(line for line in lines if "a1b2c_00000" in line and "MB" in line)
    for value in ("0.9101", "95.00 MB", "25", "1.63×"):
        assert value in point, (value, point)
    assert "not shown at 80 columns" in text and "--format csv" in " ".join(text.split())
    if len(sweeps) > 1:
        assert all(s in text for s in sweeps)


def test_sweeps_keeps_ids_whole_on_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`squeezeray sweeps` on an 80-column terminal: a sweep id (what --sweep and --resume
    take) is never cut to "tiny-2026…", and no header or value ends in an ellipsis."""
    from rich.console import Console

    import orchestrator.cli as cli

    root = tmp_path / "runs"
    sweep_id = "tiny-20261207-044823-7902"
    rows = make_rows(sweep_id, n=4, seed=3)
    for row in rows:
        row["sweep_name"], row["task"] = "tiny", "blobs"  # as `squeezeray sweep tiny` names it
    append_results(root, rows)
    sink = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=sink, width=80))
    code, _, _ = invoke("sweeps", "--storage", str(root))
    text = sink.getvalue()
    assert code == 0 and sweep_id in text and "…" not in text, text
    assert "2025-03-01" in text and "name" not in text.split("─")[0]  # the name is the id's prefix
