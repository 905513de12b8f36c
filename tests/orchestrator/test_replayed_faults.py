"""Faults replayed from public bug reports (issue 15) and whole error messages (issue 12 item 7).

Each test names the fault it covers. The ones that need Ray use the session fixture and are
marked `slow`; the rest run without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.sweep import prepare_sweep
from orchestrator.store.results import append_results, load_results
from stages.errors import SqueezerayError
from tests.rows import result_row

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
        append_results(tmp_path / "api", [result_row(sweep_id, "t1")])


def test_every_accepted_sweep_id_reads_back_unchanged_through_pandas_and_duckdb(
    tmp_path: Path,
) -> None:
    import duckdb
    import pandas as pd

    accepted = []
    for sweep_id in CANDIDATE_IDS:
        storage = tmp_path / f"s{len(accepted)}-{abs(hash(sweep_id))}"
        try:
            append_results(storage, [result_row(sweep_id, "t1", test_accuracy=0.5)])
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
        assert load_results(storage, sweep="all").column("sweep_id").to_pylist() == [sweep_id]
    # The refusal is narrow: ids with a word in them stay usable.
    assert {"run-007", "007a", "nightly-20250101", "20250101-120000-1234", "v1"} <= set(accepted)
    assert not {"007", "20250101", "2025-01-01", "0x1f", "epoch", "inf"} & set(accepted)


# --- fault 3: warm-start points and constraints on columns that are not objectives -----------


def test_warm_start_constraint_values_come_from_the_stored_rows() -> None:
    import dataclasses
    import json

    from orchestrator.engine.search import make_search
    from orchestrator.nightly.run import warm_start_from
    from orchestrator.space.config import load_space
    from orchestrator.space.model import Constraint
    from orchestrator.store.results import rows_to_table
    from orchestrator.store.schema import RESULTS_SCHEMA

    space = load_space("tiny").with_overrides(algorithm="optuna")
    space = dataclasses.replace(space, constraints=(Constraint("params_nonzero", "<=", 100.0),))
    # Rows of the space's task (rows of another task are not warm starts), equal scores.
    same: dict[str, Any] = {"task": "blobs", "test_accuracy": 0.97, "val_accuracy": 0.96}
    same.update(size_bytes=4000, latency_ms_sweep=0.05)

    def knobs(ratio: float, mode: str) -> str:
        return json.dumps({"prune.ratio": ratio, "quantize.mode": mode})

    rows = [
        result_row("night-1", "t1", params=knobs(0.3, "none"), params_nonzero=1007, **same),
        result_row("night-1", "t2", params=knobs(0.6, "none"), params_nonzero=1690, **same),
        # No params_nonzero stored: not known to meet the constraint, so not a warm-start point.
        result_row("night-1", "t3", params=knobs(0.3, "dynamic_int8"), **same),
    ]
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


# --- fault 8: Optuna proposes a measured point again (optuna/optuna#2021; new user F8) -----

# Three effective points in four raw ones: an ONNX mode always deploys on onnxruntime, so
# (onnx_int8, eager) and (onnx_int8, onnxruntime) run the same model.
_REPEATS_SPACE = """
task: blobs
pipeline: [teacher, quantize, export]
params:
  teacher.epochs: 1
  quantize.mode: {choice: [none, onnx_int8]}
  export.runtime: {choice: [eager, onnxruntime]}
