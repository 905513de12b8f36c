"""Session-cached trained models for stage tests: train once, reuse everywhere.

All on CPU with few epochs so the whole stage suite stays fast on 2 cores. Tests must not
mutate what these return (checkpoints are frozen dataclasses; their tensors are not).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import zstandard

from stages.base import StageInput, StageOutput
from stages.checkpoint import ModelCheckpoint
from stages.distill import DistillParams, distill
from stages.tasks import Task, load_task
from stages.teacher import TeacherParams, train_teacher


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models run fastest on one thread, and other test processes share the 2 cores:
    two spinning OpenMP threads per process made the digits teacher 25x slower under load."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Task:
    return load_task("digits")


@pytest.fixture(scope="session")
def digits_cnn() -> Task:
    return load_task("digits-cnn")


@pytest.fixture(scope="session")
def digits_teacher(digits: Task) -> StageOutput:
    """The default teacher stage (40 epochs, ~2 s): the KD comparison needs a real teacher."""
    return train_teacher(StageInput(task=digits, parent=None, seed=0), TeacherParams())


@pytest.fixture(scope="session")
def digits_student(digits: Task, digits_teacher: StageOutput) -> StageOutput:
    """A distilled [64,32] student, 20 epochs (~0.5 s); val accuracy ~0.97."""
    return distill(
        StageInput(task=digits, parent=digits_teacher.checkpoint, seed=0),
        DistillParams(epochs=20),
    )


@pytest.fixture(scope="session")
def cnn_teacher(digits_cnn: Task) -> StageOutput:
    """The conv teacher (conv + BatchNorm), 3 epochs: trained BN statistics, ~0.5 s."""
    return train_teacher(StageInput(task=digits_cnn, parent=None, seed=0), TeacherParams(epochs=3))


def zstd_size(ckpt: ModelCheckpoint) -> int:
    """Bytes of the zstd-compressed `torch.save(state_dict)` at the level results report
    size with (`stages.metrics.ZSTD_LEVEL`)."""
    from stages.metrics import ZSTD_LEVEL

    buf = io.BytesIO()
    torch.save(ckpt.state_dict, buf)
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buf.getvalue()))


def same_state(a: ModelCheckpoint, b: ModelCheckpoint) -> bool:
    """Same keys, shapes and exactly equal values."""
    return a.state_dict.keys() == b.state_dict.keys() and all(
        torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict
    )


def snapshot(ckpt: ModelCheckpoint) -> dict[str, torch.Tensor]:
    """Cloned tensors, to check later that a stage did not mutate its input."""
    return {k: v.clone() for k, v in ckpt.state_dict.items()}


def train_checkpoint(
    task: Task, arch: str, *, epochs: int, lr: float = 1e-3, model: torch.nn.Module | None = None
) -> ModelCheckpoint:
    """Train `model` (default: a fresh `task.build(arch)`, seed 0) with plain CE on CPU."""
    from stages.checkpoint import from_model
    from stages.training import fit

    if model is None:
        torch.manual_seed(0)  # the initial weights come from the global generator
        model = task.build(arch)
    cpu = torch.device("cpu")
    fit(model, task.train, task.val, epochs=epochs, lr=lr, batch_size=64, device=cpu, seed=0)
    return from_model(task, model, {"arch": arch})


class WalkedTooFar(Exception):
    """torch-pruning added more group entries than the test module's WALK_BUDGET."""


@pytest.fixture
def walked(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """Counts torch-pruning's group entries (`Group.add_dep`); past the test module's
    `WALK_BUDGET` the walk stops with WalkedTooFar, so a walk that would run for minutes fails
    at once (the work is counted, not timed)."""
    from torch_pruning.dependency.group import Group

    budget = int(request.module.WALK_BUDGET)
    count = [0]
    add = Group.add_dep

    def counted(self: Any, dep: Any, idxs: Any) -> None:
        count[0] += 1
        if count[0] > budget:
            raise WalkedTooFar(f"torch-pruning added over {budget} group entries")
        add(self, dep, idxs)

    monkeypatch.setattr(Group, "add_dep", counted)
    yield count
