"""PT2E (static_int8, qat) on models with integer arithmetic in their traced graph: RoBERTa
(XLM-R, CamemBERT, ...) builds position ids from the input ids,
`mask = ids.ne(pad).int(); (cumsum(mask) + 0) * mask`. The X86 quantizer annotated that int32
mul, and calibration failed (`"histogram_cpu" not implemented for 'Int'`, new user F2; QAT:
`expected scalar type Float but found Int`). Integer ops now stay unquantized, the float
Linears are int8."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint
from stages.quantize import SPEC
from stages.runner import run_stage
from stages.tasks import Task

from .conftest import train_checkpoint

VOCAB, SEQ_LEN, PAD = 20, 8, 0


class PositionIdNet(nn.Module):
    """ids (B, L) int64 -> logits (B, 2), position ids made as RoBERTa makes them."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, d, padding_idx=PAD)
        self.positions = nn.Embedding(SEQ_LEN + 2, d, padding_idx=PAD)
        self.hidden = nn.Linear(d, d)
        self.head = nn.Linear(d, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids.ne(PAD).int()
        positions = (torch.cumsum(mask, dim=1).type_as(mask) + 0) * mask + PAD
        h = self.tokens(ids) + self.positions(positions.long())
        return self.head(torch.relu(self.hidden(h)).mean(1))  # type: ignore[no-any-return]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, SEQ_LEN), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    ids[:, 0] = torch.where(y == 1, 1, 2)
    ids[:, -2:] = PAD
    return TensorDataset(ids, y)


@pytest.fixture(scope="module")
def task() -> Task:
    return Task(
        name="tests.stages.test_pt2e_integer_ops",
        teacher=PositionIdNet,
        student=None,
        train=_data(128, 0),
        val=_data(32, 1),
        test=_data(32, 2),
        num_classes=2,
    )


def _quantize(task: Task, parent: ModelCheckpoint, mode: str) -> ModelCheckpoint:
    params = SPEC.make_params({"mode": mode, "calibration_batches": 1, "qat_epochs": 1})
    out, data = run_stage(SPEC, StageInput(task=task, parent=parent), params)
    assert out.metrics["quantized_fraction"] > 0.2  # the Linears; embeddings stay float
    return ModelCheckpoint.from_bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static_int8", "qat"])
def test_integer_position_ids_leave_the_float_layers_int8(task: Task, mode: str) -> None:
    from stages.metrics import accuracy
    from stages.rebuild import build_model

    parent = train_checkpoint(task, "teacher", epochs=3)
    ckpt = _quantize(task, parent, mode)
    assert sum("_frozen_param" in k for k in ckpt.state_dict) == 2  # hidden, head
    with torch.no_grad():
        logits = build_model(task, ckpt)(task.example_input(4))
    assert torch.isfinite(logits).all()
    assert 0.0 <= accuracy(task, ckpt) <= 1.0


def test_the_integer_mul_is_left_unannotated(task: Task) -> None:
    """The quantizer's annotation is dropped on the int32 mul only; the Linears keep theirs."""
    from stages.pt2e import _quantizer, export_for_quantization

    gm = export_for_quantization(PositionIdNet(), task.example_input(2), qat=False, what="t")
    _quantizer(qat=False).annotate(gm)
    annotated = {str(n.target) for n in gm.graph.nodes if "quantization_annotation" in n.meta}
    assert "aten.linear.default" in annotated
    assert "aten.mul.Tensor" not in annotated


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static_int8", "qat"])
def test_pt2e_quantizes_a_hugging_face_roberta(mode: str) -> None:
    from tests.stages.hf_tiny import hf_task

    task = hf_task("roberta")
    parent = train_checkpoint(task, "teacher", epochs=1)
    ckpt = _quantize(task, parent, mode)
    int8 = [k for k, v in ckpt.state_dict.items() if "_frozen_param" in k]
    assert len(int8) >= 2 * 6 + 2  # 2 layers x (q, k, v, out, ffn in, ffn out) + head's 2