search: {algorithm: optuna, trials: 4, seed: 0}
"""


def _effective(space: Any, params: dict[str, Any]) -> str:
    from orchestrator.space.coherence import effective_knobs

    knobs = effective_knobs({**space.fixed(), **params}, space.pipeline)
    return json.dumps(knobs, sort_keys=True)


def test_optuna_spends_no_trial_on_a_point_already_measured(tmp_path: Path) -> None:
    """Optuna's samplers propose a measured point again (a small categorical space; a knob
    the coherence rules override): a 6-trial budget was spent twice on one point (F8). Now a
    proposal with a finished trial's effective configuration is told that trial's values and
    Optuna proposes again, as Optuna's FAQ does in the objective: the trials that run are
    distinct until every point is measured; then one runs after REPEATS_PER_TRIAL answers."""
    from orchestrator.engine.search import make_search
    from orchestrator.engine.searchers import REPEATS_PER_TRIAL
    from orchestrator.space.config import load_space

    (tmp_path / "space.yaml").write_text(_REPEATS_SPACE)
    space = load_space(tmp_path / "space.yaml")
    for seed in range(4):
        space = dataclasses.replace(space, search=dataclasses.replace(space.search, seed=seed))
        alg, _, _ = make_search(space, constraints=())
        searcher = alg.searcher
        ran = []
        for i in range(3):
            config = searcher.suggest(f"t{i}")
            ran.append(_effective(space, config))
            result = {"val_accuracy": 0.9 + i / 100, "size_bytes": 1000.0 - i, "final": True}
            searcher.on_trial_complete(f"t{i}", result={**result, "latency_ms_sweep": 0.1})
        assert len(set(ran)) == 3, (seed, ran)  # three trials, the three effective points
        # every Optuna trial beyond the three that ran is an answered proposal, with the
        # values of the first trial of its point (as Optuna's FAQ returns them)
        study = searcher._ot_study
        assert searcher.repeated == len(study.trials) - 3
        first: dict[str, Any] = {}
        for trial in study.trials:
            assert trial.values == first.setdefault(_effective(space, trial.params), trial.values)
        # every point measured: the fourth trial runs after REPEATS_PER_TRIAL answers
        before = searcher.repeated
        assert _effective(space, searcher.suggest("t3")) in ran
        assert searcher.repeated == before + REPEATS_PER_TRIAL

    # A warm-start point (a stored row) is not answered: a night re-measures it on purpose, its
    # report compares the two. With onnx_int8 fixed, every proposal is that one point.
    (tmp_path / "one.yaml").write_text(
        _REPEATS_SPACE.replace("{choice: [none, onnx_int8]}", "onnx_int8")
    )
    one = load_space(tmp_path / "one.yaml")
    warm = {"points_to_evaluate": [{"export.runtime": "eager"}]}
    alg, _, _ = make_search(one, constraints=(), evaluated_rewards=[[0.9, 1e3, 0.1]], **warm)
    searcher = alg.searcher
    searcher.suggest("t0")
    assert searcher.repeated == 0
    result = {"val_accuracy": 0.9, "size_bytes": 1e3, "latency_ms_sweep": 0.1, "final": True}
    searcher.on_trial_complete("t0", result=result)
    searcher.suggest("t1")  # the sweep's own trial t0 measured it: answered
    assert searcher.repeated == REPEATS_PER_TRIAL


# --- sweeps through a real Ray (the session fixture) -----------------------------------------

_SLOW_SPACE = """
task: @TASK@
pipeline: @PIPELINE@
params:
  teacher.epochs: 1
  distill.epochs: 1
