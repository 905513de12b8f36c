"""`squeezeray nightly`: warm start from earlier sweeps, the drift report and its regression
checks (on hand-made results tables), and two real nightly runs on one storage."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from orchestrator.nightly.run import prepare_nightly, warm_start_from
from orchestrator.query.report import (
    Thresholds,
    build_report,
    fixed_reference,
    format_number,
    render_html,
    render_markdown,
)
from orchestrator.space.config import load_space
from orchestrator.store.results import rows_to_table
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError

OBJECTIVES = {"val_accuracy": "max", "size_bytes": "min", "latency_ms_sweep": "min"}
T0 = datetime(2026, 1, 5, 2, 0, tzinfo=timezone.utc)


def _params(ratio: float, mode: str) -> str:
    return json.dumps({"prune.ratio": ratio, "quantize.mode": mode, "teacher.epochs": 3})


def _sweep(
    sweep: str, day: int, points: list[tuple[float, str, float, int, float]], **baseline: Any
) -> list[dict[str, Any]]:
    """A sweep's rows: the baseline, then one trial per (ratio, mode, accuracy, size, latency)."""
    start = T0 + timedelta(days=day)
    base = {
        "test_accuracy": 0.99,
        "val_accuracy": 0.985,
        "size_bytes": 100_000,
        "latency_ms_sweep": 0.05,
        "params_total": 25_000,
    }
    base.update(baseline)
    rows = [
        {
            "sweep_id": sweep,
            "sweep_name": sweep,
            "trial_id": "baseline",
            "started_at": start,
            "finished_at": start,
            "task": "blobs",
            "status": "ok",
            "is_baseline": True,
            "params": "{}",
            **base,
        }
    ]
    for i, (ratio, mode, acc, size, lat) in enumerate(points):
        rows.append(
            {
                "sweep_id": sweep,
                "sweep_name": sweep,
                "trial_id": f"{sweep}-t{i}",
                "started_at": start + timedelta(minutes=i + 1),
                "finished_at": start + timedelta(minutes=i + 2),
                "task": "blobs",
                "status": "ok",
                "is_baseline": False,
                "params": _params(ratio, mode),
                "prune.ratio": ratio,
                "quantize.mode": mode,
                "test_accuracy": acc,
                "val_accuracy": None if acc is None else acc - 0.005,  # validation: a bit lower
                "size_bytes": size,
                "latency_ms_sweep": lat,
            }
        )
    return rows


NIGHT_1 = [(0.3, "none", 0.97, 8000, 0.040), (0.6, "none", 0.96, 5000, 0.040)]


def _report(rows: list[dict[str, Any]], sweep: str, **thresholds: float) -> Any:
    table = rows_to_table(rows, RESULTS_SCHEMA)
    return build_report(
        table,
        sweep,
        objectives=OBJECTIVES,
        thresholds=Thresholds(**thresholds),
        knob_names=["prune.ratio", "quantize.mode"],
        storage="runs",
    )


def test_same_results_again_are_no_regression() -> None:
    rows = _sweep("n1", 0, NIGHT_1) + _sweep("n2", 1, NIGHT_1)
    report = _report(rows, "n2")
    assert report.previous_sweep_id == "n1" and report.earlier_sweeps == 1
    assert report.hypervolume == pytest.approx(report.hypervolume_previous)
    assert report.hypervolume > 0
    assert report.hypervolume_all_time == pytest.approx(report.hypervolume)
    assert report.exit_code == 0 and report.regressions == []
    assert report.new_front_points == []  # the same points were there the night before
    kinds = sorted(c.kind for c in report.comparisons)
    assert kinds == ["accuracy", "accuracy", "hypervolume", "latency", "latency"]


def test_reference_is_the_earliest_baseline_with_slack() -> None:
    rows = _sweep("n1", 0, NIGHT_1) + _sweep("n2", 1, NIGHT_1, size_bytes=300_000)
    report = _report(rows, "n2")
    assert report.reference == {
        "val_accuracy": 0.0,
        "size_bytes": 200_000.0,
        "latency_ms_sweep": 0.1,
    }
    assert report.reference_sweep_id == "n1"
    reference = fixed_reference(rows_to_table(rows[:3], RESULTS_SCHEMA), OBJECTIVES)
    assert list(reference.values()) == list(report.reference.values())
    # Hand-computed hypervolume of night 1 against it: two boxes sharing latency 0.04..0.1, on
    # the validation accuracies (0.965, 0.955), never the test ones (0.97, 0.96).
    # (0.965 x (200000-8000)) + (0.955 x (200000-5000)) - overlap (0.955 x (200000-8000)), x 0.06
    expected = (0.965 * 192_000 + 0.955 * 195_000 - 0.955 * 192_000) * 0.06
    assert report.hypervolume_previous == pytest.approx(expected)
    drift = {d.metric: d for d in report.drift}
    assert drift["size_bytes"].change_pct == pytest.approx(200.0)
    assert drift["test_accuracy"].change_pct == pytest.approx(0.0)


