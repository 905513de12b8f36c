"""Every stage x every choice over the Hugging Face zoo (issue 22 item 7; tests/hf_zoo.py).

The same case table as `tests/stages/test_zoo.py`, run over tiny BERT, DistilBERT, GPT-2 and ViT
models loaded with `from_pretrained` from local `save_pretrained` directories, with named
inputs (dict samples passed by keyword). Each case runs the stage as a Ray stage task does
(`run_stage`: the checkpoint is serialized, loaded `weights_only`, rebuilt and compared), then
checks the metrics are honest. The student is made from the teacher (`student=None`).

Every stage x choice runs on every model; the extra knob variants of the table (multi-step
pruning, epochs, CE instead of KD) run on BERT only. Combinations not supported yet are
refused up front (REFUSED, with the message asserted) or
marked xfail(strict=True) naming the branch that owns them (PENDING).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stages import get_stage
from stages.base import StageInput, StageOutput
from stages.batches import forward_logits
from stages.checkpoint import ModelCheckpoint
from stages.distill import DistillParams, distill
from stages.errors import SqueezerayError
from stages.hfexport import check_pretrained_dir, save_pretrained_dir
from stages.metrics import count_params, evaluate, quantized_fraction
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.tasks import Task
from stages.teacher import TeacherParams, train_teacher
from tests import hf_zoo
from tests.stages.test_zoo import CASES, Case

# (model, stage or case id) -> the owner of a combination that does not work yet
PENDING: dict[tuple[str, str], str] = {}

# share of the weights a weight-touching stage must reach: the tiny models' Linear (and
# Conv1D) layers hold ~85% of their parameters, embeddings the rest
MIN_QUANTIZED_FRACTION = 0.5

# (model, stage or case id) -> a message fragment of the refusal the test asserts
REFUSED: dict[tuple[str, str], str] = {}


@functools.cache
def _task(kind: str) -> Task:
    return hf_zoo.ZOO[kind]()


@functools.cache
def _teacher(kind: str) -> StageOutput:
    return train_teacher(StageInput(task=_task(kind), parent=None), TeacherParams(epochs=2))


@functools.cache
def _student(kind: str) -> StageOutput:
    if (kind, "distill") in PENDING:  # no student yet: the later stages get the teacher
        return _teacher(kind)
    teacher = _teacher(kind).checkpoint
    return distill(StageInput(task=_task(kind), parent=teacher), DistillParams(epochs=1))


def _parent(kind: str, stage: str) -> ModelCheckpoint | None:
    if stage == "teacher":
        return None
    if stage == "distill":
        return _teacher(kind).checkpoint
    return _student(kind).checkpoint


def _linear_like(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(in, out) features of every nn.Linear and transformers Conv1D (a transposed Linear)."""
    from transformers.pytorch_utils import Conv1D

    found = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            found.append((module.in_features, module.out_features))
        elif isinstance(module, Conv1D):
            found.append(tuple(module.weight.shape))  # (in, out)
    return found


def _lookup(table: dict[tuple[str, str], str], kind: str, case: Case) -> str | None:
    return table.get((kind, case.stage)) or table.get((kind, case.id))


def _marks(kind: str, case: Case) -> list[Any]:
    # BERT runs every case, the others (and ONNX exports, ~10 s each) only with the slow tests
    onnx = case.params.get("mode") == "onnx_int8" or case.params.get("runtime") == "onnxruntime"
    marks: list[Any] = [pytest.mark.slow] if case.slow or onnx or kind != "bert" else []
    reason = _lookup(PENDING, kind, case)
    if reason:
        marks.append(pytest.mark.xfail(strict=True, reason=reason))
    return marks


def test_zoo_model_loads_from_its_directory_and_takes_named_inputs() -> None:
    for kind in hf_zoo.KINDS:
        directory = hf_zoo.checkpoint_dir(kind)
        assert (directory / "config.json").is_file()
        assert (directory / "model.safetensors").is_file()
        task = _task(kind)
        batch = hf_zoo.example_batch(kind, 3)
        with torch.no_grad():
            a = task.teacher()(**batch).logits
            b = hf_zoo.load(kind)(**batch).logits
        assert a.shape == (3, task.num_classes)
        assert torch.equal(a, b)  # the directory is the teacher, loaded the same way twice
        x, y = task.train[0]
        assert isinstance(x, dict) and set(x) == set(batch) and 0 <= int(y) < task.num_classes


