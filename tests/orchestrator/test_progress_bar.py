"""The sweep progress bar names and tracks the metric the search selects on."""

from __future__ import annotations

import io
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
