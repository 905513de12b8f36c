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
    default_collate,
    default_convert,
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
            collate_fn=_collated,
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
        collate_fn=_converted,
    )


def class_targets(y: Any) -> Any:
    """A batch's labels as cross-entropy takes them: int64 classes of shape (B,). Integer
    labels of another dtype (int32 tensors, numpy int32 columns) become int64 and a (B, 1)
    column (a sample's label written `torch.tensor([label])`) becomes (B,): both crashed every
    training step ("expected target dtype to be Long", "0D or 1D target tensor expected").
    Anything else is left as it is (float labels are refused before a sweep)."""
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        return y
    if y.dim() == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    return y if y.dtype == torch.int64 else y.long()


def _with_targets(batch: Any) -> Any:
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], class_targets(batch[1])
    return batch


def _collated(samples: list[Any]) -> Any:
    """`default_collate` of a batch of samples, its labels as `class_targets`."""
    return _with_targets(default_collate(samples))


def _converted(batch: Any) -> Any:
    """A whole batch read at once (`default_convert`, as DataLoader(batch_size=None) does),
    its labels as `class_targets`."""
    return _with_targets(default_convert(batch))


__all__ = ["batch_indexed", "batches", "class_targets"]
