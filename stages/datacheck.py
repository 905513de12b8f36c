"""Whole-split data checks, run once on the driver before any Ray work.

`check_task` (stages.tasks) looks at sample 0 of each split, which every Ray worker repeats
when it loads the task. What only shows further into a split is checked here, once, over every
sample of every split, through the same `DataLoader` batching the stages use (so a sample's `x`
may be a tensor, a tuple of tensors or a dict of tensors, and `y` is collated as training
collates it):

- labels: every `y` an integer class in `[0, num_classes)` (a label out of range fails
  training with an IndexError inside Ray, or, in the val/test split only, silently counts as a
  wrong prediction and skews every accuracy);
- inputs: every floating-point input finite as the model receives it (float64 cast to float32,
  so 1e300 is inf too): a NaN or inf in `x` makes the loss NaN, which training reported as a
  divergence no learning rate can fix.

Cost is one pass over the data: a `TensorDataset` is read in slices of `CHECK_BATCH` samples
(memory speed); another map-style dataset of up to `FULL_CHECK_MAX_ITEMS`
samples item by item, and beyond that `SAMPLED_ITEMS` evenly spaced samples, as the task
fingerprint samples it (`SplitCheck.sampled`; the error then says "N sampled of M").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from stages.errors import SqueezerayError
from stages.fingerprint import FULL_HASH_MAX_ITEMS, SAMPLED_ITEMS

FULL_CHECK_MAX_ITEMS = FULL_HASH_MAX_ITEMS  # beyond this (not a TensorDataset): sampled
CHECK_BATCH = 4096  # samples per slice of a TensorDataset
ITEM_BATCH = 256  # samples per DataLoader batch of another dataset
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitCheck:
    """What one split's pass found. Indices are the dataset's own (`dataset[i]`)."""

    split: str
    size: int  # len(dataset)
    checked: int  # samples read (== size unless sampled)
    bad_labels: int  # samples whose label is outside [0, num_classes)
    bad_label_example: int | None  # one such label value
    bad_label_index: int | None  # the first such sample
    non_finite: int  # samples with a NaN/inf in a floating-point input
    non_finite_index: int | None  # the first such sample

    @property
    def sampled(self) -> bool:
        return self.checked < self.size


def check_splits(task: Any, *, source: str) -> list[SplitCheck]:
    """Check every split of `task` (see the module docstring) and return what each pass read.
    Raises one SqueezerayError listing, per split, the count of labels out of range (with an
    example value and index) and of samples with non-finite inputs (with the first index),
    and the fix."""
    checks = [split_check(getattr(task, s), s, num_classes=task.num_classes) for s in SPLITS]
    problems = _label_problem(checks, task.num_classes, source) + _input_problem(checks, source)
    if problems:
        raise SqueezerayError("; ".join(problems))
    return checks


def split_check(dataset: Dataset[Any], split: str, *, num_classes: int) -> SplitCheck:
    """One pass over `dataset` (or its sample): labels and non-finite inputs counted."""
    size = len(dataset)  # type: ignore[arg-type]
    checked = bad = non_finite = 0
    example: int | None = None
    bad_index: int | None = None
    nan_index: int | None = None
    for index, x, y in _batches(dataset, size):
        checked += int(index.numel())
        labels = torch.as_tensor(y).reshape(-1)
        if not labels.is_floating_point() and labels.dtype != torch.bool:
            out = (labels < 0) | (labels >= num_classes)
            if bool(out.any()):
                bad += int(out.sum())
                first = int(out.nonzero()[0, 0])
                if bad_index is None:
                    example, bad_index = int(labels[first]), int(index[first])
        rows = non_finite_rows(x, int(index.numel()))
        if rows is not None and bool(rows.any()):
            non_finite += int(rows.sum())
            if nan_index is None:
                nan_index = int(index[int(rows.nonzero()[0, 0])])
    return SplitCheck(split, size, checked, bad, example, bad_index, non_finite, nan_index)


def _batches(dataset: Dataset[Any], size: int) -> Iterator[tuple[torch.Tensor, Any, Any]]:
    """(dataset indices, collated x, collated y) batches over the whole split or its sample."""
    if isinstance(dataset, TensorDataset):
        # TensorDataset indexes with a slice too: one view per batch, no per-sample collate.
        slices = [slice(i, min(i + CHECK_BATCH, size)) for i in range(0, size, CHECK_BATCH)]
        loader: Any = DataLoader(dataset, batch_size=None, sampler=slices)  # type: ignore[arg-type]
        for part, (x, y) in zip(slices, loader, strict=True):
            yield torch.arange(part.start, part.stop), x, y
        return
    if size <= FULL_CHECK_MAX_ITEMS:
        indices: Sequence[int] = range(size)
    else:
        spaced = np.unique(np.linspace(0, size - 1, SAMPLED_ITEMS).round().astype(np.int64))
        indices = [int(i) for i in spaced]
    loader = DataLoader(dataset, batch_size=ITEM_BATCH, sampler=indices)  # type: ignore[arg-type]
    start = 0
    for x, y in loader:
        n = len(torch.as_tensor(y).reshape(-1))
        yield torch.as_tensor(indices[start : start + n]), x, y
        start += n


def _tensors(x: Any) -> list[torch.Tensor]:
    """The tensors of a collated input: a tensor, a tuple/list or a dict of them."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for value in x.values() for t in _tensors(value)]
    if isinstance(x, (tuple, list)):
        return [t for value in x for t in _tensors(value)]
    return []


