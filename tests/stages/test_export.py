"""export + runtimes: ONNX Runtime and TorchScript compute what eager computes."""

from __future__ import annotations

import io
import re

import onnxruntime as ort
import pytest
import torch
from torch import nn

from stages.base import StageInput
from stages.batches import LogitsOnly, forward_logits, named_logits, signature_names_ok
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.export import SPEC, ExportParams, export
from stages.onnxio import model_input_names, onnx_input_names, to_onnx_bytes
from stages.quantize import QuantizeParams, quantize
from stages.rebuild import build_model
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


def _schema_names(module: torch.jit.ScriptModule) -> list[str]:
    return [a.name for a in module.forward.schema.arguments[1:]]  # after self


def _saved_and_loaded(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("mode", ["none", "dynamic_int8"])
def test_torchscript_of_named_inputs_takes_the_cards_names(mode: str) -> None:
    """New user F-TS-1: a traced forward(*args) was named by values inside the model (BERT's
    token_type_ids reach nn.Embedding as `input`), so `ts(**tokenizer_output)` failed. The
    module saved as model.pt takes the card's names, by keyword in any order or positionally
    in the card's order, and gives the eager logits."""
    from tests import hf_zoo

    task = hf_zoo.bert()  # samples {"input_ids", "attention_mask", "token_type_ids"}
    parent = from_model(task, task.build("teacher"), {"arch": "teacher"})
    if mode != "none":
        parent = _quantized(task, parent, mode)
    ckpt = parent.with_recipe(runtime="torchscript")
    model = build_model(task, ckpt)
    predictor = make_predictor(task, ckpt)
    assert isinstance(predictor, TorchPredictor)
    ts = _saved_and_loaded(predictor.module)
    batch = task.example_input(5)
    assert isinstance(batch, dict)
    names = list(batch)
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert _schema_names(ts) == names == model_input_names(batch, model)
    with torch.no_grad():
        eager = forward_logits(model, batch)
        assert torch.allclose(ts(**batch), eager, atol=1e-5)
        assert torch.allclose(ts(**dict(reversed(list(batch.items())))), eager, atol=1e-5)
        assert torch.allclose(ts(*batch.values()), eager, atol=1e-5)


def test_torchscript_of_positional_inputs_takes_the_forwards_names(
    digits: Task, mlp_ckpt: ModelCheckpoint
) -> None:
    """A positional model's trace is named as the card names it (`model.forward`'s own)."""
    ckpt = mlp_ckpt.with_recipe(runtime="torchscript")
    model = build_model(digits, ckpt)
    predictor = make_predictor(digits, ckpt)
    assert isinstance(predictor, TorchPredictor)
    x = digits.example_input(3)
    names = model_input_names(x, model)
    assert _schema_names(predictor.module) == names == onnx_input_names(1, model=model)
    with torch.no_grad():
        got = _saved_and_loaded(predictor.module)(**dict(zip(names, [x], strict=True)))
        assert torch.allclose(got, forward_logits(model, x), atol=1e-5)


@pytest.mark.parametrize("name", ["int", "torch", "CONSTANTS", "self", "pixel-values", "class"])
def test_names_torchscript_cannot_take_leave_a_positional_forward(name: str) -> None:
    """An input name TorchScript's saved code would shadow or rename (a builtin, `torch`, a
    keyword, not an identifier) keeps the plain forward(*args): model.pt then loads and runs
    positionally, as before."""
    model = nn.Linear(4, 3).eval()
    wrapped = named_logits(model, None, [name])
    assert type(wrapped) is LogitsOnly and wrapped.arguments is None
    assert signature_names_ok(["input_ids", "attention_mask"]) and not signature_names_ok([name])
    assert not signature_names_ok(["x", "x"])
    traced = torch.jit.trace(wrapped, (torch.randn(2, 4),))
    x = torch.randn(5, 4)
    assert torch.allclose(_saved_and_loaded(traced)(x), model(x), atol=1e-6)
