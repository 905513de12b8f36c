"""Quantize / export of user-style text models: padding masks computed in forward under FX
int8 (static, QAT), GRU/LSTM under dynamic int8, ONNX with a dynamic sequence length and
input names from forward's signature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.onnxio import to_onnx_bytes
from stages.quantize import SPEC, quantize
from stages.rebuild import build_model

from .user_text_task import MaskedTextNet, make_task


def _quantized(model: str, mode: str) -> tuple[object, ModelCheckpoint, nn.Module]:
    task = make_task(model)
    torch.manual_seed(0)
    parent = from_model(task, task.build("student"), {"arch": "student"})
    out = quantize(
        StageInput(task=task, parent=parent, seed=0),
        SPEC.make_params({"mode": mode, "qat_epochs": 1, "calibration_batches": 2}),
    )
    assert out.model is not None
    return task, out.checkpoint, out.model


@pytest.mark.parametrize("mode", ["static_int8", "qat"])
def test_fx_int8_leaves_bool_mask_and_int64_count_float(mode: str) -> None:
    """`pad = ids == 0`, `~pad` and an int64 count get no observer / fake-quant (they crashed
    calibration and QAT); the Linears are int8 and the checkpoint rebuilds the same model."""
    task, ckpt, model = _quantized("masked", mode)
    from stages.metrics import quantized_fraction

    assert quantized_fraction(ckpt) > 0.5
    loaded = ModelCheckpoint.from_bytes(ckpt.to_bytes())  # torch.load(weights_only=True)
    x = task.example_input(16)  # type: ignore[attr-defined]
    with torch.no_grad():
        assert torch.equal(model(x), build_model(task, loaded)(x))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_dynamic_int8_quantizes_gru_and_lstm(kind: str) -> None:
    task, ckpt, model = _quantized(kind, "dynamic_int8")
    from stages.metrics import quantized_fraction

    # The RNN holds most weights: quantized_fraction counts it (was only the head, ~0.01).
    assert quantized_fraction(ckpt) > 0.5
    rnn_keys = [k for k in ckpt.state_dict if k.startswith("rnn.")]
    assert rnn_keys and all(isinstance(ckpt.state_dict[k], torch.Tensor) for k in rnn_keys)
    assert any(ckpt.state_dict[k].dtype == torch.qint8 for k in rnn_keys)
    loaded = ModelCheckpoint.from_bytes(ckpt.to_bytes())  # torch.load(weights_only=True)
    x = task.example_input(16)  # type: ignore[attr-defined]
    with torch.no_grad():
        assert torch.equal(model(x), build_model(task, loaded)(x))  # type: ignore[arg-type]


def test_onnx_text_model_runs_at_another_sequence_length() -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = MaskedTextNet(8).eval()
    example = torch.randint(1, 20, (2, 8))
    data = to_onnx_bytes(model, example)
    graph_input = onnx.load_from_string(data).graph.input[0]
    assert graph_input.name == "ids"  # forward's parameter name
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[1].dim_param and not dims[1].dim_value  # the sequence axis is dynamic
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for length in (5, 11):
        ids = torch.randint(1, 20, (3, length))
        ids[0, length - 2 :] = 0  # padded tail
        (got,) = session.run(None, {"ids": ids.numpy()})
        with torch.no_grad():
            expected = model(ids).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 3)
        self.lin = nn.Linear(5 + 3, 2)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x_num, self.emb(x_cat)], 1))  # type: ignore[no-any-return]


def test_onnx_input_names_come_from_forward_signature() -> None:
    import onnx

    data = to_onnx_bytes(_TwoInputs().eval(), (torch.randn(2, 5), torch.tensor([0, 3])))
    assert [i.name for i in onnx.load_from_string(data).graph.input] == ["x_num", "x_cat"]
