"""One rule for metric names (issue 25, item 1), in every place a user names a metric.

A table of places x names: `val_accuracy` and a task metric's `val_f1` resolve to that very
column everywhere; the bare `accuracy` and the bare task metric name `f1` are refused everywhere
with the same words (only the place differs), naming the two explicit columns. Also: results
written before the names said their split are read under today's names, and the hypervolume
of `squeezeray sweeps` and of a nightly report is the same number (one reference per task).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.query.choose import find_row, select_row
from orchestrator.query.pareto import hypervolume, pareto_front
from orchestrator.query.result import SweepResult
from orchestrator.query.where import parse_where
from orchestrator.space.metrics import ambiguous_message
from orchestrator.space.parse import parse_space
from orchestrator.store.results import append_results, list_sweeps, load_results
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError
from tests.rows import make_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sweep whose rows carry a task metric `f1` (stored as the task reports it)."""
    root = tmp_path_factory.mktemp("names") / "runs"
    rows = make_rows("s-1", n=8, failures=0)
    for i, row in enumerate(rows):
        row["custom_metrics"] = json.dumps({"f1": 0.5 + i / 100, "val_f1": 0.4 + i / 100})
    append_results(root, rows)
    return root


@pytest.fixture(scope="module")
def table(storage: Path) -> pa.Table:
    return load_results(storage)


def _space_objective(name: str) -> str:
    space = parse_space(
        {"task": "usertask:make", "pipeline": ["teacher", "prune"], "objectives": {name: "max"}},
        source="s.yaml",
        check_task=False,
    )
    return space.with_task_metric("f1").search_objectives()[0][0]


def _space_constraint(name: str) -> str:
    space = parse_space(
        {
            "task": "usertask:make",
            "pipeline": ["teacher", "prune"],
            "constraints": {name: ">= 0.1"},
        },
        source="s.yaml",
        check_task=False,
    )
    return space.with_task_metric("f1").search_constraints()[0][0]


def _cli(storage: Path, *args: str) -> str:
    result = runner.invoke(app, list(args))
    if result.exit_code:
        raise SqueezerayError(result.stderr.removeprefix("error: ").strip())
    return "ok"


def _places(storage: Path, table: pa.Table) -> dict[str, Callable[[str], Any]]:
    """Each user-facing place, as a function of the metric name it is given; it returns the
    column chosen (or the rows chosen on it), or raises SqueezerayError."""
    result = SweepResult(
        table=table, storage=str(storage), sweep_id="s-1", objectives={"val_accuracy": "max"}
    )
    where_cli = ("pareto", "--storage", str(storage), "--format", "json", "--where")
    return {
        "objectives (space)": _space_objective,
        "constraints (space)": _space_constraint,
        "--where": lambda n: parse_where(f"{n} >= 0", table.schema) is not None and n,
        "--where (CLI)": lambda n: _cli(storage, *where_cli, f"{n} >= 0") and n,
        "--objectives (CLI)": lambda n: (
            _cli(
                storage, "pareto", "--storage", str(storage), "--objectives", f"{n}:max,size_bytes"
            )
            and n
        ),
        "--pick": lambda n: select_row(table, pick=f"{n}:max") and n,
        "export (find_row)": lambda n: find_row(storage, pick=f"{n}:max")[0] and n,
        "pareto_front": lambda n: pareto_front(table, {n: "max", "size_bytes": "min"}) and n,
        "hypervolume": lambda n: hypervolume(table, {n: "max"}) is not None and n,
        "SweepResult.best": lambda n: result.best(n, "max") and n,
        "SweepResult.front": lambda n: result.front({n: "max", "size_bytes": "min"}) and n,
    }


