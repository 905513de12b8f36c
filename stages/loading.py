"""Batches from a task's datasets: the one DataLoader rule of every stage and measurement.

A dataset of whole tensors (`torch.utils.data.TensorDataset`, `stages.hf.NamedTensorDataset`)
is read a batch at a time: `dataset[indices]` is one index per tensor, which PyTorch's
DataLoader takes with `batch_size=None` and a batch sampler as its sampler. Any other dataset
(a user's own class, a stream) goes through the usual per-sample fetch and collate. The
batches are the same either way, in the same order: a shuffled loader draws its order from the
same `RandomSampler(generator)` + `BatchSampler` that `DataLoader(shuffle=True)` builds, so
training is bit-identical; only the per-sample Python call and stack are gone (at 256 features
and batch 256 they cost 2-4 times the forward pass of a 10M-parameter MLP).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from stages.hf import NamedTensorDataset

# Exactly these types: a subclass may override __getitem__ for one sample (a transform).
_BATCH_INDEXED = (TensorDataset, NamedTensorDataset)


def batch_indexed(dataset: Dataset[Any]) -> bool:
    """Whether `dataset[indices]` gives a whole collated batch (its tensors indexed at once)."""
    return type(dataset) in _BATCH_INDEXED


def batches(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader[Any]:
    """A DataLoader of `(x, y)` batches of `batch_size` samples (the last one smaller unless
    `drop_last`), in order or shuffled by `generator`, as `DataLoader(dataset, batch_size,
    shuffle, generator, drop_last)` gives them. `num_workers`: DataLoader worker processes
    that read the samples (`Task.num_workers`), for a dataset whose `__getitem__` does real
    work; a tensor dataset is read in this process (one index per batch needs no workers)."""
    if not batch_indexed(dataset):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            num_workers=num_workers,
        )
    order: Any = (
        RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
        if shuffle
        else SequentialSampler(dataset)  # type: ignore[arg-type]
    )
    # The generator goes to the DataLoader too: each iteration draws its base seed from it
    # before the sampler draws the order, as in the per-sample DataLoader.
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=BatchSampler(order, batch_size, drop_last=drop_last),
        generator=generator,
    )


__all__ = ["batch_indexed", "batches"]