def test_accuracy_drop_on_the_same_knobs_is_a_regression() -> None:
    tonight = [(0.3, "none", 0.94, 8000, 0.040), (0.6, "none", 0.96, 5000, 0.040)]
    rows = _sweep("n1", 0, NIGHT_1) + _sweep("n2", 1, tonight)
    report = _report(rows, "n2", hypervolume_drop_pct=50.0)
    assert report.exit_code == 3
    (regression,) = report.regressions
    assert (
        regression.kind == "accuracy" and regression.knobs == "prune.ratio=0.3, quantize.mode=none"
    )
    assert regression.change == pytest.approx(-3.0)
    # Below the threshold it is reported, not alerted on.
    assert _report(rows, "n2", hypervolume_drop_pct=50.0, accuracy_drop_points=5.0).exit_code == 0


def test_latency_and_hypervolume_regressions() -> None:
    slower = [(0.3, "none", 0.97, 8000, 0.070), (0.6, "none", 0.96, 5000, 0.041)]
    rows = _sweep("n1", 0, NIGHT_1) + _sweep("n2", 1, slower)
    report = _report(rows, "n2")
    crossed = {(c.kind, c.knobs.split(",")[0]) for c in report.regressions}
    assert ("latency", "prune.ratio=0.3") in crossed  # +75 %
    assert ("latency", "prune.ratio=0.6") not in crossed  # +2.5 %: noise
    hv = next(c for c in report.comparisons if c.kind == "hypervolume")
    assert hv.change == pytest.approx((report.hypervolume / report.hypervolume_previous - 1) * 100)
    assert _report(rows, "n2", latency_increase_pct=100.0, hypervolume_drop_pct=100).exit_code == 0


def test_new_front_points_and_all_time_front() -> None:
    better = [(0.3, "dynamic_int8", 0.97, 3000, 0.030)]
    rows = _sweep("n1", 0, NIGHT_1) + _sweep("n2", 1, better)
    report = _report(rows, "n2")
    assert [p["knobs"] for p in report.new_front_points] == [
        "prune.ratio=0.3, quantize.mode=dynamic_int8"
    ]
    assert report.hypervolume > report.hypervolume_previous
    assert report.hypervolume_all_time >= report.hypervolume
    assert report.exit_code == 0
    assert [c.kind for c in report.comparisons] == ["hypervolume"]  # no shared knob point


def test_first_night_and_other_tasks() -> None:
    other = [dict(r, task="digits", sweep_id="d0") for r in _sweep("d0", -1, NIGHT_1)]
    rows = other + _sweep("n1", 0, NIGHT_1)
    report = _report(rows, "n1")
    assert report.previous_sweep_id is None and report.earlier_sweeps == 0  # digits ignored
    assert report.comparisons == [] and report.drift == [] and report.exit_code == 0
    assert len(report.new_front_points) == 2
    with pytest.raises(SqueezerayError, match="no rows"):
        _report(rows, "missing")


def test_rendered_report_names_both_hypervolumes_and_escapes_html() -> None:
    tonight = [(0.3, "none", 0.90, 8000, 0.040)]
    rows = _sweep("n1", 0, NIGHT_1) + _sweep("n2<b>", 1, tonight)
    report = _report(rows, "n2<b>")
    md, page = render_markdown(report), render_html(report)
    for value in (report.hypervolume, report.hypervolume_previous):
        shown = format_number(value)
        assert f"| {shown} |" in md and f"<td>{shown}</td>" in page
    assert "REGRESSION" in md and 'class="regression"' in page
    assert "n2&lt;b&gt;" in page and "n2<b>" not in page
    assert "<script" not in page and "http" not in page  # self-contained


def test_report_counts_scheduler_stops_apart_from_failures() -> None:
    """A trial ASHA stopped early is `stopped`, not failed, as in the sweep's summary line and
    `squeezeray sweeps` (new user F21)."""
    rows = _sweep("n1", 0, NIGHT_1 + [(0.9, "none", None, None, None)] * 3)
    rows[-1].update(status="error")
    for row in rows[-3:-1]:
        row.update(status="stopped")
    report = _report(rows, "n1")
    assert (report.trials_ok, report.trials_stopped, report.trials_failed) == (2, 2, 1)
    assert "Trials: 2 ok, 2 stopped early by the scheduler, 1 failed." in render_markdown(report)


def test_thresholds_must_be_non_negative() -> None:
    with pytest.raises(SqueezerayError, match="accuracy_drop_points=-1"):
        Thresholds(accuracy_drop_points=-1)


