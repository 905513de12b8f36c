"""quantize: every mode on the digits MLP and the digits ConvNet, checkpoint round trips."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.metrics import accuracy, count_params, size_bytes
from stages.quantize import QUANTIZE_MODES, SPEC, QuantizeParams, quantize
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.tasks import Task, load_task
from stages.training import fit

from .conftest import train_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded, and the test machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cnn() -> Task:
    return load_task("digits-cnn")


@pytest.fixture(scope="module")
def digits_teacher(digits: Task) -> ModelCheckpoint:
    return train_checkpoint(digits, "teacher", epochs=20)


@pytest.fixture(scope="module")
def cnn_teacher(cnn: Task) -> ModelCheckpoint:
    return train_checkpoint(cnn, "teacher", epochs=3)


@pytest.fixture(scope="module")
def masked_student(digits: Task) -> ModelCheckpoint:
    """A digits student with the smaller half of every Linear weight set to zero."""
    torch.manual_seed(0)
    model = digits.build("student")
    fit(model, digits.train, digits.val, epochs=10, lr=3e-3, batch_size=64, device=CPU, seed=0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(m.weight.abs() > m.weight.abs().median())
    return from_model(digits, model, {"arch": "student", "masked": True})


def _run(task: Task, parent: ModelCheckpoint, **params: object) -> ModelCheckpoint:
    out = quantize(StageInput(task=task, parent=parent), SPEC.make_params(params))
    assert 0.0 <= out.metrics["val_accuracy"] <= 1.0
    return out.checkpoint


def _outputs(task: Task, ckpt: ModelCheckpoint) -> torch.Tensor:
    from stages.runtime import make_predictor

    return make_predictor(task, ckpt)(task.example_input(32))


def _assert_round_trip(task: Task, ckpt: ModelCheckpoint) -> None:
    """Bytes -> torch.load(weights_only=True) -> rebuilt model gives identical outputs."""
    loaded = ModelCheckpoint.from_bytes(ckpt.to_bytes())
    assert loaded.recipe == ckpt.recipe
    assert torch.equal(_outputs(task, ckpt), _outputs(task, loaded))


def _quantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer: int8 weight values} of every torch.ao- or torchao-quantized Linear."""
    found = {}
    for name, m in model.named_modules():
        weight = getattr(m, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):  # torch.ao packed
            w = weight()
            assert w.dtype == torch.qint8
            found[name] = w.int_repr()
        elif weight is not None and hasattr(weight, "qdata"):  # torchao Int8Tensor
            assert weight.qdata.dtype == torch.int8
            found[name] = weight.qdata
    return found


def _pt2e_weights(ckpt: ModelCheckpoint) -> list[torch.Tensor]:
    """The int8 weight constants of a PT2E checkpoint (`_frozen_param<i>`)."""
    found = [v for k, v in ckpt.state_dict.items() if "_frozen_param" in k]
    assert all(v.dtype == torch.int8 for v in found)
    return found


# -- params ---------------------------------------------------------------------------------


def test_params_reject_unknown_mode_naming_key_and_choices() -> None:
    with pytest.raises(SqueezerayError) as err:
        QuantizeParams(mode="int4")
    message = str(err.value)
    assert "quantize.mode='int4'" in message
    for mode in QUANTIZE_MODES:
        assert mode in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("calibration_batches", 0), ("qat_epochs", 0), ("lr", 0.0), ("calibration_batches", 1.5)],
)
def test_params_reject_out_of_range(field: str, value: object) -> None:
    with pytest.raises(SqueezerayError, match=re.escape(f"quantize.{field}")):
        QuantizeParams(**{field: value})  # type: ignore[arg-type]


def test_make_params_rejects_unknown_key() -> None:
    with pytest.raises(SqueezerayError, match=re.escape("quantize.modes is not a parameter")):
        SPEC.make_params({"modes": "none"})


# -- modes ----------------------------------------------------------------------------------


def test_none_is_an_identical_copy(digits: Task, digits_teacher: ModelCheckpoint) -> None:
    ckpt = _run(digits, digits_teacher, mode="none")
    assert ckpt.quantize == "none"
    assert torch.equal(_outputs(digits, ckpt), _outputs(digits, digits_teacher))


def test_dynamic_int8_shrinks_teacher_3x_within_one_point(
    digits: Task, digits_teacher: ModelCheckpoint
) -> None:
    ckpt = _run(digits, digits_teacher, mode="dynamic_int8")
    assert ckpt.quantize == "dynamic_int8"
    assert size_bytes(digits_teacher) >= 3 * size_bytes(ckpt)
    assert abs(accuracy(digits, ckpt) - accuracy(digits, digits_teacher)) <= 0.01
    assert set(_quantized_weights(build_model(digits, ckpt))) == {"net.0", "net.2", "net.4"}
    _assert_round_trip(digits, ckpt)