@pytest.mark.parametrize(
    ("kind", "case"),
    [
        pytest.param(kind, case, id=f"{kind}-{case.id}", marks=_marks(kind, case))
        for kind in hf_zoo.KINDS
        for case in CASES
        # every stage x choice on every model; the knob variants (CASES' slow rows: steps,
        # epochs, mode=ce) on BERT only, to keep the suite short
        if kind == "bert" or not case.slow
    ],
)
def test_every_stage_and_choice_on_the_hf_zoo(kind: str, case: Case, tmp_path: Path) -> None:
    task = _task(kind)
    spec = get_stage(case.stage)
    params = spec.make_params(case.params)
    parent = _parent(kind, case.stage)
    inp = StageInput(
        task=task,
        parent=parent,
        teacher=_teacher(kind).checkpoint if case.stage != "teacher" else None,
    )
    refused = _lookup(REFUSED, kind, case)
    if refused:
        with pytest.raises(SqueezerayError, match=refused):
            run_stage(spec, inp, params)
        return

    out, data = run_stage(spec, inp, params)  # checkpoint rebuilt from bytes == its model

    assert 0.0 <= out.metrics["val_accuracy"] <= 1.0
    loaded = ModelCheckpoint.from_bytes(data)
    before = count_params(parent) if parent is not None else None
    total, nonzero = count_params(loaded)

    if case.stage == "prune" and case.params["method"] == "structured":
        assert before is not None and total < before[0], "structured pruning shrinks params"
    elif case.stage == "prune":
        assert before is not None and total == before[0]
        assert nonzero < before[1], "unstructured pruning lowers params_nonzero"
    elif case.stage == "lowrank":
        assert before is not None and loaded.recipe["lowrank"] and total < before[0]
    elif case.stage == "lora":
        # an adapter on every Linear-like layer (attention, FFN, head): rank * (in + out) each
        assert parent is not None
        layers = _linear_like(build_model(task, parent))
        assert out.metrics["trainable_params"] == case.params["rank"] * sum(
            i + o for i, o in layers
        )
        assert out.metrics["merge_max_abs_diff"] <= 1e-5
    elif case.stage == "quantize":
        fraction = quantized_fraction(loaded)
        assert out.metrics["quantized_fraction"] == pytest.approx(fraction)
        if case.params["mode"] in ("none", "float16", "bfloat16"):
            assert fraction == 0.0
        else:
            assert fraction >= MIN_QUANTIZED_FRACTION
    elif case.stage == "export":
        measured = evaluate(task, loaded, warmup=1, repeats=3)
        assert measured.runtime == loaded.runtime == case.params["runtime"]
        assert measured.latency_ms is not None and measured.latency_ms > 0
    if loaded.onnx is not None:
        _check_onnx_with_named_inputs(task, loaded)
    _check_save_pretrained_round_trip(task, loaded, tmp_path)


def _check_onnx_with_named_inputs(task: Task, ckpt: ModelCheckpoint) -> None:
    """ONNX Runtime fed by name (the dict's keys), at the test batch's sequence length and a
    shorter one for text models (a dynamic `sequence` axis), gives the eager model's argmax."""
    import onnxruntime as ort

    session = ort.InferenceSession(ckpt.onnx, providers=["CPUExecutionProvider"])
    x = task.example_input(8)
    assert isinstance(x, dict)
    assert [i.name for i in session.get_inputs()] == list(x)
    model = build_model(task, ckpt)
    batches = [x] + ([{k: v[:, :10] for k, v in x.items()}] if "input_ids" in x else [])
    for batch in batches:
        (logits,) = session.run(None, {k: v.numpy() for k, v in batch.items()})
        with torch.no_grad():
            expected = forward_logits(model, batch)
        if ckpt.quantize == "none":
            torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-3, atol=1e-4)
        else:  # int8 in ONNX Runtime: the same shape, finite
            assert logits.shape == tuple(expected.shape) and np.isfinite(logits).all()


def _check_save_pretrained_round_trip(task: Task, ckpt: ModelCheckpoint, tmp_path: Path) -> None:
    """A float result saves with save_pretrained and loads with from_pretrained to the same
    logits (an int8 or low-rank one says why it cannot)."""
    model = build_model(task, ckpt)
    done = save_pretrained_dir(task, model, ckpt, tmp_path / "hf")
    if done is None:  # PT2E int8 (static_int8, qat) turns the model into a GraphModule
        assert ckpt.quantize in ("static_int8", "qat"), ckpt.quantize
        return
    if done.skipped is not None:
        assert ckpt.quantize not in ("none", "float16", "bfloat16") or ckpt.recipe.get("lowrank")
        return
    check = check_pretrained_dir(task, model, tmp_path / "hf")
    assert check["ok"], check
