"""Through Ray: a user model with BatchNorm and tied weights, whose train split leaves a last
batch of one sample (129 = 2 * 64 + 1), sweeps with every trial ok (issue 21 items 7 and 10):
before, the teacher failed with "Expected more than 1 value per channel when training" and
LoRA's merge check failed on the tied Linears."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.space.parse import parse_space
from stages.tasks import Task

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


class BatchNormTied(nn.Module):
    """Linear -> BatchNorm1d -> two Linears sharing one weight -> classifier."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.bn = nn.BatchNorm1d(width)
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.b.weight = self.a.weight
        self.out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.inp(x)))
        return self.out(torch.relu(self.b(torch.relu(self.a(h)))))


def batchnorm_tied() -> Task:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(129 + 60) % 3
    x = torch.randn(len(y), 4, generator=g) + 2 * y[:, None].float()
    train, held = TensorDataset(x[:129], y[:129]), TensorDataset(x[129:], y[129:])
    return Task("bn-tied", lambda: BatchNormTied(16), None, train, held, held, 3)


def test_batchnorm_and_tied_weights_sweep_with_every_trial_ok(tmp_path: Path) -> None:
    space = parse_space(
        {
            "name": "bn-tied",
            "task": "tests.orchestrator.test_user_model_sweep:batchnorm_tied",
            "pipeline": ["teacher", "prune", "lora"],
            "objectives": {"val_accuracy": "max", "size_bytes": "min"},
            "params": {
                "lora.rank": {"choice": [2]},
                "teacher.epochs": 2,
                "prune.ratio": 0.3,
                "lora.epochs": 1,
            },
            "search": {"algorithm": "grid", "seed": 0},
            "latency": {"warmup": 1, "repeats": 3},
        },
        source="bn-tied.yaml",
    )
    outcome = execute_sweep(prepare_sweep(space, storage=tmp_path / "results"))
    rows = outcome.table.to_pylist()
    assert len(rows) == 2  # one trial and the baseline
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["error"]]
