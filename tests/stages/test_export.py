"""export + runtimes: ONNX Runtime and TorchScript compute what eager computes."""

from __future__ import annotations

import re

import onnxruntime as ort
import pytest
import torch
from torch import nn

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.export import SPEC, ExportParams, export
from stages.onnxio import to_onnx_bytes
from stages.quantize import QuantizeParams, quantize
from stages.runtime import OnnxPredictor, TorchPredictor, make_predictor
from stages.tasks import Task, load_task

from .conftest import train_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cnn() -> Task:
    return load_task("digits-cnn")


@pytest.fixture(scope="module")
def mlp_ckpt(digits: Task) -> ModelCheckpoint:
    return train_checkpoint(digits, "teacher", epochs=10)


@pytest.fixture(scope="module")
def cnn_ckpt(cnn: Task) -> ModelCheckpoint:
    return train_checkpoint(cnn, "student", epochs=5)


def _export(task: Task, parent: ModelCheckpoint, runtime: str) -> ModelCheckpoint:
    out = export(StageInput(task=task, parent=parent), ExportParams(runtime=runtime))
    assert 0.0 <= out.metrics["val_accuracy"] <= 1.0
    return out.checkpoint


def _test_x(task: Task) -> torch.Tensor:
    return task.example_input(len(task.test))  # type: ignore[arg-type]


def _quantized(task: Task, parent: ModelCheckpoint, mode: str) -> ModelCheckpoint:
    params = QuantizeParams(mode=mode, calibration_batches=2)
    return quantize(StageInput(task=task, parent=parent), params).checkpoint


def test_params_reject_unknown_runtime_naming_key_and_choices() -> None:
    with pytest.raises(SqueezerayError) as err:
        ExportParams(runtime="tensorrt")
    message = str(err.value)
    assert "export.runtime='tensorrt'" in message
    for runtime in ("eager", "torchscript", "onnxruntime"):
        assert runtime in message
    with pytest.raises(SqueezerayError, match=re.escape("export.runtim is not a parameter")):
        SPEC.make_params({"runtim": "eager"})


@pytest.mark.parametrize("task_name", ["digits", "digits-cnn"])
def test_onnxruntime_predicts_like_eager(
    task_name: str, digits: Task, cnn: Task, mlp_ckpt: ModelCheckpoint, cnn_ckpt: ModelCheckpoint
) -> None:
    task, parent = (digits, mlp_ckpt) if task_name == "digits" else (cnn, cnn_ckpt)
    ckpt = _export(task, parent, "onnxruntime")
    assert ckpt.runtime == "onnxruntime"
    assert ckpt.onnx is not None
    loaded = ModelCheckpoint.from_bytes(ckpt.to_bytes())
    onnx_predictor = make_predictor(task, loaded)
    assert isinstance(onnx_predictor, OnnxPredictor)
    x = _test_x(task)
    eager = make_predictor(task, parent)(x)
    got = onnx_predictor(x)  # whole test split in one batch: the batch axis is dynamic
    assert torch.equal(got.argmax(1), eager.argmax(1))
    assert torch.allclose(got, eager, atol=1e-4)
    assert onnx_predictor(x[:1]).shape == (1, task.num_classes)


@pytest.mark.parametrize("mode", ["none", "dynamic_int8", "static_int8"])
def test_torchscript_matches_eager(mode: str, digits: Task, mlp_ckpt: ModelCheckpoint) -> None:
    parent = mlp_ckpt if mode == "none" else _quantized(digits, mlp_ckpt, mode)
    ckpt = _export(digits, parent, "torchscript")
    assert ckpt.runtime == "torchscript"
    predictor = make_predictor(digits, ModelCheckpoint.from_bytes(ckpt.to_bytes()))
    assert isinstance(predictor, TorchPredictor)
    assert isinstance(predictor.module, torch.jit.ScriptModule)
    x = _test_x(digits)
    assert torch.allclose(predictor(x), make_predictor(digits, parent)(x), atol=1e-5)


def test_torchscript_static_int8_convnet(cnn: Task, cnn_ckpt: ModelCheckpoint) -> None:
    parent = _quantized(cnn, cnn_ckpt, "static_int8")
    predictor = make_predictor(cnn, _export(cnn, parent, "torchscript"))
    x = _test_x(cnn)
    assert torch.allclose(predictor(x), make_predictor(cnn, parent)(x), atol=1e-5)


def test_eager_export_is_the_parent_model(digits: Task, mlp_ckpt: ModelCheckpoint) -> None:
    ckpt = _export(digits, mlp_ckpt, "eager")
    assert (ckpt.runtime, ckpt.onnx) == ("eager", None)
    x = _test_x(digits)
    assert torch.equal(make_predictor(digits, ckpt)(x), make_predictor(digits, mlp_ckpt)(x))


@pytest.mark.parametrize("mode", ["dynamic_int8", "static_int8"])
def test_onnx_export_of_torch_int8_points_to_onnx_int8(
    mode: str, digits: Task, mlp_ckpt: ModelCheckpoint
) -> None:
    parent = _quantized(digits, mlp_ckpt, mode)
    with pytest.raises(SqueezerayError, match=re.escape("use quantize.mode=onnx_int8")):
        _export(digits, parent, "onnxruntime")


def test_onnx_int8_parent_deploys_only_to_onnxruntime(
    digits: Task, mlp_ckpt: ModelCheckpoint
) -> None:
    parent = _quantized(digits, mlp_ckpt, "onnx_int8")
    assert _export(digits, parent, "onnxruntime").onnx == parent.onnx
    with pytest.raises(
        SqueezerayError, match=re.escape("export.runtime='torchscript' cannot deploy")
    ):
        _export(digits, parent, "torchscript")


def test_runtime_onnx_without_bytes_is_a_clear_error(
    digits: Task, mlp_ckpt: ModelCheckpoint
) -> None:
    with pytest.raises(SqueezerayError, match="no ONNX bytes"):
        make_predictor(digits, mlp_ckpt.with_recipe(runtime="onnxruntime"))


def test_onnx_session_uses_the_requested_threads(digits: Task, mlp_ckpt: ModelCheckpoint) -> None:
    ckpt = _export(digits, mlp_ckpt, "onnxruntime")
    for threads in (1, 2):
        predictor = make_predictor(digits, ckpt, threads=threads)
        assert isinstance(predictor, OnnxPredictor)
        options = predictor.session.get_session_options()
        assert options.intra_op_num_threads == threads
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_to_onnx_bytes_falls_back_to_the_legacy_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    real_export = torch.onnx.export
    calls: list[bool] = []

    def dynamo_fails(*args, dynamo: bool = True, **kwargs):
        calls.append(dynamo)
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    data = to_onnx_bytes(model, torch.randn(1, 4))
    assert calls == [True, False]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(5, 4)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)
