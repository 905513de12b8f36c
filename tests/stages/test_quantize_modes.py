"""The quantize modes on the maintained stack (issue 23): torchao `quantize_` configs, PT2E on
models FX could not trace (Hugging Face), ONNX Runtime static QDQ, half-float casts, int4
refused without its kernel package, and the `compiled` runtime."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.metrics import accuracy, count_weights, quantized_fraction, size_bytes
from stages.quantize import SPEC, QuantizeParams
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.runtime import make_predictor
from stages.tasks import Task

from .conftest import train_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def teacher(digits: Task) -> ModelCheckpoint:
    return train_checkpoint(digits, "teacher", epochs=20)


def _run(task: Task, parent: ModelCheckpoint, **params: object) -> ModelCheckpoint:
    """The stage as a Ray task runs it: its checkpoint's bytes rebuild its model (run_stage)."""
    out, data = run_stage(SPEC, StageInput(task=task, parent=parent), SPEC.make_params(params))
    loaded = ModelCheckpoint.from_bytes(data)  # torch.load(weights_only=True)
    assert out.metrics["quantized_fraction"] == pytest.approx(quantized_fraction(loaded))
    x = task.example_input(16)
    assert torch.equal(make_predictor(task, loaded)(x), make_predictor(task, out.checkpoint)(x))
    return loaded


@pytest.mark.parametrize("mode", ["torchao_dynamic_int8", "int8_weight_only"])
def test_torchao_modes_store_plain_int8_tensors(
    mode: str, digits: Task, teacher: ModelCheckpoint
) -> None:
    ckpt = _run(digits, teacher, mode=mode)
    # torchao's Int8Tensor is stored as its plain inner tensors: weights_only needs no torchao
    assert all(type(v) is torch.Tensor for v in ckpt.state_dict.values())
    assert ckpt.state_dict["net.0.weight:qdata"].dtype == torch.int8
    assert size_bytes(teacher) >= 3 * size_bytes(ckpt)
    assert count_weights(ckpt).int8 == count_weights(teacher).total - sum(
        teacher.state_dict[f"net.{i}.bias"].numel() for i in (0, 2, 4)
    )
    assert abs(accuracy(digits, ckpt) - accuracy(digits, teacher)) <= 0.01
    model = build_model(digits, ckpt)
    assert hasattr(model.get_submodule("net.0").weight, "qdata")  # a torchao tensor again


@pytest.mark.skipif(importlib.util.find_spec("mslk") is not None, reason="mslk is installed")
def test_int4_is_refused_up_front_naming_the_kernel_package() -> None:
    with pytest.raises(
        SqueezerayError, match=r"int4_weight_only.*'mslk' package.*int8_weight_only"
    ):
        QuantizeParams(mode="int4_weight_only")


@pytest.mark.parametrize("mode", ["float16", "bfloat16"])
def test_half_casts_halve_the_weights(mode: str, digits: Task, teacher: ModelCheckpoint) -> None:
    ckpt = _run(digits, teacher, mode=mode)
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[mode]
    assert all(v.dtype == dtype for v in ckpt.state_dict.values())
    assert quantized_fraction(ckpt) == 0.0  # not int8
    raw = sum(v.numel() * v.element_size() for v in teacher.state_dict.values())
    assert sum(v.numel() * v.element_size() for v in ckpt.state_dict.values()) * 2 == raw
    assert abs(accuracy(digits, ckpt) - accuracy(digits, teacher)) <= 0.01


def test_onnx_static_int8_is_qdq_calibrated_on_train(
    digits: Task, teacher: ModelCheckpoint
) -> None:
    import onnx

    ckpt = _run(digits, teacher, mode="onnx_static_int8", calibration_batches=2)
    assert (ckpt.quantize, ckpt.runtime) == ("onnx_static_int8", "onnxruntime")
    assert ckpt.onnx is not None
    ops = {n.op_type for n in onnx.load_from_string(ckpt.onnx).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert quantized_fraction(ckpt) > 0.9
    assert abs(accuracy(digits, ckpt) - accuracy(digits, teacher)) <= 0.02
    dynamic = _run(digits, teacher, mode="onnx_int8")
    assert "DynamicQuantizeLinear" in {
        n.op_type for n in onnx.load_from_string(dynamic.onnx or b"").graph.node
    }


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static_int8", "qat"])
def test_pt2e_quantizes_a_hugging_face_bert(mode: str) -> None:
    """FX could not trace BertForSequenceClassification (`co_varnames is too small`);
    torch.export can: every Linear of the encoder and the head is int8."""
    from tests.stages.hf_tiny import hf_task

    task = hf_task("bert")
    parent = train_checkpoint(task, "teacher", epochs=1)
    ckpt = _run(task, parent, mode=mode, calibration_batches=1, qat_epochs=1)
    int8 = [k for k, v in ckpt.state_dict.items() if "_frozen_param" in k]
    assert len(int8) >= 2 * 6 + 2  # 2 layers x (q, k, v, out, ffn in, ffn out) + pooler, head
    assert quantized_fraction(ckpt) > 0.5  # the embeddings stay float
    assert abs(accuracy(task, ckpt) - accuracy(task, parent)) <= 0.15


@pytest.mark.slow
def test_compiled_runtime_reports_its_compile_time(digits: Task, teacher: ModelCheckpoint) -> None:
    from stages.export import ExportParams, export
    from stages.metrics import evaluate

    out = export(StageInput(task=digits, parent=teacher), ExportParams(runtime="compiled"))
    assert out.checkpoint.runtime == "compiled"
    measured = evaluate(digits, out.checkpoint, warmup=2, repeats=5)
    assert measured.runtime == "compiled"
    assert measured.compile_s is not None and measured.compile_s > 0
    assert measured.accuracy == pytest.approx(accuracy(digits, teacher), abs=0.005)


@pytest.mark.slow
def test_pt2e_named_inputs_run_at_any_sequence_length() -> None:
    """A static_int8 Hugging Face model (named inputs) calibrated at one length runs at
    another, as its float and ONNX forms do: the sequence axis is exported dynamic."""
    from tests import hf_zoo

    task = hf_zoo.ZOO["bert"]()
    parent = train_checkpoint(task, "teacher", epochs=1)
    ckpt = _run(task, parent, mode="static_int8", calibration_batches=1)
    model = build_model(task, ckpt)
    x = task.example_input(3)
    short = {k: v[:, : hf_zoo.SEQ_LEN // 2] for k, v in x.items()}
    with torch.no_grad():
        logits = model(**short).logits
    assert logits.shape == (3, hf_zoo.NUM_CLASSES) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_qat_hugging_face_model_turns_attention_dropout_off_in_eval() -> None:
    """QAT exports a Hugging Face model in train mode, which bakes its attention dropout
    (p=0.1) into scaled_dot_product_attention as a number; eval must turn it off (torchao's
    move_exported_model_to_eval did not): the int8 model gave other logits at each call, and
    an exported qat row failed its re-check at random."""
    from tests import hf_zoo

    task = hf_zoo.ZOO["bert"]()
    parent = train_checkpoint(task, "teacher", epochs=1)
    ckpt = _run(task, parent, mode="qat", calibration_batches=1, qat_epochs=1)
    model = build_model(task, ckpt).eval()
    x = task.example_input(16)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, model(**x).logits)
