"""The one DataLoader rule: tensor datasets read a batch at a time, with the same batches in
the same order as PyTorch's per-sample DataLoader (so training is unchanged)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from stages.hf import NamedTensorDataset
from stages.loading import batch_indexed, batches


class _CountingTensors(TensorDataset):
    """A TensorDataset subclass that counts its __getitem__ calls (a user's subclass may
    transform one sample in __getitem__, so it keeps the per-sample path)."""

    calls = 0

    def __getitem__(self, index: Any) -> Any:
        type(self).calls += 1
        return super().__getitem__(index)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a.dtype == b.dtype and torch.equal(a, b))


def _datasets() -> list[Dataset[Any]]:
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(37, 5, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 100, (37, 7), generator=g)
    y = torch.randint(0, 3, (37,), generator=g)
    return [
        TensorDataset(x64, y),
        TensorDataset(x64.float(), ids, y),  # two model inputs
        NamedTensorDataset({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, y),
    ]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_tensor_datasets_give_the_per_sample_loaders_batches_in_its_order(
    shuffle: bool, drop_last: bool, index: int
) -> None:
    dataset = _datasets()[index]
    assert batch_indexed(dataset)
    ours_loader = batches(
        dataset,
        batch_size=8,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(3),
        drop_last=drop_last,
    )
    theirs_loader = DataLoader(
        dataset,
        batch_size=8,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(3),
        drop_last=drop_last,
    )
    # two epochs of each: a training loop iterates its loader once per epoch
    torch.manual_seed(5)
    ours = list(ours_loader) + list(ours_loader)
    after_ours = torch.rand(1)
    torch.manual_seed(5)
    theirs = list(theirs_loader) + list(theirs_loader)
    assert torch.equal(after_ours, torch.rand(1))  # the global RNG advanced alike
    assert len(ours) == len(theirs) == 2 * (4 if drop_last else 5)
    assert all(_same(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_tensor_dataset_is_read_once_per_batch_and_a_subclass_per_sample() -> None:
    x, y = torch.randn(20, 3), torch.zeros(20, dtype=torch.long)
    _CountingTensors.calls = 0
    sub = _CountingTensors(x, y)
    assert not batch_indexed(sub)
    assert sum(len(b[1]) for b in batches(sub, batch_size=8)) == 20
    assert _CountingTensors.calls == 20  # the user's __getitem__ sees every sample

    reads: list[int] = []
    plain = TensorDataset(x, y)
    real = TensorDataset.__getitem__

    def counted(self: TensorDataset, index: Any) -> Any:
        reads.append(len(index) if isinstance(index, list) else 1)
        return real(self, index)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TensorDataset, "__getitem__", counted)
        assert [len(b[1]) for b in batches(plain, batch_size=8)] == [8, 8, 4]
    assert reads == [8, 8, 4]  # one read per batch


class _PidDataset(Dataset[Any]):
    """A user's dataset that does work per sample; it records which process read it."""

    def __init__(self, n: int, pids: Any) -> None:
        self.n, self.pids = n, pids
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import os

        self.pids.put(os.getpid())
        return self.x[i], self.y[i]


def test_a_tasks_num_workers_reads_its_datasets_in_worker_processes() -> None:
    """Task.num_workers reaches the DataLoaders of training and evaluation (finetune runs
    both); 0 reads in this process; a bad value is refused with the rule."""
    import multiprocessing
    import os
    from dataclasses import replace

    from stages.base import StageInput
    from stages.errors import SqueezerayError
    from stages.finetune import FinetuneParams, finetune
    from stages.models import MLP
    from stages.tasks import Task, check_task
    from stages.teacher import TeacherParams, train_teacher

    pids = multiprocessing.get_context("fork").Manager().Queue()
    data = _PidDataset(40, pids)
    task = Task(
        name="pids",
        teacher=lambda: MLP(4, [8], 2),
        student=None,
        train=data,
        val=data,
        test=data,
        num_classes=2,
    )
    teacher = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=0))

    def readers(t: Task) -> set[int]:
        inp = StageInput(task=t, parent=teacher.checkpoint, teacher=teacher.checkpoint)
        finetune(inp, FinetuneParams(epochs=1))
        seen = set()
        while not pids.empty():
            seen.add(pids.get())
        return seen

    assert readers(task) == {os.getpid()}
    assert os.getpid() not in readers(replace(task, num_workers=1))
    with pytest.raises(SqueezerayError, match=r"num_workers=-1; accepted: an integer >= 0"):
        check_task(replace(task, num_workers=-1), source="pids")