PLACES = [
    "objectives (space)",
    "constraints (space)",
    "--where",
    "--where (CLI)",
    "--objectives (CLI)",
    "--pick",
    "export (find_row)",
    "pareto_front",
    "hypervolume",
    "SweepResult.best",
    "SweepResult.front",
]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", ["val_accuracy", "val_f1"])
def test_an_explicit_name_means_its_column_everywhere(
    storage: Path, table: pa.Table, place: str, name: str
) -> None:
    assert _places(storage, table)[place](name) == name


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    ("name", "pair"),
    [("accuracy", ("val_accuracy", "test_accuracy")), ("f1", ("val_f1", "test_f1"))],
)
def test_a_bare_name_is_refused_the_same_way_everywhere(
    storage: Path, table: pa.Table, place: str, name: str, pair: tuple[str, str]
) -> None:
    with pytest.raises(SqueezerayError) as caught:
        _places(storage, table)[place](name)
    words = ambiguous_message("PLACE", name, pair).removeprefix("PLACE: ")
    assert words in " ".join(str(caught.value).split())


@pytest.mark.parametrize("place", [*PLACES, "--pick (bare)", "export --pick (CLI)"])
@pytest.mark.parametrize(
    ("name", "meant"), [("val_acuracy", "val_accuracy"), ("size", "size_bytes")]
)
def test_a_misspelt_or_shortened_name_gets_a_did_you_mean_everywhere(
    storage: Path, table: pa.Table, tmp_path: Path, place: str, name: str, meant: str
) -> None:
    """newuser7 F-G 1: `--where val_acuracy` said "did you mean val_accuracy?", `export
    --pick size` and a misspelt objective column named no column. One helper for all; a
    shortened name (`size`) is suggested its column too."""
    places = {
        **_places(storage, table),
        "--pick (bare)": lambda n: select_row(table, pick=n),
        "export --pick (CLI)": lambda n: _cli(
            storage, "export", "--storage", str(storage), "--pick", n, "--output", str(tmp_path)
        ),
    }
    with pytest.raises(SqueezerayError) as caught:
        places[place](name)
    assert f"(did you mean {meant}?)" in " ".join(str(caught.value).split())


def test_the_bare_latency_is_refused_with_the_two_measurements(table: pa.Table) -> None:
    with pytest.raises(SqueezerayError, match=r"latency_ms_sweep .* or latency_ms_final"):
        parse_where("latency_ms < 1", table.schema)
    with pytest.raises(SqueezerayError, match=r"latency_ms_sweep .* or latency_ms_final"):
        pareto_front(table, {"latency_ms": "min"})


def test_the_test_split_is_never_chosen_on_but_can_be_filtered(table: pa.Table) -> None:
    assert parse_where("test_accuracy >= 0", table.schema) is not None
    for choose in (
        lambda: pareto_front(table, {"test_accuracy": "max"}),
        lambda: select_row(table, pick="test_f1:max"),
    ):
        with pytest.raises(SqueezerayError, match="is the test split, which is reported only"):
            choose()


def test_results_written_under_the_old_names_read_under_the_new_ones(tmp_path: Path) -> None:
    """Before the split names, `accuracy` held the test split and `latency_ms` the final
    figure on re-measured rows (latency_rounds set), the in-sweep one elsewhere."""
    import pyarrow.parquet as pq

    old = RESULTS_SCHEMA
    for name in (
        "test_accuracy",
        "latency_ms_sweep_p90",
        "latency_ms_final",
        "latency_ms_final_p90",
    ):  # fmt: skip (latency_ms_sweep existed already)
        old = old.remove(old.get_field_index(name))
    old = old.append(pa.field("accuracy", pa.float64())).append(
        pa.field("latency_ms", pa.float64())
    )
    base = {"sweep_name": "o", "task": "digits", "status": "ok", "val_accuracy": 0.9}
    rows = [
        {**base, "trial_id": "t1", "is_baseline": False, "accuracy": 0.91, "latency_ms": 0.2},
        {**base, "trial_id": "t2", "is_baseline": False, "accuracy": 0.92, "latency_ms": 0.3,
         "latency_ms_sweep": 0.35, "latency_rounds": 7, "speedup": 2.0},
    ]  # fmt: skip
    folder = tmp_path / "results" / "sweep_id=old-1"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=old.remove(old.get_field_index("sweep_id")))
    pq.write_table(table, folder / "part-0.parquet")
    read = {r["trial_id"]: r for r in load_results(tmp_path).to_pylist()}
    assert "accuracy" not in load_results(tmp_path).column_names
    assert read["t1"]["test_accuracy"] == 0.91 and read["t2"]["test_accuracy"] == 0.92
    assert read["t1"]["latency_ms_sweep"] == 0.2 and read["t1"]["latency_ms_final"] is None
    assert read["t2"]["latency_ms_final"] == 0.3 and read["t2"]["latency_ms_sweep"] == 0.35


