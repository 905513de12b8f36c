"""A training stage says where it is (`stages.progress`): epoch and batch, throttled."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.progress import reporting, training_step
from stages.training import fit


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_fit_reports_each_epoch_and_batch_of_how_many() -> None:
    heard: list[str] = []
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with reporting(heard.append, every_s=0):
        fit(
            model,
            _data(40),
            _data(10),
            epochs=2,
            lr=1e-2,
            batch_size=16,
            device=torch.device("cpu"),
            seed=0,
        )
    assert heard == [f"epoch {epoch}/2, batch {batch}/3" for epoch in (1, 2) for batch in range(4)]


def test_reports_are_throttled_and_silent_outside_a_reporting_block() -> None:
    heard: list[str] = []
    training_step(1, 1, 1, 10)  # nobody listens: nothing happens
    with reporting(heard.append, every_s=3600):
        for batch in range(5):
            training_step(1, 1, batch, None)  # an iterable dataset: no total
    assert heard == ["epoch 1/1, batch 0"]  # the first at once, the rest within the hour
    training_step(1, 1, 2, 10)
    assert heard == ["epoch 1/1, batch 0"]  # the block has ended
