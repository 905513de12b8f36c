"""The sweep progress bar names and tracks the metric the search selects on."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

from rich.console import Console

from orchestrator.engine.progress import SweepProgress
from orchestrator.space.config import load_space

SPACE = """
task: {task}
pipeline: [teacher, distill, prune]
objectives: {objectives}
params:
  prune.ratio: {{uniform: [0.1, 0.9]}}
search: {{algorithm: random, trials: 3}}
"""


def _bar(tmp_path: Path, objectives: str, metric: str | None, rows: list[dict]) -> str:
    task = "usermod_f1:make_task" if metric else "digits"
    (tmp_path / "space.yaml").write_text(SPACE.format(task=task, objectives=objectives))
    space = load_space(tmp_path / "space.yaml", check_task=False).with_task_metric(metric)
    out = io.StringIO()
    progress = SweepProgress(Console(file=out, width=200), space)
    counts = {"ok": 0, "failed": 0}
    for row in rows:
        counts["ok"] += 1
        progress.update("done", {"status": "ok", **row, "counts": dict(counts), "total": 3})
    return str(progress.progress.tasks[0].description)


def test_progress_shows_the_task_metric_it_selects_on(tmp_path: Path) -> None:
    rows = [
        # a finished row keeps a task metric in its custom_metrics JSON
        {"val_accuracy": 0.9, "custom_metrics": json.dumps({"val_f1_macro": 0.41})},
        {"val_accuracy": 0.5, "custom_metrics": json.dumps({"val_f1_macro": 0.62})},
        {"val_accuracy": 0.7, "val_f1_macro": 0.55},  # a replayed trial's result
    ]
    text = _bar(tmp_path, "{val_f1_macro: max, size_bytes: min}", "f1_macro", rows)
    assert "best val f1_macro 0.6200" in text and "accuracy" not in text
    # a metric to minimise keeps the smallest value
    text = _bar(tmp_path, "{val_f1_macro: min}", "f1_macro", rows)
    assert "best val f1_macro 0.4100" in text


def test_progress_defaults_to_validation_accuracy(tmp_path: Path) -> None:
    rows = [{"val_accuracy": 0.8}, {"val_accuracy": 0.6}]
    assert "best val accuracy 0.8000" in _bar(tmp_path, "{val_accuracy: max}", None, rows)
    # no quality objective (size only): still the validation accuracy
    assert "best val accuracy 0.8000" in _bar(tmp_path, "{size_bytes: min}", None, rows)


GRID = """
task: digits
pipeline: [teacher, distill, prune]
params:
  prune.ratio: {choice: [0.2, 0.5]}
  distill.temperature: {choice: [2.0, 4.0]}
search: {algorithm: grid}
"""


def test_a_grid_shows_its_own_trial_total_from_the_start(tmp_path: Path) -> None:
    """The bar's total before any trial event (while Ray starts) is the grid's 4 points, as
    the start line says - not `search.trials`' default of 16."""
    from orchestrator.cli import trials_phrase

    (tmp_path / "space.yaml").write_text(GRID)
    space = load_space(tmp_path / "space.yaml", check_task=False)
    assert space.search.trials != 4  # the default the bar used to show
    out = io.StringIO()
    progress = SweepProgress(Console(file=out, width=200), space)
    assert progress.progress.tasks[0].total == 4
    assert trials_phrase(space).startswith("4 trials (grid)")
    assert space.trial_count() == 4


class _Clock:
    """A clock the test moves (the display's ticks take `now`; its steps read this)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _grid_space(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "space.yaml").write_text(GRID)
    return load_space(tmp_path / "space.yaml", check_task=False)


def test_plain_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Without a terminal rich draws no bar: a step still running after `step_after_s` gets a
    line (a fast one none), each finished trial a line with its status, validation metrics
    and knobs, and a heartbeat after `heartbeat_s` without a line names what runs; the cache is
    asked what runs only when a heartbeat is due."""
    out, clock, polls = io.StringIO(), _Clock(), []
    progress = SweepProgress(Console(file=out, width=300), heartbeat_s=30, clock=clock)
    assert not progress.console.is_terminal and progress.plain

    def running() -> dict:
        polls.append(clock.now)
        return {"stages": ["distill", "prune"], "queued": 1}

    progress.update("step", {"step": "pre-flight: loading task digits"})
    clock.now += 0.5
    progress.update("step", {"step": "pre-flight: checking every sample of the splits"})
    progress.tick(clock.now + 1.0)
    assert out.getvalue() == ""  # neither step has run 2 s yet
    clock.now += 2.5
    progress.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "pre-flight: checking every sample of the splits ..."
    )
    clock.now += 30
    progress.tick()
    assert "still pre-flight: checking every sample of the splits (32 s)" in out.getvalue()

    progress.plan(_grid_space(tmp_path))
    progress.update("step", {"step": "starting Ray"})  # over at once: never said, no mute
    progress.update("ready", {"running_stages": running})
    counts = {"ok": 0, "failed": 0}
    for _ in range(3):
        progress.update("start", {"counts": dict(counts), "total": 4})
    counts["ok"] += 1
    params = json.dumps({"prune.ratio": 0.35, "distill.epochs": 3})
    row = {"trial_id": "ab_00001", "status": "ok", "val_accuracy": 0.91, "size_bytes": 45.2e6,
           "latency_ms_sweep": 11.3, "params": params}  # fmt: skip
    row |= {"counts": dict(counts), "total": 4}
    progress.update("done", row)
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith(
            "trial ab_00001 ok (1/4 done): val accuracy 0.9100, size 45.2 MB, latency 11.3 ms; "
            "prune.ratio=0.35"  # the searched knobs only
        )
    )
    counts["failed"] += 1
    error = "stage prune: RuntimeError: boom\nmore"
    progress.update("done", {"trial_id": "ab_00002", "status": "error", "counts": dict(counts),
                             "error": error, "total": 4})  # fmt: skip
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith("trial ab_00002 error (2/4 done): stage prune: RuntimeError: boom")
    )
    for _ in range(29):  # no heartbeat before 30 s without a line, and no poll of the cache
        clock.now += 1
        progress.tick()
    assert polls == [] and "running 1" not in out.getvalue()
    clock.now += 1
    progress.tick()
    assert len(polls) == 1
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith(
            "trials 2/4 done (ok 1, failed 1), running 1: distill, prune (+1 queued); "
            "best val accuracy 0.9100; 1m03s elapsed"  # since the display started
        )
    )