@pytest.mark.parametrize(
    ("mode", "task_name"),
    [
        ("static_int8", "digits"),
        ("static_int8", "digits-cnn"),
        ("qat", "digits"),
        # PT2E QAT's convert folds Conv+BN by matching exported patterns: ~80 s here
        pytest.param("qat", "digits-cnn", marks=pytest.mark.slow),
    ],
)
def test_pt2e_int8_modes_work_on_mlp_and_convnet(
    mode: str,
    task_name: str,
    digits: Task,
    cnn: Task,
    digits_teacher: ModelCheckpoint,
    cnn_teacher: ModelCheckpoint,
) -> None:
    task, parent = (digits, digits_teacher) if task_name == "digits" else (cnn, cnn_teacher)
    ckpt = _run(task, parent, mode=mode, calibration_batches=4, qat_epochs=1)
    assert ckpt.quantize == mode
    assert ckpt.recipe["quantize_backend"] == "x86_inductor"
    assert ckpt.recipe["activation_qparams"]  # activation scales travel in the recipe
    weights = _pt2e_weights(ckpt)
    expected_layers = 3 if task_name == "digits" else 4  # convnet: 2 conv (BN folded) + 2 linear
    assert len(weights) == expected_layers
    assert not any("running_mean" in k for k in ckpt.state_dict)  # BN folded into conv
    assert not any(v.dtype == torch.float32 and v.dim() > 1 for v in ckpt.state_dict.values())
    assert abs(accuracy(task, ckpt) - accuracy(task, parent)) <= 0.03
    assert size_bytes(ckpt) * 3 < size_bytes(parent)
    _assert_round_trip(task, ckpt)


def test_onnx_int8_is_smaller_than_float_onnx(
    digits: Task, digits_teacher: ModelCheckpoint
) -> None:
    from stages.export import ExportParams, export

    ckpt = _run(digits, digits_teacher, mode="onnx_int8")
    assert (ckpt.quantize, ckpt.runtime) == ("onnx_int8", "onnxruntime")
    assert ckpt.onnx is not None
    float_onnx = export(
        StageInput(task=digits, parent=digits_teacher), ExportParams(runtime="onnxruntime")
    ).checkpoint
    assert size_bytes(ckpt) < size_bytes(float_onnx)
    assert len(ckpt.onnx) * 3 < len(float_onnx.onnx or b"")
    assert abs(accuracy(digits, ckpt) - accuracy(digits, digits_teacher)) <= 0.01
    _assert_round_trip(digits, ckpt)


@pytest.mark.parametrize(
    "mode", ["dynamic_int8", "torchao_dynamic_int8", "int8_weight_only", "static_int8", "qat"]
)
def test_masked_zeros_stay_zero(mode: str, digits: Task, masked_student: ModelCheckpoint) -> None:
    ckpt = _run(digits, masked_student, mode=mode, qat_epochs=2)
    layers = ["net.0", "net.2", "net.4"]
    if mode in ("static_int8", "qat"):  # PT2E: int8 constants in graph order of the Linears
        weights = dict(zip(layers, _pt2e_weights(ckpt), strict=True))
    else:
        weights = _quantized_weights(build_model(digits, ckpt))
    assert set(weights) == set(layers)
    for layer, w_q in weights.items():
        zero = masked_student.state_dict[f"{layer}.weight"] == 0
        assert bool(zero.any())
        assert bool((w_q[zero] == 0).all()), layer
    total, nonzero = count_params(ckpt)
    float_total, float_nonzero = count_params(masked_student)
    assert total == float_total
    assert nonzero <= float_nonzero
    assert ckpt.recipe["masked"] is True


def test_qat_without_mask_changes_weights(digits: Task, digits_teacher: ModelCheckpoint) -> None:
    """QAT trains: its int8 weights differ from post-training static quantization's."""
    static = _pt2e_weights(_run(digits, digits_teacher, mode="static_int8"))
    qat = _pt2e_weights(_run(digits, digits_teacher, mode="qat", qat_epochs=1, lr=1e-3))
    assert any(not torch.equal(a, b) for a, b in zip(static, qat, strict=True))


def _narrow_cnn(task: Task) -> ModelCheckpoint:
    """The digits-cnn student with its first conv block cut from 8 to 5 channels by hand with
    torch-pruning (its BatchNorm and the next conv's inputs follow), trained; the recorded
    pruning history is what rebuilds it."""
    from dataclasses import replace

    from stages.surgery import dependency_graph, history_of

    torch.manual_seed(0)
    model = task.build("student")
    graph = dependency_graph(model, task.example_input(2))
    conv = model.get_submodule("features.0")
    prune_out = graph.get_pruner_of_module(conv).prune_out_channels
    graph.get_pruning_group(conv, prune_out, idxs=[5, 6, 7]).prune()
    assert model.get_submodule("features.4").in_channels == 5
    ckpt = train_checkpoint(task, "student", epochs=5, lr=1e-2, model=model)
    return replace(ckpt, recipe={**ckpt.recipe, "pruned": history_of(graph)})


