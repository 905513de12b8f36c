"""The scale benchmark's user task: one MLP family at ~0.1M, 1M, 10M and 50M parameters.

A user task module as a user writes one (`package.module:callable`, a zero-argument factory
returning a `stages.Task`): `bench.scale_task:mlp_10m` and so on. The teacher is "given
trained" (the sweep runs it with `teacher.epochs: 0`): its weights are the seeded factory's,
which is all that matters for cost. `student=None`: distill makes the student from the teacher
(`distill.student_ratio`). Data: 2,000 training, 500 validation and 500 test samples of 10
Gaussian classes in 256 dimensions (TensorDatasets, so the fingerprint hashes them whole).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.tasks import Task

INPUTS = 256
CLASSES = 10
TRAIN, VAL, TEST = 2000, 500, 500
# hidden width per size: params = 256 w + w^2 + 10 w (+ biases)
WIDTHS = {"0.1M": 220, "1M": 880, "10M": 3040, "50M": 6950}


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(INPUTS, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, CLASSES),
    )


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, INPUTS, generator=torch.Generator().manual_seed(0)) * 0.5
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = centres[y] + torch.randn(n, INPUTS, generator=g)
    return TensorDataset(x, y)


def make(size: str) -> Task:
    """The task at `size` (a key of WIDTHS)."""
    width = WIDTHS[size]
    return Task(
        name=f"scale-mlp-{size}",
        teacher=lambda: mlp(width),
        student=None,
        train=_data(TRAIN, 1),
        val=_data(VAL, 2),
        test=_data(TEST, 3),
        num_classes=CLASSES,
        description=f"scale benchmark MLP [{width}, {width}] on 256-d Gaussian classes",
    )


def params_of(size: str) -> int:
    width = WIDTHS[size]
    return INPUTS * width + width + width * width + width + width * CLASSES + CLASSES


def mlp_0_1m() -> Task:
    return make("0.1M")


def mlp_1m() -> Task:
    return make("1M")


def mlp_10m() -> Task:
    return make("10M")


def mlp_50m() -> Task:
    return make("50M")


FACTORIES = {"0.1M": "mlp_0_1m", "1M": "mlp_1m", "10M": "mlp_10m", "50M": "mlp_50m"}
