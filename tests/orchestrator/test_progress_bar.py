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
