"""A user's model through a whole sweep on Ray: the default pipeline over a zoo model, a grid
over prune.method x quantize.mode, every trial ok with honest metrics (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.space.parse import parse_space

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

METHODS = ["l1_unstructured", "global", "structured"]
MODES = ["none", "dynamic_int8", "static_int8", "onnx_int8"]


def zoo_space(model: str, *, epochs: int = 2) -> dict[str, object]:
    """The default pipeline on `tests.zoo:<model>`, grid over prune.method x quantize.mode."""
    return {
        "name": f"zoo-{model}",
        "task": f"tests.zoo:{model}",
        "pipeline": ["teacher", "distill", "prune", "finetune", "lora", "quantize", "export"],
        "objectives": {"val_accuracy": "max", "size_bytes": "min", "latency_ms_sweep": "min"},
        "params": {
            "prune.method": {"choice": METHODS},
            "quantize.mode": {"choice": MODES},
            "prune.ratio": 0.5,
            "lora.rank": 2,
            "teacher.epochs": epochs,
            "distill.epochs": epochs,
            "finetune.epochs": 1,
            "lora.epochs": 1,
            "export.runtime": "eager",
        },
        "search": {"algorithm": "grid", "seed": 0},
        "latency": {"warmup": 2, "repeats": 5},
    }


def test_default_pipeline_grid_on_a_residual_user_model(tmp_path: Path) -> None:
    space = parse_space(zoo_space("resnet", epochs=1), source="zoo.yaml")
    outcome = execute_sweep(prepare_sweep(space, storage=tmp_path / "results"))
    rows = outcome.table.to_pylist()
    trials = [r for r in rows if not r["is_baseline"]]
    (baseline,) = [r for r in rows if r["is_baseline"]]
    assert len(trials) == len(METHODS) * len(MODES)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["error"]]
    by = {(r["prune.method"], r["quantize.mode"]): r for r in trials}
    assert set(by) == {(m, q) for m in METHODS for q in MODES}
    # Honest metrics: structured pruning shrinks params_total; unstructured keeps it and
    # lowers params_nonzero below it (ratio 0.5 of every prunable weight).
    dense = by[("l1_unstructured", "none")]
    assert by[("structured", "none")]["params_total"] < dense["params_total"]
    for method in ("l1_unstructured", "global"):
        row = by[(method, "none")]
        assert row["params_nonzero"] < 0.75 * row["params_total"]
    # int8 makes the deployed artifact smaller than the same float model
    for method in METHODS:
        assert by[(method, "static_int8")]["size_bytes"] < by[(method, "none")]["size_bytes"]
        assert by[(method, "onnx_int8")]["runtime"] == "onnxruntime"
    assert baseline["params_total"] > dense["params_total"]  # the student is smaller