def non_finite_rows(x: Any, n: int) -> torch.Tensor | None:
    """(n,) bool: the samples of a batch with a NaN/inf in any floating-point input."""
    rows: torch.Tensor | None = None
    for t in _tensors(x):
        if not t.is_floating_point() or t.dim() == 0 or t.shape[0] != n:
            continue
        # as the model sees it: float64 becomes float32 (`stages.batches.as_inputs`), where
        # a value above 3.4e38 is inf
        t = t.float() if t.dtype == torch.float64 else t
        bad = ~torch.isfinite(t.reshape(n, -1)).all(dim=1)
        rows = bad if rows is None else rows | bad
    return rows


def _read(check: SplitCheck) -> str:
    """How many samples a pass read: "270", or "1024 sampled of 80000"."""
    return f"{check.checked} sampled of {check.size}" if check.sampled else str(check.checked)


def _label_problem(checks: list[SplitCheck], num_classes: int, source: str) -> list[str]:
    bad = [c for c in checks if c.bad_labels]
    if not bad:
        return []
    counts = ", ".join(
        f"{c.split}: {c.bad_labels} of {_read(c)} (e.g. {c.split}[{c.bad_label_index}] has "
        f"label {c.bad_label_example})"
        for c in bad
    )
    fine = [c.split for c in checks if not c.bad_labels]
    rest = f"; {', '.join(fine)}: none" if fine else ""
    return [
        f"task={source!r}: labels outside [0, {num_classes}) (num_classes={num_classes}) in "
        f"{counts}{rest}; labels are integer classes 0..{num_classes - 1} in every split: map "
        "them (e.g. y - 1 for labels counted from 1) or set num_classes to cover them"
    ]


def _input_problem(checks: list[SplitCheck], source: str) -> list[str]:
    bad = [c for c in checks if c.non_finite]
    if not bad:
        return []
    counts = ", ".join(
        f"{c.split}: {c.non_finite} of {_read(c)} samples (first {c.split}[{c.non_finite_index}])"
        for c in bad
    )
    return [
        f"task={source!r}: inputs with NaN or inf values in {counts}; training on them makes "
        "the loss NaN whatever the learning rate: drop or impute those samples (e.g. "
        "torch.nan_to_num, or the mean of the feature) before building the Task"
    ]


__all__ = ["SplitCheck", "check_splits", "non_finite_rows", "split_check"]
