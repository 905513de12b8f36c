"""Export in Hugging Face form (issue 22 item 6): a chosen row's model as a save_pretrained
directory (config + safetensors) with the task's tokenizer files beside it, loaded back with
from_pretrained and compared, next to model.pt / model.onnx; int8 rows say why they have none."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.query.export import export_trial
from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint
from stages.distill import DistillParams, distill
from stages.export import ExportParams, export
from stages.quantize import QuantizeParams, quantize
from stages.tasks import Task
from stages.teacher import TeacherParams, train_teacher
from tests import hf_zoo
from tests.orchestrator.test_export import _store

pytestmark = pytest.mark.slow


@functools.cache
def _task(kind: str) -> Task:
    return hf_zoo.ZOO[kind]()


@functools.cache
def _student(kind: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """(teacher, student made from the teacher with distill.student_ratio 0.5)."""
    task = _task(kind)
    teacher = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=2))
    student = distill(
        StageInput(task=task, parent=teacher.checkpoint), DistillParams(epochs=1)
    ).checkpoint
    return teacher.checkpoint, student


def _export(tmp_path: Path, kind: str, ckpt: ModelCheckpoint) -> tuple[Path, dict[str, Any]]:
    task = _task(kind)
    storage = tmp_path / "runs"
    teacher, _ = _student(kind)
    name = f"tests.hf_zoo:{kind}"
    _store(storage, task, teacher, "baseline", "none", task_name=name)
    _store(storage, task, ckpt, "t1", ckpt.quantize, task_name=name)
    out = tmp_path / "out"
    result = export_trial(storage, "t1", output=out)
    return out, result.card


def test_bert_student_exports_a_save_pretrained_dir_with_its_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, student = _student("bert")
    out, card = _export(tmp_path, "bert", student)
    hf = card["huggingface"]
    assert hf["recheck"]["ok"] and hf["recheck"]["max_abs_logit_diff"] <= 1e-4
    assert hf["class"] == "BertForSequenceClassification" and "from_pretrained" in hf["load"]
    directory = out / "huggingface"
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {
        p.name for p in directory.iterdir()
    }
    assert card["sha256"]["huggingface/model.safetensors"]
    config = json.loads((directory / "config.json").read_text())
    assert config["num_attention_heads"] == 2 and config["hidden_size"] == 16  # the student's
    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    batch = tokenizer(["w1 w2 w3", "w4"], padding="max_length", max_length=hf_zoo.SEQ_LEN,
                      return_tensors="pt")  # fmt: skip
    assert model(**batch).logits.shape == (2, hf_zoo.NUM_CLASSES)
    assert (out / "model.pt").is_file() and card["recheck"]["ok"]
    # model.pt takes the tokenizer's output by name, the card's names (new user F-TS-1)
    scripted = torch.jit.load(str(out / "model.pt"))
    arguments = [a.name for a in scripted.forward.schema.arguments[1:]]
    assert arguments == [i["name"] for i in card["input"]]
    assert set(arguments) == set(batch)
    with torch.no_grad():
        torch.testing.assert_close(scripted(**batch), model(**batch).logits, rtol=0, atol=1e-4)
    assert (out / "vocab.txt").read_bytes() == (directory / "vocab.txt").read_bytes()
    assert card["sha256"]["vocab.txt"]  # the tokenizer beside model.pt too (new user F5)


def test_gpt2_exports_conv1d_layout_and_onnx_with_named_inputs(tmp_path: Path) -> None:
    import onnxruntime as ort
    from transformers.pytorch_utils import Conv1D

    task = _task("gpt2")
    _, student = _student("gpt2")
    onnx = export(StageInput(task=task, parent=student), ExportParams("onnxruntime")).checkpoint
    out, card = _export(tmp_path, "gpt2", onnx)
    assert card["runtime"] == "onnxruntime" and card["huggingface"]["recheck"]["ok"]
    assert [c["name"] for c in card["input"]] == ["input_ids", "attention_mask"]
    assert all(c["shape"] == ["batch", "sequence"] for c in card["input"])
    loaded = type(hf_zoo.load("gpt2")).from_pretrained(str(out / "huggingface"))
    assert any(isinstance(m, Conv1D) for m in loaded.modules())  # GPT-2's own layout
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = hf_zoo.example_batch("gpt2", 3)
    (logits,) = session.run(None, {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        expected = loaded.eval()(**batch).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)


def test_int8_row_says_why_it_has_no_save_pretrained_dir(tmp_path: Path) -> None:
    _, student = _student("bert")
    task = _task("bert")
    int8 = quantize(StageInput(task=task, parent=student), QuantizeParams("dynamic_int8"))
    out, card = _export(tmp_path, "bert", int8.checkpoint)
    assert card["huggingface"] == {
        "class": "BertForSequenceClassification",
        "skipped": card["huggingface"]["skipped"],
    }  # no "dir" naming a folder that is not there (new user F6)
    assert "quantize.mode='dynamic_int8'" in card["huggingface"]["skipped"]
    assert not (out / "huggingface").exists()
    assert (out / "vocab.txt").is_file() and (out / "model.pt").is_file()


def test_onnx_int8_row_has_its_tokenizer_beside_model_onnx(tmp_path: Path) -> None:
    """New user F5/F6 (and F1 end to end): an onnx_static_int8 row of a BERT exports
    model.onnx with the tokenizer files beside it, as Optimum's layout has them; its card
    says why there is no huggingface/ without naming one; re-exporting over it with
    overwrite=True treats the copied files as the export's own."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    _, student = _student("bert")
    task = _task("bert")
    params = QuantizeParams("onnx_static_int8", calibration_batches=1)
    int8 = quantize(StageInput(task=task, parent=student), params).checkpoint
    out, card = _export(tmp_path, "bert", int8)
    hf = card["huggingface"]
    assert set(hf) == {"class", "skipped"} and "onnx_static_int8" in hf["skipped"]
    assert not (out / "huggingface").exists()
    names = {Path(f).name for f in task.export_files}
    assert names and names <= {p.name for p in out.iterdir()} and names <= set(card["sha256"])
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    batch = tokenizer(["w1 w2 w3", "w4"], padding="max_length", max_length=hf_zoo.SEQ_LEN,
                      return_tensors="np")  # fmt: skip
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})
    assert logits.shape == (2, hf_zoo.NUM_CLASSES)
    assert card["recheck"]["ok"]
    again = export_trial(tmp_path / "runs", "t1", output=out, overwrite=True)
    assert again.card["sha256"].keys() == card["sha256"].keys()


# A static_int8 row of a BERT exporting model.pt2 that a fresh Python loads by the card's line:
# tests/orchestrator/test_modelio.py::test_static_int8_hugging_face_row_exports_through_the_cli,
# on a row of a real sweep.
