"""End to end through Ray: a user's nn.TransformerEncoder classifier through LoRA and int8.

Issue 12 items 3 and 4: lowrank (the feed-forward Linears), lora (adapters on attention and
feed-forward weights), then dynamic_int8 or onnx_int8, gives ok rows whose
`quantized_fraction` says int8 happened and whose size is below the float model's (the
quantize=none row of the same sweep).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.space.config import load_space

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

SPACE = """
task: tests.stages.transformer_task:make_task
pipeline: [teacher, lowrank, lora, quantize]
params:
  teacher.epochs: 6
  lowrank.rank_ratio: 0.5
  lora.rank: 2
  lora.mode: ce
  lora.epochs: 1
  quantize.mode: {choice: [none, dynamic_int8, onnx_int8]}
search: {algorithm: grid}
latency: {warmup: 2, repeats: 10}
"""


def test_transformer_lora_then_int8_rows(tmp_path: Path) -> None:
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    outcome = execute_sweep(prepare_sweep(load_space(space_file), storage=tmp_path / "results"))
    rows = outcome.table.to_pylist()
    trials = {r["quantize.mode"]: r for r in rows if not r["is_baseline"]}
    assert set(trials) == {"none", "dynamic_int8", "onnx_int8"}
    for mode, row in trials.items():
        assert row["status"] == "ok", (mode, row["error"])
        assert row["lora.rank"] == 2
        assert row["val_accuracy"] > 0.8, mode
    (baseline,) = [r for r in rows if r["is_baseline"]]
    assert baseline["quantized_fraction"] == 0.0
    float_row = trials["none"]
    assert float_row["quantized_fraction"] == 0.0
    for mode in ("dynamic_int8", "onnx_int8"):
        row = trials[mode]
        assert 0.5 < row["quantized_fraction"] < 1.0, mode  # the Embedding stays float
        assert row["size_bytes"] < float_row["size_bytes"], mode
        assert row["params_total"] == float_row["params_total"] or mode == "onnx_int8"
    assert trials["onnx_int8"]["runtime"] == "onnxruntime"