def test_warm_start_keeps_valid_points_of_the_task() -> None:
    space = load_space("tiny").with_overrides(algorithm="optuna")
    rows = _sweep("n1", 0, [*NIGHT_1, (0.45, "none", 0.9, 1, 0.1)])  # 0.45 is not a choice
    rows += _sweep("n2", 1, [(0.3, "none", 0.98, 7000, 0.030)])  # newer run of a point
    rows.append(
        dict(rows[1], trial_id="failed", status="error", test_accuracy=None, val_accuracy=None)
    )
    rows.append(dict(rows[1], trial_id="other-task", task="digits"))
    rows.append(
        dict(
            rows[1],
            trial_id="no-latency",
            latency_ms_sweep=None,
            params=_params(0.6, "dynamic_int8"),
        )
    )
    points, rewards, _ = warm_start_from(rows_to_table(rows, RESULTS_SCHEMA), space) or (
        [],
        [],
        [],
    )
    assert points == [
        {"prune.ratio": 0.6, "quantize.mode": "none"},
        {"prune.ratio": 0.3, "quantize.mode": "none"},
    ]
    # newest value wins; the search's values are the validation ones
    assert rewards == [[0.955, 5000.0, 0.04], [0.975, 7000.0, 0.03]]
    assert warm_start_from(None, space) is None


def test_warm_start_seeds_a_multi_objective_optuna_study() -> None:
    from orchestrator.engine.search import make_search

    space = load_space("tiny").with_overrides(algorithm="optuna")
    points = [{"prune.ratio": 0.3, "quantize.mode": "none"}]
    alg, _, _ = make_search(
        space, constraints=(), points_to_evaluate=points, evaluated_rewards=[[0.9, 5000.0, 0.04]]
    )
    searcher = getattr(alg, "inner", alg).searcher
    (trial,) = searcher._ot_study.trials
    assert trial.params == points[0] and trial.values == [0.9, 5000.0, 0.04]


def test_prepare_nightly_names_and_seeds_by_date(tmp_path: Path) -> None:
    prepared = prepare_nightly("tiny", storage=tmp_path, day=date(2026, 3, 4))
    assert prepared.space.name == "nightly-20260304"
    assert (
        prepared.sweep_id.startswith("nightly-20260304-") and prepared.sweep_id.count("2026") == 1
    )
    assert prepared.space.search.seed == 20260304 and prepared.space.search.algorithm == "optuna"


