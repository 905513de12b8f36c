"""`quantize.mode=onnx_static_int8` on attention with an additive mask (new user F1).

ONNX Runtime's `quantize_static` left to its defaults put Q/DQ on every op it supports, the
`scores + mask` Add included; a Hugging Face mask holds `finfo.min`, so that tensor's uint8
scale was about 1e36, the attention collapsed and RoBERTa/BERT fell to chance accuracy with
an `ok` row. `stages.onnxio.ort_quantize_static` now quantizes the weight-bearing ops only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stages.onnxio import ort_quantize_static, to_onnx_bytes, weight_nodes

VOCAB, SEQ = 32, 8


class MaskedAttention(nn.Module):
    """One attention read-out over token embeddings, masked the Hugging Face way:
    `scores + (1 - mask) * finfo.min`. Its q/k weights are scaled up so the attention is
    sharp and the logits depend on which tokens it picks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 16)
        self.q, self.k, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 2)
        with torch.no_grad():
            self.q.weight.mul_(2)
            self.k.weight.mul_(2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        scores = self.q(h) @ self.k(h).transpose(-1, -2)
        bias = (1.0 - attention_mask[:, None, :].float()) * torch.finfo(torch.float32).min
        return self.head((torch.softmax(scores + bias, dim=-1) @ h)[:, 0])


def _run(onnx_bytes: bytes, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


def _quantize_inputs(onnx_bytes: bytes) -> set[str]:
    """Op types that feed a QuantizeLinear (an activation ORT quantizes)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    return {
        producer.get(node.input[0], "graph input")
        for node in graph.node
        if node.op_type == "QuantizeLinear"
    }


def test_a_very_negative_attention_mask_keeps_float_logits() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (64, SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (64, 1), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths).long()  # right-padded rows
    float_onnx = to_onnx_bytes(
        MaskedAttention().eval(), {"input_ids": ids[:2], "attention_mask": mask[:2]}
    )
    int8_onnx = ort_quantize_static(float_onnx, [(ids[:32], mask[:32]), (ids[32:], mask[32:])])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    want, got = _run(float_onnx, feed), _run(int8_onnx, feed)
    # every op quantized (the old call): max |difference| 1.5 on logits up to 1.3, 72% agree
    assert np.abs(want - got).max() <= 0.3 * np.abs(want).max()
    assert (want.argmax(-1) == got.argmax(-1)).mean() >= 0.9
    assert _quantize_inputs(int8_onnx).isdisjoint({"Add", "Softmax", "Where"})


def test_weight_nodes_are_the_matmuls_with_a_constant_weight() -> None:
    import onnx

    model = onnx.load_from_string(
        to_onnx_bytes(
            MaskedAttention().eval(),
            {"input_ids": torch.zeros(2, SEQ).long(), "attention_mask": torch.ones(2, SEQ).long()},
        )
    )
    names = weight_nodes(model.graph)
    ops = {node.name: node.op_type for node in model.graph.node}
    assert sorted(ops[n] for n in names) in (["Gemm"] * 3, ["Gemm", "MatMul", "MatMul"])
    assert len(names) == 3  # q, k, head; not scores = q @ k^T nor softmax @ h


@pytest.mark.slow
def test_a_hugging_face_bert_has_no_quantized_mask_add() -> None:
    from tests import hf_zoo

    model = hf_zoo.load("bert")
    train = hf_zoo.splits("bert")[0]
    names = list(train.inputs)
    float_onnx = to_onnx_bytes(model, {k: v[:2] for k, v in train.inputs.items()})
    calibration = [tuple(train.inputs[k][i : i + 32] for k in names) for i in (0, 32)]
    int8_onnx = ort_quantize_static(float_onnx, calibration)
    assert _quantize_inputs(int8_onnx).isdisjoint({"Add", "Softmax", "Where"})
    feed = {k: v.numpy() for k, v in hf_zoo.splits("bert")[2].inputs.items()}
    want, got = _run(float_onnx, feed), _run(int8_onnx, feed)
    assert np.abs(want - got).max() <= 0.1 * np.abs(want).max()
