"""End to end through Ray on the Hugging Face zoo's BERT (issue 22 items 1, 2, 6, 7).

A task built by `stages.hf.sequence_classification_task` from a local save_pretrained
directory (named inputs; the student made from the teacher), a grid over prune.method x
quantize.mode: every trial is ok, the onnx_int8 rows run in ONNX Runtime with the named
inputs, and the chosen float row exports as a save_pretrained directory that
`from_pretrained` loads to the trial's logits, with the tokenizer beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.query.export import export_trial
from orchestrator.space.config import load_space

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

SPACE = """
task: tests.hf_zoo:bert
pipeline: [teacher, distill, prune, quantize]
params:
  teacher.epochs: 3
  distill.epochs: 1
  distill.student_ratio: 0.5
  prune.ratio: 0.5
  prune.method: {choice: [l1_unstructured, structured]}
  quantize.mode: {choice: [none, onnx_int8]}
search: {algorithm: grid}
latency: {warmup: 1, repeats: 5}
"""


def test_bert_grid_through_ray_then_export_in_hugging_face_form(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertForSequenceClassification

    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    storage = tmp_path / "results"
    outcome = execute_sweep(prepare_sweep(load_space(space_file), storage=storage))
    rows = outcome.table.to_pylist()
    (baseline,) = [r for r in rows if r["is_baseline"]]
    trials = {(r["prune.method"], r["quantize.mode"]): r for r in rows if not r["is_baseline"]}
    assert len(trials) == 4
    for knobs, row in trials.items():
        assert row["status"] == "ok", (knobs, row["error"])
    for method in ("l1_unstructured", "structured"):
        assert trials[(method, "onnx_int8")]["runtime"] == "onnxruntime"
    assert trials[("structured", "none")]["params_total"] < 0.2 * baseline["params_total"]

    chosen = trials[("structured", "none")]
    out = tmp_path / "export"
    card = export_trial(storage, chosen["trial_id"], output=out).card
    assert [c["name"] for c in card["input"]] == ["input_ids", "attention_mask", "token_type_ids"]
    hf = card["huggingface"]
    assert hf["recheck"]["ok"], hf
    config = json.loads((out / "huggingface" / "config.json").read_text())
    assert config["num_attention_heads"] < 4  # the pruned student's heads, not the teacher's
    model = BertForSequenceClassification.from_pretrained(str(out / "huggingface"))
    tokenizer = AutoTokenizer.from_pretrained(str(out / "huggingface"))
    batch = tokenizer(["w3 w4 w5"], return_tensors="pt")
    assert model.eval()(**batch).logits.shape == (1, 2)

    int8 = export_trial(
        storage, trials[("structured", "onnx_int8")]["trial_id"], output=tmp_path / "q"
    )
    assert int8.card["runtime"] == "onnxruntime" and "skipped" in int8.card["huggingface"]