@PARAMS@
search: {algorithm: grid@SEARCH@}
latency: {warmup: 1, repeats: 3}
"""


def _space(tmp_path: Path, *, task: str = "blobs", pipeline: str, params: str, search: str = ""):
    path = tmp_path / f"space-{abs(hash((task, pipeline, params, search)))}.yaml"
    path.write_text(
        _SLOW_SPACE.replace("@TASK@", task)
        .replace("@PIPELINE@", pipeline)
        .replace("@PARAMS@", params)
        .replace("@SEARCH@", search)
    )
    return path


def _trial_rows(table: Any) -> list[dict[str, Any]]:
    return [r for r in table.to_pylist() if not r["is_baseline"]]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_an_optuna_sweep_runs_distinct_points_and_says_what_it_answered(tmp_path: Path) -> None:
    """The same through `squeezeray sweep`: with seed 3 Optuna's second proposal is the
    first trial's point (it ran twice before); now the two trials are the two points, and
    the summary says how many proposals were answered from a finished trial."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    space = tmp_path / "space.yaml"
    space.write_text(
        "task: blobs\npipeline: [teacher, quantize]\nparams:\n  teacher.epochs: 1\n"
        "  quantize.mode: {choice: [none, dynamic_int8]}\n"
        "search: {algorithm: optuna, trials: 2, seed: 3, max_concurrent: 1}\n"
        "latency: {warmup: 1, repeats: 3, rounds: 0}\n"
    )
    storage = tmp_path / "runs"
    result = CliRunner().invoke(app, ["sweep", str(space), "--storage", str(storage)])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    rows = _trial_rows(load_results(storage))
    assert sorted(r["quantize.mode"] for r in rows) == ["dynamic_int8", "none"], output
    match = re.search(r"Optuna proposed (\d+) point\(s\) already measured", output)
    assert match and int(match.group(1)) >= 1, output
    assert "no trial budget spent" in output


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_trial_timeout_counts_running_stages_not_the_queue(tmp_path: Path) -> None:
    """Fault 1: one stage slot (2 CPUs a trial on 2 CPUs), four trials at once, one of them
    with a fine-tune that runs far past the limit. The short trials wait in the queue behind
    it for longer than the limit, and still finish ok: only the long one is a timeout."""
    from orchestrator.engine.sweep import execute_sweep

    # The limit must exceed what a short trial *runs*, and the long fine-tune (100,000 epochs)
    # holds the slot until the limit stops it, so the test lasts at least the limit. A first
    # sweep computes the shared teacher and KD stages and times one short trial on this
    # machine as it is loaded now (its wall time includes those stages, so it bounds what a
    # short trial of the timed sweep runs: that sweep loads them from the cache). The limit
    # is twice that, at least 8 s: about 8 s idle, 30-40 s on a machine at load 10.
    first = _space(tmp_path, pipeline="[teacher, distill, finetune]", params="  finetune.epochs: 4")
    calibration = execute_sweep(
        prepare_sweep(str(first), storage=tmp_path / "runs", cpus_per_trial=2)
    )
    (probe,) = _trial_rows(calibration.table)
    assert probe["status"] == "ok", probe["error"]
    limit = max(8, math.ceil(2 * probe["wall_s"]))
    space = _space(
        tmp_path,
        pipeline="[teacher, distill, finetune]",
        params="  finetune.epochs: {choice: [100000, 1, 2, 3]}",
    )
    prepared = prepare_sweep(
        str(space),
        storage=tmp_path / "runs",
        cpus_per_trial=2,
        max_concurrent=4,
        trial_timeout=f"{limit}s",
    )
    outcome = execute_sweep(prepared)
    assert outcome.summary.stages_loaded >= 2  # the teacher and KD stages ran before
    rows = {json_params(r)["finetune.epochs"]: r for r in _trial_rows(outcome.table)}
    assert rows[100000]["status"] == "timeout", rows[100000]
    assert f"time limit of {limit} s of running stages" in rows[100000]["error"]
    for epochs in (1, 2, 3):
        assert rows[epochs]["status"] == "ok", rows[epochs]["error"]
    # At least one short trial waited behind the long one for longer than the limit.
    assert max(rows[e]["wall_s"] for e in (1, 2, 3)) > limit, (limit, rows)
    assert outcome.summary.trials_timeout == 1 and outcome.summary.trials_ok == 3