def test_terminal_bar_names_the_running_stages_and_polls_every_two_seconds(
    tmp_path: Path,
) -> None:
    """On a terminal the bar's description shows the running trials' stages, asked of the
    cache at most every POLL_S however often the display ticks; a step under way replaces it."""
    from orchestrator.engine.progress import POLL_S

    clock, polls = _Clock(), []
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    progress = SweepProgress(console, _grid_space(tmp_path), clock=clock)
    assert not progress.plain
    progress.update("step", {"step": "starting Ray"})
    assert progress.progress.tasks[0].description == "starting Ray..."
    assert progress.progress.tasks[0].total == 4

    def running() -> dict:
        polls.append(clock.now)
        return {"stages": ["distill", "prune", "teacher"], "queued": 0}

    progress.update("ready", {"running_stages": running})
    for _ in range(3):
        progress.update("start", {"counts": {"ok": 0, "failed": 0}, "total": 4})
    for _ in range(10):
        progress.tick()
        clock.now += 0.5
    assert len(polls) == 3 and all(b - a >= POLL_S for a, b in itertools.pairwise(polls))
    assert "running 3: distill, prune, teacher" in progress.progress.tasks[0].description


def test_quiet_console_prints_no_progress_and_starts_no_thread(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, quiet=True)
    with SweepProgress(console, _grid_space(tmp_path), heartbeat_s=0.01, step_after_s=0) as p:
        p.update("step", {"step": "starting Ray"})
        p.update("done", {"trial_id": "t", "status": "ok", "counts": {"ok": 1}, "total": 4})
        assert p.ticker is None
    assert out.getvalue() == ""