@pytest.mark.parametrize("mode", ["dynamic_int8", "static_int8"])
def test_structurally_pruned_convnet_rebuilds(mode: str, cnn: Task) -> None:
    parent = _narrow_cnn(cnn)
    ckpt = _run(cnn, parent, mode=mode, calibration_batches=4)
    _assert_round_trip(cnn, ckpt)
    assert accuracy(cnn, parent) > 0.8
    assert abs(accuracy(cnn, ckpt) - accuracy(cnn, parent)) <= 0.05


def test_rejects_a_quantized_parent(digits: Task, digits_teacher: ModelCheckpoint) -> None:
    once = _run(digits, digits_teacher, mode="dynamic_int8")
    with pytest.raises(SqueezerayError, match=r"stage 'quantize' .* already quantized"):
        run_stage(SPEC, StageInput(task=digits, parent=once), QuantizeParams(mode="static_int8"))


def test_same_seed_same_weights(digits: Task, digits_teacher: ModelCheckpoint) -> None:
    a = _run(digits, digits_teacher, mode="static_int8", calibration_batches=2)
    b = _run(digits, digits_teacher, mode="static_int8", calibration_batches=2)
    assert torch.equal(_outputs(digits, a), _outputs(digits, b))


def test_onnx_int8_quantizes_conv_and_linear_weights(
    cnn: Task, cnn_teacher: ModelCheckpoint
) -> None:
    """onnx_int8 is ONNX Runtime's dynamic quantization of every op its registry covers:
    Conv becomes ConvInteger with int8 weights as Linear (Gemm/MatMul) becomes MatMulInteger,
    and quantized_fraction counts both (the README's table says so)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from stages.metrics import quantized_fraction

    ckpt = _run(cnn, cnn_teacher, mode="onnx_int8")
    assert ckpt.onnx is not None
    graph = onnx.load_from_string(ckpt.onnx).graph
    ops = {n.op_type for n in graph.node}
    assert {"ConvInteger", "MatMulInteger"} <= ops and not ops & {"Conv", "Gemm", "MatMul"}
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = {
        n: a
        for n, a in arrays.items()
        if (a.ndim > 0 and a.dtype.kind == "f") or a.dtype in (np.int8, np.uint8)
    }
    weights = {n: a for n, a in weights.items() if not n.endswith(("_scale", "_zero_point"))}
    conv_weights = [a for n, a in weights.items() if a.ndim == 4]
    assert conv_weights and all(a.dtype == np.int8 for a in conv_weights)
    int8 = sum(a.size for a in weights.values() if a.dtype in (np.int8, np.uint8))
    assert quantized_fraction(ckpt) == pytest.approx(int8 / sum(a.size for a in weights.values()))
    assert quantized_fraction(ckpt) > 0.9  # the float rest is biases (and norms)


def test_torchao_pattern_exports_are_memoized_per_pattern_and_copied() -> None:
    """torchao's replacement patterns are exported once a process (QAT's Conv+BN fold traces
    ~130 per convert): each call gets its own copy, and patterns that differ in what they close
    over (the conv function, a flag) or in the example shapes are told apart."""
    import torch.nn.functional as F
    from torchao.quantization.pt2e import qat_utils, utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    from stages.pt2e import _memoize_pattern_exports, _pattern_key

    _memoize_pattern_exports()
    assert qat_utils._get_aten_graph_module_for_pattern is utils._get_aten_graph_module_for_pattern
    x = (torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1))
    conv2d = qat_utils._get_conv_bn_pattern(F.conv2d)
    key = _pattern_key(conv2d, x, False, {})
    assert key == _pattern_key(qat_utils._get_conv_bn_pattern(F.conv2d), x, False, {})
    assert key != _pattern_key(qat_utils._get_conv_bn_pattern(F.conv_transpose2d), x, False, {})
    assert key != _pattern_key(conv2d, (torch.randn(1, 1, 4, 4), x[1]), False, {})

    def flagged(flag: bool) -> nn.Module:
        return WrapperModule(lambda t: F.dropout(t, p=0.5, training=flag))

    one = (torch.randn(2),)
    first = utils._get_aten_graph_module_for_pattern(flagged(True), one)
    again = utils._get_aten_graph_module_for_pattern(flagged(True), one)
    other = utils._get_aten_graph_module_for_pattern(flagged(False), one)
    assert first is not again and first.code == again.code  # a copy: callers edit their graph
    assert other.code != first.code
