"""An Embedding + bidirectional LSTM text classifier written the way users write it (new user
8: int64 token ids, 0 = padding with `padding_idx=0`, masked mean and max pooling, a
Linear-ReLU-Dropout-Linear head), and a plain MLP on the same kind of task.

Its Linear layers hold 14.6% of its 227,843 parameters; structured pruning leaves the LSTM and
the Embedding that feeds it, so the student made at distill.student_ratio 0.5 loses 7.3% of
the parameters and holds 7.8% in Linear layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.tasks import Task

VOCAB, CLASSES, LENGTH = 2000, 3, 12


class LSTMClassifier(nn.Module):
    """ids (B, L) int64 -> logits (B, 3)."""

    def __init__(self, emb: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, emb, padding_idx=0)
        self.rnn = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(
            nn.Linear(4 * hidden, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, CLASSES)
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).unsqueeze(-1).float()
        out, _ = self.rnn(self.embedding(input_ids))
        mean = (out * mask).sum(1) / mask.sum(1).clamp(min=1)
        top = out.masked_fill(mask == 0, -1e4).max(1).values
        return self.head(torch.cat([mean, top], -1))  # type: ignore[no-any-return]


class BagMLP(nn.Module):
    """ids (B, L) int64 -> counts of 64 buckets -> MLP -> logits (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.out = nn.Linear(32, CLASSES)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(input_ids.shape[0], 64).scatter_add_(
            1, input_ids % 64, (input_ids != 0).float()
        )
        return self.out(self.net(counts))  # type: ignore[no-any-return]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    ids = 1 + y.unsqueeze(1) * 600 + torch.randint(0, 600, (n, LENGTH), generator=g)
    lengths = torch.randint(3, LENGTH + 1, (n,), generator=g)
    ids[torch.arange(LENGTH).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return TensorDataset(ids.long(), y)


def _task(name: str, factory: type[nn.Module]) -> Task:
    return Task(
        name=name,
        teacher=factory,
        student=None,  # made from the teacher (distill.student_ratio)
        train=_data(48, 0),
        val=_data(24, 1),
        test=_data(24, 2),
        num_classes=CLASSES,
    )


def make_lstm_task() -> Task:
    return _task("lstm", LSTMClassifier)


def make_mlp_task() -> Task:
    return _task("mlp", BagMLP)