def test_nightly_resume_picks_the_latest_night_and_names_itself_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nightly --resume` (no Ray here): the newest nightly sweep, not a later manual one;
    an interruption under it names `nightly --resume` with the report's options (and the lock
    is released); a night that ended is not run again (exit 0)."""
    import orchestrator.nightly.run as night
    from orchestrator.cli import app
    from orchestrator.engine.manifest import read_manifest, write_manifest
    from orchestrator.engine.sweep import SweepInterrupted, SweepSummary, prepare_sweep
    from orchestrator.store.lock import storage_lock

    storage = tmp_path / "runs"
    with pytest.raises(SqueezerayError, match="no sweep"):
        prepare_nightly(storage=storage, resume=True)
    with pytest.raises(SqueezerayError, match="--sweep-id 'x' is only for --resume"):
        prepare_nightly("tiny", storage=storage, sweep_id="x")
    tonight = prepare_nightly("tiny", storage=storage, trials=3)
    write_manifest(tonight.storage, tonight, status="interrupted")
    manual = prepare_sweep("tiny", storage=storage, sweep_id="manual")  # newer, not a night
    write_manifest(manual.storage, manual, status="interrupted")
    resumed = prepare_nightly(storage=storage, resume=True)
    assert (resumed.sweep_id, resumed.resume) == (tonight.sweep_id, True)
    manifest = read_manifest(tonight.storage, tonight.sweep_id)  # for a crash: no message
    assert manifest["resume_command"].startswith("squeezeray nightly --resume --sweep-id")
    assert resumed.space == tonight.space and not resumed.finished

    def interrupted(prepared: Any, **_: Any) -> Any:
        summary = SweepSummary(
            sweep_id=prepared.sweep_id, storage=str(storage), trials_ok=1, trials_failed=0,
            stages_executed=0, stages_loaded=0, stage_requests=0, corrupt_checkpoints=0,
            wall_s=1.0, interrupted=True, resume_command="squeezeray sweep --resume ...",
        )  # fmt: skip
        raise SweepInterrupted(summary)

    monkeypatch.setattr(night, "execute_sweep", interrupted)
    reports = tmp_path / "reports"
    with pytest.raises(SweepInterrupted) as err:
        night.execute_nightly(
            resumed, report_dir=reports, thresholds=Thresholds(accuracy_drop_points=1.0),
            gc_keep_last=2,
        )  # fmt: skip
    command = str(err.value).split("To continue, run: ")[1]
    assert command.split() == [
        "squeezeray", "nightly", "--resume", "--sweep-id", tonight.sweep_id, "--storage",
        str(storage.resolve()), "--report-dir", str(reports.resolve()), "--accuracy-threshold",
        "1", "--gc-keep-last", "2",
    ]  # fmt: skip
    with storage_lock(storage, wait=False):
        pass  # released

    write_manifest(tonight.storage, tonight, status="finished")
    result = CliRunner().invoke(app, ["nightly", "--resume", "--storage", str(storage)])
    assert result.exit_code == 0, result.output
    assert f"sweep {tonight.sweep_id} already finished" in result.output


# -- two real nights ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_nightly_twice_reuses_stages_reports_and_flags_a_regression(tmp_path: Path) -> None:
    from orchestrator.cli import app
    from orchestrator.engine.manifest import write_manifest
    from orchestrator.store.results import append_results, list_sweeps, load_results, load_stages
    from orchestrator.store.rows import now

    storage = tmp_path / "runs"
    runner = CliRunner()
    first = runner.invoke(app, ["nightly", "tiny", "--storage", str(storage), "--trials", "3"])
    assert first.exit_code == 0, first.output
    (first_id,) = list_sweeps(storage).column("sweep_id").to_pylist()

    # Inject a regression: rewrite the first night's trials as if they had been 100x faster (a
    # later finished_at makes these rows win over the originals; the baseline, which fixes the
    # hypervolume's reference point, stays as measured).
    rows = [r for r in load_results(storage, sweep=first_id).to_pylist() if not r["is_baseline"]]
    for row in rows:
        # both figures: the front and its hypervolume select on the in-sweep one
        for column in ("latency_ms_sweep", "latency_ms_final"):
            if row.get(column) is not None:
                row[column] = row[column] / 100
        row["finished_at"] = now()
    append_results(storage, rows)

    # The second night was killed before Tune saved anything (its manifest only);
    # `nightly --resume` finishes it as a night: the report, exit code 3, gc under the lock.
    killed = prepare_nightly("tiny", storage=storage, trials=3)
    write_manifest(killed.storage, killed, status="running")
    report_dir = tmp_path / "reports"
    second = runner.invoke(
        app,
        [
            "nightly",
            "tiny",
            "--resume",
            "--storage",
            str(storage),
            "--trials",
            "3",
            "--report-dir",
            str(report_dir),
            "--gc-keep-last",
            "1",
        ],
    )
    assert second.exit_code == 3, second.output
    assert f"{killed.sweep_id}" in second.output and "(resumed)" in second.output
    assert "REGRESSION hypervolume" in second.stdout
    # --gc-keep-last 1: only checkpoints tonight's sweep references are left in the cache.
    assert "gc: removed" in second.stdout
    from orchestrator.store.gc import cache_entries

    tonight = load_results(storage, sweep="latest").column("stage_keys").to_pylist()
    assert {e.key for e in cache_entries(storage)} == {k for keys in tonight for k in keys}

    listing = list_sweeps(storage)
    assert listing.num_rows == 2
    second_id = listing.column("sweep_id").to_pylist()[1]
    assert set(listing.column("sweep_name").to_pylist()) == {f"nightly-{date.today():%Y%m%d}"}
    # The second night loaded its teacher (and KD) from the first night's checkpoints.
    stages = load_stages(storage, sweep="all")
    teachers = stages.filter(pc.equal(stages.column("stage"), "teacher"))
    assert teachers.column("sweep_id").to_pylist() == [first_id]

    md = (report_dir / f"{second_id}.md").read_text()
    page = (report_dir / f"{second_id}.html").read_text()
    assert (storage / "reports" / f"{first_id}.md").is_file()  # default place
    # The report names both hypervolumes, recomputed here from the stored rows.
    report = build_report(
        load_results(storage, sweep="all"),
        second_id,
        objectives=OBJECTIVES,
        knob_names=["prune.ratio"],
    )
    assert report.previous_sweep_id == first_id
    before = report.hypervolume_previous
    assert before is not None and before > 0 and before > report.hypervolume * 1.1
    for value in (report.hypervolume, report.hypervolume_previous):
        shown = format_number(value)
        assert f"| {shown} |" in md and f"<td>{shown}</td>" in page
    assert "Warm start: " in md and "earlier knob point(s)" in md
    warm = int(md.split("Warm start: ")[1].split()[0])
    assert 1 <= warm <= 3
    # Every knob point run both nights got 100x "slower": each is a flagged latency regression.
    latency = [c for c in report.comparisons if c.kind == "latency"]
    assert all(c.crossed and c.change > 300 for c in latency)