def test_a_bad_heartbeat_setting_names_the_variable(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from stages.errors import SqueezerayError

    monkeypatch.setenv("SQUEEZERAY_HEARTBEAT_S", "often")
    with pytest.raises(SqueezerayError, match="SQUEEZERAY_HEARTBEAT_S='often'"):
        SweepProgress(Console(file=io.StringIO()))
    monkeypatch.setenv("SQUEEZERAY_HEARTBEAT_S", "5")
    assert SweepProgress(Console(file=io.StringIO())).heartbeat_s == 5.0


def test_every_pre_flight_step_reaches_the_progress_callback(tmp_path: Path) -> None:
    """`prepare_sweep` and `prepare_nightly` tell `progress` as each check on the task starts
    (what a plain log shows for a big model instead of a minute of silence)."""
    from orchestrator.engine.sweep import prepare_sweep
    from orchestrator.nightly.run import prepare_nightly

    for prepare in (prepare_sweep, prepare_nightly):
        events: list[tuple[str, dict]] = []
        prepare("tiny", storage=tmp_path / "runs", progress=lambda e, d, s=events: s.append((e, d)))
        assert {e for e, _ in events} == {"step"}
        steps = [d["step"] for _, d in events]
        assert steps[0] == "pre-flight: loading task blobs", steps
        assert steps[1:] == [
            "pre-flight: checking every sample of the train/val/test splits",
            "pre-flight: checking that each stage applies to the task's model",
            "pre-flight: fingerprinting the task (models, weights, data digest)",
        ]


def test_running_stages_are_counted_by_name() -> None:
    from orchestrator.engine.progress_lines import running_text

    stages = ["prune", "distill", "distill", "teacher"]
    assert running_text(4, stages, 2) == "running 4: distill ×2, prune, teacher (+2 queued)"
    assert running_text(0, ["teacher"], 0) == "running: teacher"  # the baseline's, before trials
    assert running_text(0, [], 0) == "running 0"


def test_a_stage_shared_by_trials_says_so(tmp_path: Path) -> None:
    """newuser7 F-G 4: "running 3: teacher" while 3 trials waited on one shared teacher task
    read as the teacher training three times. The cache actor says how many trials wait on
    each running task, and the line says the stage is shared."""
    import asyncio

    from orchestrator.engine import cache as cache_module
    from orchestrator.engine.progress_lines import running_text

    cache = cache_module._StageCache(str(tmp_path), "s", stage_options={}, measure_options={})
    cache.waiting = {"kt": {"t1", "t2", "t3"}, "kd1": {"t1"}, "kd2": {"t2", "t3"}, "q": {"t4"}}
    cache.stage_names = {"kt": "teacher", "kd1": "distill", "kd2": "distill", "q": "prune"}
    cache.started_at = {"kt": 1.0, "kd1": 2.0, "kd2": 3.0}  # q is queued
    answer = asyncio.run(cache.running())
    assert answer == {
        "stages": ["distill", "distill", "teacher"],
        "trials": [1, 2, 3],
        "progress": ["", "", ""],
        "queued": 1,
    }
    text = running_text(3, answer["stages"], answer["queued"], sharing=answer["trials"])
    assert text == (
        "running 3: distill ×2 (shared by 3 trials), teacher (shared by 3 trials) (+1 queued)"
    ), text
    # one task per trial: nothing to add
    assert running_text(2, ["prune", "teacher"], 0, sharing=[1, 1]) == "running 2: prune, teacher"


def test_a_running_stage_says_where_it_is(tmp_path: Path) -> None:
    """newuser8 F-PROG-1: a 30M teacher trained 10 minutes with only "running 3: teacher"
    heartbeats. A stage's task tells the cache actor where it is; the line says it beside the
    stage, and the actor forgets it once the stage has ended."""
    import asyncio

    from orchestrator.engine import cache as cache_module
    from orchestrator.engine.progress_lines import running_text

    cache = cache_module._StageCache(str(tmp_path), "s", stage_options={}, measure_options={})
    cache.waiting = {"kt": {"t1", "t2"}, "kd1": {"t1"}, "kd2": {"t2"}}
    cache.stage_names = {"kt": "teacher", "kd1": "distill", "kd2": "distill"}
    cache.started_at = {"kt": 1.0, "kd1": 2.0, "kd2": 3.0}

    async def said() -> dict:
        await cache.progress("kt", "epoch 2/3, batch 40/400")
        await cache.progress("kd2", "epoch 1/1, batch 0/63")
        await cache.progress("gone", "epoch 1/1, batch 1/2")  # not running: ignored
        return await cache.running()

    answer = asyncio.run(said())
    assert answer["progress"] == ["", "epoch 1/1, batch 0/63", "epoch 2/3, batch 40/400"]
    assert "gone" not in cache.progress_text
    text = running_text(
        2, answer["stages"], 0, sharing=answer["trials"], progress=answer["progress"]
    )
    assert text == (
        "running 2: distill ×2 (epoch 1/1, batch 0/63), "
        "teacher (shared by 2 trials; epoch 2/3, batch 40/400)"
    ), text
    asyncio.run(cache.release("t2"))  # kd2's only trial gave up: its progress goes with it
    assert "kd2" not in cache.progress_text


def test_the_summary_line_does_not_count_scheduler_stops_as_failures() -> None:
    """Trials ASHA stopped early have their own status (`stopped`): the summary said
    "2 ok, 6 failed (6 stopped early)" (new user F21)."""
    from types import SimpleNamespace

    from orchestrator.engine.progress import _summary_line

    summary = SimpleNamespace(
        sweep_id="s", trials_ok=2, trials_failed=1, trials_error=1, trials_timeout=0,
        trials_stopped=6, trials_lost=0, wall_s=12.0, stages_executed=9, stages_loaded=0,
        stage_requests=20,
    )  # fmt: skip
    line = _summary_line(summary)
    assert line.startswith("sweep s: 2 ok, 6 stopped early by the scheduler, 1 failed (1 error)")


def test_a_trial_line_marks_an_imprecise_in_sweep_latency_as_the_front_table_does() -> None:
    """A latency timed on a machine too busy to rank it (its 95% CI above 10% of the median)
    carries the front table's `~` in the trial's progress line too (new user: a 130 ms figure,
    10 ms measured alone, was printed plain)."""
    from orchestrator.engine.progress_lines import trial_line

    row = {"trial_id": "t1", "status": "ok", "val_accuracy": 0.9, "size_bytes": 1e6,
           "latency_ms_sweep": 130.4}  # fmt: skip
    busy = trial_line(row | {"latency_ci_sweep": 0.94}, "val_accuracy", [], done=1, total=2)
    steady = trial_line(row | {"latency_ci_sweep": 0.02}, "val_accuracy", [], done=1, total=2)
    assert "latency ~130 ms" in busy
    assert "latency 130 ms" in steady