def test_sweeps_and_nightly_reports_measure_hypervolume_against_one_reference(
    tmp_path: Path,
) -> None:
    """Two sweeps of a task whose baselines were timed differently: both listed hypervolumes
    use the first sweep's reference (0 for accuracy, 2 x its baseline's size and latency), the
    numbers a nightly report gives for them."""
    from orchestrator.query.pareto import DEFAULT_OBJECTIVES, baseline_reference
    from orchestrator.query.report import build_report

    first = make_rows("a-1", n=6, failures=0)
    second = make_rows("b-2", n=6, seed=1, failures=0)
    second[0]["latency_ms_sweep"] = 0.04  # the second baseline measured slower
    second[0]["started_at"] = first[-1]["finished_at"]
    append_results(tmp_path, first + second)
    everything = load_results(tmp_path, sweep="all")
    reference = baseline_reference(everything.filter(pa.compute.equal(
        everything.column("sweep_id"), "a-1")), DEFAULT_OBJECTIVES)  # fmt: skip
    assert reference == {"val_accuracy": 0.0, "size_bytes": 2 * 189_700, "latency_ms_sweep": 0.052}
    listed = {r["sweep_id"]: r["hypervolume"] for r in list_sweeps(tmp_path).to_pylist()}
    for sweep_id in ("a-1", "b-2"):
        rows = everything.filter(pa.compute.equal(everything.column("sweep_id"), sweep_id))
        assert listed[sweep_id] == pytest.approx(hypervolume(rows, reference=reference))
    report = build_report(everything, "b-2", objectives=DEFAULT_OBJECTIVES)
    assert report.reference == pytest.approx(reference)
    assert report.hypervolume == pytest.approx(listed["b-2"])
    assert report.hypervolume_previous == pytest.approx(listed["a-1"])


def test_a_sweep_result_prints_as_one_line(storage: Path, table: pa.Table) -> None:
    result = SweepResult(
        table=table, storage=str(storage), sweep_id="s-1", objectives={"val_accuracy": "max"}
    )
    text = repr(result)
    trials = [r for r in table.to_pylist() if not r["is_baseline"]]
    assert "\n" not in text and "sweep_id='s-1'" in text
    assert f"trials={len(trials)} (" in text and "objectives={val_accuracy:max}" in text


def test_the_latency_reference_is_the_baselines_final_phase_figure_where_measured() -> None:
    """A baseline timed in the sweep from 5 calls on a busy machine (46 ms, +-62%) against
    3.7 ms in the final phase: the stored reference was 2 x 46 ms and every later sweep of the
    task was measured against it (new user F6). The final phase's figure is the reference's
    where it exists; the in-sweep one otherwise; other metrics are unchanged."""
    from orchestrator.query.pareto import baseline_reference

    rows = make_rows("v-1", n=4, failures=0)
    baseline = rows[0]
    assert baseline["is_baseline"]
    baseline.update(latency_ms_sweep=46.08, latency_ci_sweep=0.62, latency_ms_final=3.71)
    objectives = {"val_accuracy": "max", "size_bytes": "min", "latency_ms_sweep": "min"}
    reference = baseline_reference(pa.Table.from_pylist(rows), objectives)
    assert reference["latency_ms_sweep"] == pytest.approx(2 * 3.71)
    assert reference["size_bytes"] == 2 * baseline["size_bytes"]
    baseline["latency_ms_final"] = None  # interrupted before the final phase
    reference = baseline_reference(pa.Table.from_pylist(rows), objectives)
    assert reference["latency_ms_sweep"] == pytest.approx(2 * 46.08)