def json_params(row: dict[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads(row["params"] or "{}"))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_early_stopped_rows_keep_their_knobs_stages_and_score(tmp_path: Path) -> None:
    """Fault 2 (and 6: the summary says why the sweep ended): ASHA stops most trials of an
    8-trial grid; every row, stopped or not, carries its knobs, the stages it completed and
    its last validation accuracy, and the summary counts them."""
    from orchestrator.engine.sweep import execute_sweep

    space = _space(
        tmp_path,
        pipeline="[teacher, distill, prune, finetune, quantize]",
        params=(
            "  finetune.epochs: 1\n"
            "  prune.ratio: {choice: [0.0, 0.5, 0.8, 0.95]}\n"
            "  quantize.mode: {choice: [none, dynamic_int8]}"
        ),
        search=", scheduler: asha",
    )
    outcome = execute_sweep(prepare_sweep(str(space), storage=tmp_path / "runs"))
    trials = _trial_rows(outcome.table)
    assert len(trials) == 8
    stopped = [r for r in trials if r["status"] == "stopped"]
    assert stopped, "ASHA stopped no trial: the case is not exercised"
    for row in trials:
        params = json_params(row)
        assert params["prune.ratio"] == row["prune.ratio"] is not None, row
        assert params["quantize.mode"] == row["quantize.mode"] is not None, row
        assert row["stage_keys"], row
        assert row["last_val_accuracy"] is not None and 0 <= row["last_val_accuracy"] <= 1
    for row in stopped:
        assert 1 <= len(row["stage_keys"]) < 5  # the stages done before it was stopped
        assert row["test_accuracy"] is None
    # One fate per shared stage result (F21): no trial ran past a stage key at which another
    # trial sharing it was stopped.
    stops = {(len(r["stage_keys"]), r["stage_keys"][-1]) for r in stopped}
    for row in trials:
        keys = row["stage_keys"]
        ran_past = [(n, keys[n - 1]) for n in range(1, len(keys))]
        assert not stops.intersection(ran_past), (row["trial_id"], stops)
    s = outcome.summary
    assert s.trials_stopped == len(stopped) and s.trials_ok + s.trials_stopped == 8
    assert s.trials_failed == 0  # a scheduler stop is not a failure
    assert s.stage_requests == sum(len(r["stage_keys"]) for r in trials)
    assert s.ended == "all trials done (8 of 8)" and s.exit_code == 0


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_time_budget_end_is_said_with_launched_count(tmp_path: Path) -> None:
    """Fault 6: a budget that stops launching says so, with how many trials were launched; the
    launched trials' rows and the baseline are kept, and the sweep ends soon after the budget.
    (The one time-budget sweep of the suite: test_sweep_options ran the same one again.)"""
    from orchestrator.engine.sweep import execute_sweep

    outcome = execute_sweep(
        prepare_sweep("tiny", storage=tmp_path / "r", trials=200, time_budget="6s")
    )
    n = len(_trial_rows(outcome.table))
    assert 1 <= n < 200
    assert sum(r["is_baseline"] for r in outcome.table.to_pylist()) == 1
    assert outcome.summary.wall_s < 60
    assert outcome.summary.ended == f"time budget of 6 s reached ({n} of 200 trials launched)"
    assert outcome.summary.exit_code == 0


def test_end_reasons() -> None:
    """Fault 6: every way a sweep ends, in words, with its exit code."""
    from orchestrator.engine.records import EXIT_NO_TRIAL_OK
    from orchestrator.engine.summary import end_reason

    common = {"total": 4, "budget_s": None, "out_of_time": False, "wall_s": 10.0}
    assert end_reason(interrupted=False, statuses=["ok"] * 4, **common) == (
        "all trials done (4 of 4)",
        0,
    )
    assert end_reason(interrupted=True, statuses=["ok"], **common) == (
        "interrupted (Ctrl-C or SIGTERM) after 1 of 4 trials",
        2,
    )
    assert end_reason(interrupted=False, statuses=["error", "timeout"], **common) == (
        "every trial failed (2 of 2)",
        EXIT_NO_TRIAL_OK,
    )
    budget = {**common, "budget_s": 20.0, "out_of_time": True}
    assert end_reason(interrupted=False, statuses=["ok", "error"], **budget) == (
        "time budget of 20 s reached (2 of 4 trials launched)",
        0,
    )


# A user's task whose student fails while training with a long, several-line message (the way
# a state-dict mismatch names each layer on its own line).
FAILING_TASK = """
import dataclasses

import torch
from torch import nn

from stages.tasks import make_blobs


class Broken(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            line = "\\n\\tsize mismatch for layer{}.weight: copying a param"
            layers = "".join(line.format(i) for i in range(40))
            raise RuntimeError("Error(s) in loading state_dict for Broken:" + layers)
        return self.inner(x)


def make():
    base = make_blobs()
    return dataclasses.replace(base, name="broken", student=lambda: Broken(base.student()))
"""


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_failed_trials_keep_whole_messages_and_tracebacks_and_the_cli_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 item 7 and fault 6: error rows carry the whole message (bounded), each failed
    trial's traceback is in <storage>/logs/<sweep>/<trial>.txt, named in its row; a sweep in
    which no trial succeeded ends with exit code 4 and prints the most common error."""
    import uuid

    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.engine.pipeline import MAX_ERROR_CHARS

    module = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(FAILING_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    space = _space(
        tmp_path,
        task=f"{module}:make",
        pipeline="[teacher, distill]",
        params="  distill.temperature: {choice: [2.0, 4.0]}",
    )
    storage = tmp_path / "runs"
    # Relative, as the README writes it: Tune runs trials in their own working directories,
    # and the logs must still land under this storage (they once went to Ray's temp dir).
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(space), "--storage", "runs"])
    assert result.exit_code == 4, result.output
    assert "ended: every trial failed (2 of 2)" in result.output, result.output
    assert "most common error: stage distill: RuntimeError: Error(s) in loading state_dict" in (
        result.output
    )
    table = load_results(storage, sweep="all")
    trials = _trial_rows(table)
    assert len(trials) == 2
    for row in trials:
        assert row["status"] == "error"
        error = row["error"]
        # The lines naming the layers are there, up to the bound, which is said.
        assert "size mismatch for layer0.weight" in error and "layer5.weight" in error, error
        assert len(error) <= MAX_ERROR_CHARS
        log = Path(row["error_log"])
        assert log == storage / "logs" / row["sweep_id"] / f"{row['trial_id']}.txt"
        text = log.read_text()
        assert "Traceback" in text and f"{module}.py" in text  # where it was raised
        assert "size mismatch for layer39.weight" in text  # all of it
    # The baseline (the teacher) is fine: the sweep measured it.
    (baseline,) = [r for r in table.to_pylist() if r["is_baseline"]]
    assert baseline["status"] == "ok"


class _RunsCode:
    """A pickle that would create a file when unpickled (what a poisoned checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def _poisoned(marker: Path) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"format": 1, "state_dict": {}, "payload": _RunsCode(str(marker))}, buf)
    return buf.getvalue()


