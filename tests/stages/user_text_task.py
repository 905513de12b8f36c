"""Tiny text models written the way users write them, for the int8 / ONNX tests.

- `MaskedTextNet`: Embedding + nn.TransformerEncoder with the padding mask computed in
  forward (`pad = ids == 0`, a bool tensor), a masked mean with `(~pad)` and an int64 token
  count: non-float tensors that FX graph mode must leave alone.
- `RNNNet`: Embedding + nn.GRU or nn.LSTM + Linear head.

Data: 160/64/64 sequences of 8 ids (vocabulary 20, 0 = padding, lengths 3..8); the class is
which of the marker ids 1 or 2 comes first.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.tasks import Task

VOCAB = 20
SEQ_LEN = 8


class MaskedTextNet(nn.Module):
    """ids (B, L) int64 -> logits (B, 2)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            d, 2, dim_feedforward=2 * d, batch_first=True, dropout=0.0
        )
        self.enc = nn.TransformerEncoder(layer, 1)
        self.cls = nn.Linear(d, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        h = self.enc(self.emb(ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        count = (~pad).sum(1, keepdim=True).clamp(min=1)  # int64
        return self.cls((h * keep).sum(1) / count)  # type: ignore[no-any-return]


class RNNNet(nn.Module):
    """ids (B, L) int64 -> logits (B, 2)."""

    def __init__(self, h: int = 16, kind: str = "gru") -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(8, h, batch_first=True)
        self.cls = nn.Linear(h, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(ids))
        return self.cls(out.mean(1))  # type: ignore[no-any-return]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, SEQ_LEN), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    ids[:, 0] = torch.where(y == 1, 1, 2)
    lengths = torch.randint(3, SEQ_LEN + 1, (n,), generator=g)
    ids[torch.arange(SEQ_LEN).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return TensorDataset(ids, y)


def make_task(model: str = "masked") -> Task:
    """`model`: "masked" (MaskedTextNet), "gru" or "lstm" (RNNNet)."""
    if model == "masked":
        teacher, student = (lambda: MaskedTextNet(16)), (lambda: MaskedTextNet(8))
    else:
        teacher, student = (lambda: RNNNet(16, model)), (lambda: RNNNet(8, model))
    return Task(
        name=f"tests.stages.user_text_task:{model}",
        teacher=teacher,
        student=student,
        train=_data(160, 0),
        val=_data(64, 1),
        test=_data(64, 2),
        num_classes=2,
    )
