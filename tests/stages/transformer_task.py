"""A user-style Transformer encoder classifier on token-id sequences, for the stage tests.

Written the way users write it (nn.TransformerEncoder, batch_first, an Embedding first on
int64 token ids, a Linear head). Wider than `tests.zoo.transformer` (d_model 32, two layers)
so lowrank has layers above its default min_features and the int8 checks have weight to count.

Data: sequences of 12 ids from a vocabulary of 24; the class (of 3) is which of the marker
ids 1, 2, 3 occurs most often (ties to the lowest). Learnable by attention in a few epochs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.tasks import Task

VOCAB = 24
SEQ_LEN = 12
NUM_CLASSES = 3


class TokenTransformer(nn.Module):
    """ids (B, L) -> logits (B, classes): Embedding + learned positions, encoder, mean pool."""

    def __init__(self, d_model: int = 32, heads: int = 4, ff: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.zeros(1, SEQ_LEN, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        return self.head(self.encoder(h).mean(dim=1))  # type: ignore[no-any-return]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, SEQ_LEN), generator=g)
    marks = torch.randint(1, NUM_CLASSES + 1, (n, 4), generator=g)
    pos = torch.stack([torch.randperm(SEQ_LEN, generator=g)[:4] for _ in range(n)])
    ids.scatter_(1, pos, marks)
    counts = torch.stack([(ids == k).sum(1) for k in range(1, NUM_CLASSES + 1)], dim=1)
    y = counts.argmax(dim=1)
    return TensorDataset(ids, y)  # int64 ids


def make_task() -> Task:
    """Teacher d_model 32 (2 layers, ff 64); student d_model 16 (1 layer, ff 32)."""
    return Task(
        name="tests.stages.transformer_task:make_task",
        teacher=lambda: TokenTransformer(),
        student=lambda: TokenTransformer(d_model=16, heads=2, ff=32, layers=1),
        train=_data(600, 0),
        val=_data(150, 1),
        test=_data(150, 2),
        num_classes=NUM_CLASSES,
        description="token-id Transformer encoder classifier (3 classes)",
    )