UNSAFE_ADVICE = ("weights_only", "add_safe_globals", "safe_globals", "allowlist", "trust")


def test_refused_checkpoint_error_names_file_global_and_fix_and_no_unsafe_advice(
    tmp_path: Path,
) -> None:
    """Fault 5, without Ray: the message a stage raises for a poisoned or truncated input."""
    from orchestrator.engine.stage_tasks import _cache_file, _load_input

    marker = tmp_path / "pwned"
    where = _cache_file(str(tmp_path), "abc123")
    with pytest.raises(SqueezerayError) as info:
        _load_input(_poisoned(marker), where)
    message = str(info.value)
    assert not marker.exists()
    assert message.startswith(f"{tmp_path}/cache/abc123.ckpt is not a loadable")
    assert "the global `getattr`" in message and "Delete it" in message
    assert f"{tmp_path}/cache/abc123.json" in message and "recomputed" in message
    assert not [word for word in UNSAFE_ADVICE if word in message], message
    with pytest.raises(SqueezerayError) as info:
        _load_input(_poisoned(marker)[:100], where)  # truncated
    assert "abc123.ckpt is not a loadable" in str(info.value)
    assert not [word for word in UNSAFE_ADVICE if word in str(info.value)], str(info.value)
    # A checkpoint on an object store is named by its URI, query string kept.
    uri = "s3://bucket/runs?endpoint_override=localhost:9000&scheme=http"
    assert _cache_file(uri, "k") == (
        "s3://bucket/runs/cache/k.ckpt?endpoint_override=localhost:9000&scheme=http"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_baseline_failure_and_recomputed_checkpoints_are_said_at_the_end(tmp_path: Path) -> None:
    """Fault 5 end to end: a truncated checkpoint is recomputed and the summary says so; a
    poisoned teacher checkpoint that only the baseline still needs is refused, and the CLI says
    the baseline failed, naming the file and the blocked global, without unsafe advice."""
    import hashlib
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.engine.stage_tasks import CACHE_DIR, checkpoint_path
    from orchestrator.store.results import load_stages

    space = _space(
        tmp_path, pipeline="[teacher, distill]", params="  distill.temperature: {choice: [4.0]}"
    )
    storage = tmp_path / "runs"
    first = CliRunner().invoke(app, ["sweep", str(space), "--storage", str(storage)])
    assert first.exit_code == 0, first.output
    keys = {r["stage"]: r["stage_key"] for r in load_stages(storage, sweep="all").to_pylist()}

    distill = storage / CACHE_DIR / checkpoint_path(keys["distill"])[0]
    distill.write_bytes(distill.read_bytes()[:200])
    second = CliRunner().invoke(app, ["sweep", str(space), "--storage", str(storage)])
    assert second.exit_code == 0, second.output
    assert "1 damaged stage checkpoint(s) failed their checksum and were recomputed" in (
        second.output
    )

    teacher_name, manifest_name = checkpoint_path(keys["teacher"])
    marker = tmp_path / "pwned"
    poisoned = _poisoned(marker)
    (storage / CACHE_DIR / teacher_name).write_bytes(poisoned)
    manifest = json.loads((storage / CACHE_DIR / manifest_name).read_text())
    manifest["sha256"] = hashlib.sha256(poisoned).hexdigest()
    (storage / CACHE_DIR / manifest_name).write_text(json.dumps(manifest))
    third = CliRunner().invoke(app, ["sweep", str(space), "--storage", str(storage)])
    assert not marker.exists()
    assert third.exit_code == 0, third.output  # every trial's stages came from the cache
    output = " ".join(third.output.split())  # rich wraps long lines
    assert "1 ok, 0 failed" in output
    assert "baseline failed: baseline (the teacher, measured as given): SqueezerayError:" in output
    assert f"{storage}/cache/{teacher_name} is not a loadable squeezeray checkpoint" in output
    assert "the global `getattr`" in output and "it will be recomputed" in output
    assert not [word for word in UNSAFE_ADVICE if word in output], output


# --- fault 4: object-store URIs with a query string, against a local S3-compatible server ----


def test_join_uri_keeps_the_query_string() -> None:
    from orchestrator.store.storage import join_uri, open_storage

    uri = "s3://bucket/runs?scheme=http&endpoint_override=127.0.0.1:9000"
    assert join_uri(uri, "tune", "s-1") == (
        "s3://bucket/runs/tune/s-1?scheme=http&endpoint_override=127.0.0.1:9000"
    )
    assert join_uri("gs://b/x/", "logs") == "gs://b/x/logs"
    assert join_uri("/data/runs", "cache", "k.ckpt") == "/data/runs/cache/k.ckpt"
    store = open_storage(uri)
    assert store.path("tune") == "bucket/runs/tune"  # the path on the filesystem: no query


@pytest.mark.slow
def test_sweep_on_an_s3_compatible_store_addressed_by_a_uri_with_a_query_string(
    tmp_path: Path, s3_server: str
) -> None:
    """Fault 4: `--storage "s3://bucket/runs?scheme=http&endpoint_override=HOST:PORT"` (MinIO
    style). The sweep runs as a user runs it (the CLI, its own embedded Ray), and every place a
    path is built lands under the path part: results, stage rows, checkpoints, manifests, the
    Tune experiment, failed trials' logs, the nightly report, and the lock."""
    import json
    import os
    import subprocess
    import sys

    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.query.report import Thresholds, build_report, write_report
    from orchestrator.store.lock import storage_lock
    from orchestrator.store.results import load_stages
    from orchestrator.store.storage import open_storage

    uri = f"s3://squeeze/runs?scheme=http&endpoint_override={s3_server}&region=us-east-1"
    space = _space(
        tmp_path,
        task="blobs",
        pipeline="[teacher, distill]",
        params="  distill.temperature: {choice: [4.0]}",
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "squeezeray"), "sweep", str(space), "--storage", uri,
         "--num-cpus", "2", "--sweep-id", "s3-sweep"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ended: all trials done (1 of 1)" in proc.stdout

    store = open_storage(uri)
    assert store.root == "squeeze/runs"
    table = load_results(uri, sweep="s3-sweep")
    assert [r["status"] for r in table.to_pylist()] == ["ok"] * 2  # baseline + the trial
    stages = load_stages(uri, sweep="s3-sweep").to_pylist()
    assert sorted(r["stage"] for r in stages) == ["distill", "teacher"]
    for row in stages:
        assert store.exists("cache", f"{row['stage_key']}.ckpt")
    manifest = json.loads(store.read_bytes("sweeps", "s3-sweep.json"))
    assert manifest["status"] == "finished"
    assert uri in manifest["resume_command"]
    from pyarrow.fs import FileSelector

    tune_files = store.fs.get_file_info(FileSelector(store.path("tune", "s3-sweep")))
    assert tune_files, "no Tune experiment under the storage's path"
    # Nothing landed beside the path part (the old bug put `/tune` after the query string).
    top = {i.base_name for i in store.fs.get_file_info(FileSelector("squeeze"))}
    assert top == {"runs"}, top

    # Reading it back through the CLI, the nightly report and the storage lock.
    listing = CliRunner().invoke(app, ["sweeps", "--storage", uri])
    assert listing.exit_code == 0 and "s3-sweep" in listing.output, listing.output
    report = build_report(
        table, "s3-sweep", objectives={"val_accuracy": "max"}, thresholds=Thresholds(), storage=uri
    )
    md, html = write_report(report, store=store)
    assert (
        md
        == f"s3://squeeze/runs/reports/s3-sweep.md?scheme=http&endpoint_override={s3_server}&region=us-east-1"
    )
    assert store.exists("reports", "s3-sweep.html") and html.endswith("&region=us-east-1")
    with storage_lock(store, wait=False) as holder:
        assert holder is not None
    # A failed trial's log is written under the path part too.
    from orchestrator.engine.pipeline import write_error_log

    where = write_error_log(uri, "s3-sweep", "t9", "Traceback: boom")
    assert (
        where
        == f"s3://squeeze/runs/logs/s3-sweep/t9.txt?scheme=http&endpoint_override={s3_server}&region=us-east-1"
    )
    assert store.read_bytes("logs", "s3-sweep", "t9.txt").decode().endswith("boom\n")


def test_a_crashed_coordinator_gets_a_row_with_its_knobs_error_and_log(tmp_path: Path) -> None:
    """Fault 2 and issue 12 item 7 for a trial whose coordinator itself failed: Tune keeps the
    traceback in the trial's error file; the row carries its last line, the log the rest, and
    the knobs come from the trial's config (it reported none). Its coordinator died in Ray
    (ActorDiedError), not in the model: the row is `lost`, which --resume runs again."""
    from types import SimpleNamespace

    from orchestrator.engine.pipeline import SweepPlan
    from orchestrator.engine.plan import stage_defaults
    from orchestrator.engine.tune_callbacks import ResultsWriter

    pipeline = ("teacher", "distill")
    plan = SweepPlan(
        sweep_id="crash-1", task="blobs", pipeline=pipeline, defaults=stage_defaults(pipeline),
        fixed={}, code_version="v", storage=str(tmp_path), objectives=(("val_accuracy", "max"),),
    )  # fmt: skip
    error_file = tmp_path / "error.txt"
    error_file.write_text(
        'Failure # 1\nTraceback (most recent call last):\n  File "x.py", line 3, in f\n'
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
    )
    writer = ResultsWriter(
        storage=str(tmp_path), sweep_id="crash-1", sweep_name="crash", task="blobs",
        code_version="v", constraints=(), total=1, progress=None, plan=plan,
    )  # fmt: skip
    trial = SimpleNamespace(
        trial_id="t_00000", config={"distill.temperature": 8.0}, last_result={},
        error_file=str(error_file),
    )  # fmt: skip
    writer.on_trial_error(0, [], trial)
    (row,) = load_results(tmp_path, sweep="all").to_pylist()
    assert row["status"] == "lost"
    assert row["error"] == (
        "trial coordinator: lost to an infrastructure failure (ray.exceptions.ActorDiedError: The "
        "actor died unexpectedly before finishing this task.); its model did not fail. "
        "`squeezeray sweep --resume` runs it again"
    )
    assert json_params(row)["distill.temperature"] == 8.0 and row["stage_keys"] == []
    log = Path(row["error_log"])
    assert log == tmp_path / "logs" / "crash-1" / "t_00000.txt"
    assert "Traceback (most recent call last)" in log.read_text()
    assert writer.by_status == {"lost": 1}


def test_object_store_lock_is_one_per_storage_however_its_query_is_spelled() -> None:
    """Fault 4, locks: the host-local lock of an object store is keyed by the location, so the
    same storage with its query parameters in another order (or a trailing `/`) is one lock,
    and another endpoint is another."""
    import pyarrow.fs as pafs

    from orchestrator.store.lock import lock_files
    from orchestrator.store.storage import Storage

    fs = pafs.S3FileSystem(region="us-east-1", endpoint_override="127.0.0.1:9", scheme="http")

    def files(uri: str) -> Any:
        return lock_files(Storage(fs=fs, root="bucket/runs", uri=uri))

    one = files("s3://bucket/runs?scheme=http&endpoint_override=127.0.0.1:9")
    assert one == files("s3://bucket/runs/?endpoint_override=127.0.0.1:9&scheme=http")
    assert one != files("s3://bucket/runs?scheme=http&endpoint_override=10.0.0.2:9")
    assert one.host_local


def test_a_sweep_that_fails_after_starting_leaves_a_failed_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 4's other half: the object-store failure left the manifest saying `running`.
    Whatever fails once the sweep has started, the manifest says `failed` and why."""
    import orchestrator.engine.sweep as sweep_mod
    from orchestrator.engine.manifest import read_manifest, write_manifest

    prepared = prepare_sweep("tiny", storage=tmp_path / "runs", sweep_id="run-1")

    def failing(sweep: Any, **options: Any) -> Any:
        write_manifest(sweep.storage, sweep, status="running")
        raise OSError("When creating bucket 'x': Bucket x not found")

    monkeypatch.setattr(sweep_mod, "_execute_sweep", failing)
    with pytest.raises(OSError, match="Bucket x not found"):
        sweep_mod.execute_sweep(prepared)
    manifest = read_manifest(prepared.storage, "run-1")
    assert manifest["status"] == "failed"
    assert manifest["error"] == "OSError: When creating bucket 'x': Bucket x not found"
