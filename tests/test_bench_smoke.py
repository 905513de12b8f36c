"""Smoke runs of every benchmark at tiny sizes (in this process, on the session's Ray).

The numbers mean nothing at this size; the tests check that each benchmark still runs end to
end, writes its JSON, and that the comparisons it makes are sound (the naive sweep evaluates
the same configurations and gets the same models).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _read(results_dir: Path, name: str) -> dict:  # type: ignore[type-arg]
    data = json.loads((results_dir / f"{name}_smoke.json").read_text())
    assert data["machine"]["cores"] >= 1
    assert data["machine"]["versions"]["torch"]
    return dict(data)


def test_sweep_vs_naive_parallel_and_concurrency_smoke(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three benchmarks built on `bench.sweep_vs_naive:child_squeezeray`, in one test: the
    comparison with the naive sweep runs its sweep for real; the parallel and concurrency
    benchmarks then run their whole code path (machine control included, in this process) on
    that sweep's summary, replayed, instead of three more tiny sweeps whose numbers mean
    nothing. Each asks for the sweeps it would run (CPUs, trials at once): checked below."""
    from bench import parallel, sweep_vs_naive

    real = sweep_vs_naive.child_squeezeray
    summary: dict = {}  # type: ignore[type-arg]
    asked: list[dict] = []  # type: ignore[type-arg]

    def first_real_then_replayed(payload: dict) -> dict:  # type: ignore[type-arg]
        asked.append(payload)
        if not summary:
            summary.update(real(payload))
        return json.loads(json.dumps(summary))

    monkeypatch.setattr(sweep_vs_naive, "child_squeezeray", first_real_then_replayed)

    sweep_vs_naive.run(smoke=True, results_dir=tmp_path)
    assert len(asked) == 1  # the real sweep
    data = _read(tmp_path, "sweep_vs_naive")["workloads"]["tiny"]
    naive = data["runs"]["naive"][0]
    assert naive["errors"] == 0
    _check_comparison(data, data["runs"]["squeezeray"][0])

    asked.clear()
    parallel.run(smoke=True, results_dir=tmp_path)
    assert [(p["space"], p["trials"], p["num_cpus"]) for p in asked] == [
        ("tiny", 1, 1),
        ("tiny", 1, 2),
    ]
    data = _read(tmp_path, "parallel")
    assert set(data["runs"]) == {"1", "2"}
    t1 = data["runs"]["1"][0]["sweep_s"]
    t2 = data["runs"]["2"][0]["sweep_s"]
    assert data["efficiency"]["median"] == pytest.approx(t1 / (2 * t2))
    control = data["machine_control"]
    assert control["alone_s"]["median"] > 0 and control["pair_s"]["median"] > 0
    assert data["efficiency_vs_machine"] == pytest.approx(
        data["efficiency"]["median"] / control["efficiency"]["median"]
    )

    asked.clear()
    parallel.run_concurrency(smoke=True, results_dir=tmp_path)
    assert [(p["trials"], p["num_cpus"], p["max_concurrent"]) for p in asked] == [(2, 2, 2)]
    data = _read(tmp_path, "concurrency")["workloads"]["tiny"]
    assert data["runs"]["2"][0]["stages_executed"] >= 1
    assert data["sweep_s"]["2"]["median"] > 0


def _check_comparison(w: dict, sq: dict) -> None:  # type: ignore[type-arg]
    # Same configurations, same seed: the naive pipeline reproduces every model exactly.
    assert w["same_accuracy_as_naive"] == f"{w['trials']}/{w['trials']}"
    # tiny: 5 stages per trial; squeezeray shares the teacher and the KD stage.
    assert w["stage_executions_naive"] == 5 * w["trials"]
    assert w["stage_requests_squeezeray"] == w["stage_executions_naive"]
    assert sq["stages_executed"] < w["stage_executions_naive"]
    assert 0 < w["bound_s"]["median"] < w["squeezeray_sweep_s"]["median"]


def test_latency_noise_smoke(tmp_path: Path) -> None:
    from bench import latency_noise

    latency_noise.run(smoke=True, results_dir=tmp_path)
    summary = _read(tmp_path, "latency_noise")["summary"]
    assert set(summary) == {
        "alone/eager",
        "alone/onnxruntime",
        "alone/eager-pinned",
        "alone/onnxruntime-pinned",
    }
    for case in summary.values():
        assert case["median_ms"]["median"] > 0
        assert case["cv"] >= 0
    assert summary["alone/eager"]["median_shift"] == 0.0


def test_search_quality_smoke(ray_session: None, tmp_path: Path) -> None:
    from bench import search_quality

    search_quality.run(smoke=True, results_dir=tmp_path)
    data = _read(tmp_path, "search_quality")
    assert set(data["hypervolume"]) == {"optuna@1", "optuna_gp@1", "random@1"}
    assert all(r["trials_ok"] == 1 for r in data["runs"])
    assert data["searchers"]["optuna_gp"]["sampler"] == "gp"
    # one storage: the second run loads the teacher and KD stages the first computed
    assert data["runs"][1]["stages_loaded"] >= 2
    assert all(v["min"] >= 0 for v in data["hypervolume"].values())


def test_compression_smoke(ray_session: None, tmp_path: Path) -> None:
    from bench import compression

    compression.run(smoke=True, results_dir=tmp_path)
    w = _read(tmp_path, "compression")["workloads"]["tiny"]
    assert w["trials_ok"] == 2
    assert 0 <= w["kd_vs_ce"]["teacher_accuracy"] <= 1
    assert set(w["kd_vs_ce"]["raw"]) == {"kd_T4_a0.3", "kd_T4_a0.7", "ce"}
    assert w["remeasured"]["teacher"]["speedup_vs_eager_teacher"] == pytest.approx(1.0)
    assert "teacher-onnxruntime" in w["remeasured"]
    # every trial within 1 point is re-measured, and the fastest picks come from those
    assert sum(k.startswith("trial-") for k in w["remeasured"]) == w["within_1pt"]
    trials = {k: v for k, v in w["remeasured"].items() if k.startswith("trial-")}
    if trials:
        best = max(v["speedup_vs_eager_teacher"] for v in trials.values())
        assert w["fastest_remeasured"]["speedup_vs_eager_teacher"] == best


def test_main_rejects_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["--only", "nope"])
    assert "accepted: sweep_vs_naive" in capsys.readouterr().err


def test_main_runs_pareto_smoke(tmp_path: Path) -> None:
    from bench.__main__ import main

    assert main(["--smoke", "--only", "pareto", "--results-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "pareto_smoke.json").read_text())["cases"]


def test_quality_checks_smoke() -> None:
    """bench/quality_checks.py's code path at 1 seed and 1 epoch (its verdict means nothing)."""
    from bench import quality_checks

    result = quality_checks.kd_beats_ce(seeds=(0,), epochs=1, teacher_epochs=1)
    assert len(result["kd"]) == len(result["ce"]) == 1
    assert all(0 <= a <= 1 for a in result["kd"] + result["ce"])
    assert isinstance(result["failed"], list)
