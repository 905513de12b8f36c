"""End to end through Ray: a tiny Hugging Face BERT task (issue 22 items 3 and 4), and a
tiny ConvNext image classifier (new user 6, F2: it died on `config.num_attention_heads`).

A student made from the teacher (student=None, distill.student_ratio 0.5), structurally
pruned again, then dynamic int8, in one trial (the stage tests cover the combinations): the
trial is ok, keeps under 15% of the teacher's parameters (heads, hidden and FFN halved twice),
and dynamic int8 reaches the encoder's Linears.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.space.config import load_space

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

SPACE = """
task: tests.stages.hf_tiny:make_bert_task
pipeline: [teacher, distill, prune, quantize]
params:
  teacher.epochs: 1
  distill.epochs: 1
  distill.student_ratio: 0.5
  prune.ratio: 0.5
  prune.method: structured
  quantize.mode: dynamic_int8
search: {algorithm: grid}
latency: {warmup: 1, repeats: 5}
"""


def _baseline_and_trial(tmp_path: Path, space: str) -> tuple[dict, dict]:
    """The baseline row and the one trial's row of a one-trial sweep of `space` through Ray."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(space)
    outcome = execute_sweep(prepare_sweep(load_space(space_file), storage=tmp_path / "results"))
    rows = outcome.table.to_pylist()
    (baseline,) = [r for r in rows if r["is_baseline"]]
    (trial,) = [r for r in rows if not r["is_baseline"]]
    assert trial["status"] == "ok", trial["error"]
    return baseline, trial


def test_bert_student_pruned_by_heads_then_int8(tmp_path: Path) -> None:
    baseline, trial = _baseline_and_trial(tmp_path, SPACE)
    assert trial["params_total"] < 0.15 * baseline["params_total"]
    assert trial["quantized_fraction"] > 0.4


CNN_SPACE = """
task: tests.stages.hf_tiny:make_convnext_task
pipeline: [teacher, distill, prune]
params:
  teacher.epochs: 1
  distill.epochs: 1
  distill.student_ratio: 0.5
  prune.ratio: 0.5
  prune.method: structured
search: {algorithm: grid}
latency: {warmup: 1, repeats: 5}
"""


def test_convnext_student_and_structured_prune_through_ray(tmp_path: Path) -> None:
    """The student made from the ConvNext teacher (channels halved, `hidden_sizes` with
    them), pruned structurally again: the trial is ok with under a fifth of the parameters."""
    baseline, trial = _baseline_and_trial(tmp_path, CNN_SPACE)
    assert trial["params_total"] < 0.2 * baseline["params_total"]
