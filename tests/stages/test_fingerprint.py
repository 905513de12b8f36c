"""Task fingerprints: an edited model, new weights or one changed label change them; nothing
else does. (The sweep-level check, a retrained teacher on the same storage, is in
tests/orchestrator/test_fingerprint_sweep.py.)"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from stages import fingerprint as fp_module
from stages.fingerprint import task_fingerprint
from stages.tasks import Task


class Net(nn.Module):
    """The way users write models: a class with its own forward."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU())
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ListDataset(Dataset[tuple[torch.Tensor, int]]):
    """A plain map-style dataset (not a TensorDataset): hashed item by item."""

    def __init__(self, x: torch.Tensor, y: list[int]) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], self.y[i]


def make_task(*, width: int = 16, labels: torch.Tensor | None = None, **overrides: Any) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = torch.arange(60) % 3 if labels is None else labels
    fields: dict[str, Any] = {
        "name": "user",
        "teacher": lambda: Net(width),
        "student": lambda: Net(4),
        "train": TensorDataset(x[:40], y[:40]),
        "val": TensorDataset(x[40:50], y[40:50]),
        "test": TensorDataset(x[50:], y[50:]),
        "num_classes": 3,
    }
    return Task(**{**fields, **overrides})


def test_unchanged_task_same_fingerprint_and_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert task_fingerprint(make_task()) == task_fingerprint(make_task())
    assert torch.equal(torch.get_rng_state(), before)  # forked, not consumed


def test_model_width_changes_only_the_teacher_part() -> None:
    base, wider = task_fingerprint(make_task()), task_fingerprint(make_task(width=17))
    assert wider.teacher != base.teacher
    assert (wider.student, wider.data) == (base.student, base.data)


def test_one_training_label_changes_only_the_data_part() -> None:
    labels = torch.arange(60) % 3
    labels[7] = (labels[7] + 1) % 3
    base, edited = task_fingerprint(make_task()), task_fingerprint(make_task(labels=labels))
    assert edited.data != base.data
    assert (edited.teacher, edited.student) == (base.teacher, base.student)


def test_given_weights_change_the_teacher_part() -> None:
    """A pretrained teacher: same architecture, other weights (the factory loads them)."""

    def pretrained(shift: float) -> nn.Module:
        torch.manual_seed(5)  # a factory with its own seed: the weights are what it returns
        model = Net(16)
        with torch.no_grad():
            model.head.bias.add_(shift)
        return model

    a = task_fingerprint(make_task(teacher=lambda: pretrained(0.0)))
    b = task_fingerprint(make_task(teacher=lambda: pretrained(0.5)))
    assert a.teacher != b.teacher and a.data == b.data


def test_version_overrides_the_data_hash() -> None:
    labels = torch.arange(60) % 3
    labels[0] = 2
    v1 = task_fingerprint(make_task(version="v1"))
    assert v1.data == "version:v1"
    assert task_fingerprint(make_task(labels=labels, version="v1")).data == v1.data
    assert task_fingerprint(make_task(version="v2")).data != v1.data


def test_plain_datasets_are_hashed_by_content_and_large_ones_sampled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    labels = [i % 3 for i in range(300)]
    task = make_task()

    def with_train(y: list[int]) -> Task:
        return dataclasses.replace(task, train=ListDataset(x, y))

    edited = list(labels)
    edited[1] = (edited[1] + 1) % 3
    assert task_fingerprint(with_train(labels)) == task_fingerprint(with_train(list(labels)))
    assert task_fingerprint(with_train(edited)).data != task_fingerprint(with_train(labels)).data

    # Past FULL_HASH_MAX_ITEMS: the length and evenly spaced items (first and last included).
    monkeypatch.setattr(fp_module, "FULL_HASH_MAX_ITEMS", 100)
    monkeypatch.setattr(fp_module, "SAMPLED_ITEMS", 10)
    last = list(labels)
    last[-1] = (last[-1] + 1) % 3
    assert task_fingerprint(with_train(last)).data != task_fingerprint(with_train(labels)).data
    shorter = dataclasses.replace(task, train=ListDataset(x, labels[:-1]))
    assert task_fingerprint(shorter).data != task_fingerprint(with_train(labels)).data
