"""Grid sweeps run each distinct effective configuration once and say how big the grid was."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from orchestrator.cli import trials_phrase
from orchestrator.space.coherence import grid_points
from orchestrator.space.config import load_space

SPACE = """
name: grid-dupes
task: blobs
pipeline: [teacher, distill, quantize, export]
objectives: {val_accuracy: max, size_bytes: min}
params:
  teacher.epochs: 2
  distill.epochs: 1
  quantize.mode: {choice: [none, dynamic_int8, onnx_int8]}
  export.runtime: {choice: [eager, onnxruntime]}
search: {algorithm: grid, trials: 10}
latency: {warmup: 2, repeats: 5}
"""


def _space(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(SPACE))
    return load_space(path)


def test_grid_points_drop_points_with_the_same_effective_configuration(tmp_path: Path) -> None:
    points, total = grid_points(_space(tmp_path))
    assert total == 6
    # none x {eager, onnxruntime} differ; dynamic_int8 x onnxruntime deploys eager (= the
    # eager point); onnx_int8 always deploys to onnxruntime (both runtimes are one config).
    assert points == [
        {"quantize.mode": "none", "export.runtime": "eager"},
        {"quantize.mode": "none", "export.runtime": "onnxruntime"},
        {"quantize.mode": "dynamic_int8", "export.runtime": "eager"},
        {"quantize.mode": "onnx_int8", "export.runtime": "eager"},
    ]
    assert trials_phrase(_space(tmp_path)).startswith("4 trials (grid of 6: 2 points")


@pytest.mark.usefixtures("ray_session")
def test_grid_sweep_runs_each_effective_configuration_once(tmp_path: Path) -> None:
    from orchestrator.engine.sweep import execute_sweep, prepare_sweep

    outcome = execute_sweep(prepare_sweep(_space(tmp_path), storage=tmp_path / "results"))
    trials = [r for r in outcome.table.to_pylist() if not r["is_baseline"]]
    assert len(trials) == 4, [r["params"] for r in trials]
    assert all(r["status"] == "ok" for r in trials), [r["error"] for r in trials]
    effective = {
        (json.loads(r["params"])["quantize.mode"], json.loads(r["params"])["export.runtime"])
        for r in trials
    }
    assert effective == {
        ("none", "eager"),
        ("none", "onnxruntime"),
        ("dynamic_int8", "eager"),
        ("onnx_int8", "onnxruntime"),
    }


def test_validate_summary_gives_the_grid_trials_not_search_trials(tmp_path: Path) -> None:
    summary = _space(tmp_path).summary()
    assert "grid, 4 trials (grid of 6: 2 points repeat another's effective" in summary, summary
