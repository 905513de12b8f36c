"""Whole-split data checks (issue 21 items 6 and 8): every label of every split in range, every
floating-point input finite, checked before any Ray work, with counts per split and indices.

Also importable as user tasks (`tests.stages.test_datacheck:<factory>`) for the CLI tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import stages.datacheck as datacheck
from stages.datacheck import check_splits, split_check
from stages.errors import SqueezerayError
from stages.tasks import Task


def _data(n: int, *, offset: int = 0, nan_at: tuple[int, ...] = ()) -> TensorDataset:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
    for i in nan_at:
        x[i, 2] = float("nan")
    return TensorDataset(x, torch.arange(n) % 3 + offset)


def _task(train: Dataset, val: Dataset, test: Dataset) -> Task:
    return Task("t", lambda: nn.Linear(4, 3), lambda: nn.Linear(4, 3), train, val, test, 3)


def one_based_test_labels() -> Task:
    """The reported case: labels 1..3 (counted from 1) in the test split only; sample 0 of
    every split is in range, so the old sample-0 check passed it."""
    test = _data(30)
    y = test.tensors[1].clone()
    y[1:] = y[1:] + 1  # test[0] keeps label 0
    return _task(_data(60), _data(30), TensorDataset(test.tensors[0], y))


def nan_inputs() -> Task:
    """NaN in two training samples (not sample 0)."""
    return _task(_data(60, nan_at=(17, 41)), _data(30), _data(30))


def test_one_based_labels_in_the_test_split_only_are_counted() -> None:
    with pytest.raises(SqueezerayError) as info:
        check_splits(one_based_test_labels(), source="t")
    message = str(info.value)
    # 1-based labels 1..3: only the 3s are outside [0, 3), one in three of test[1:]
    assert "labels outside [0, 3) (num_classes=3) in test: 10 of 30" in message, message
    assert "e.g. test[2] has label 3" in message
    assert "train, val: none" in message
    assert "y - 1 for labels counted from 1" in message


def test_bad_labels_in_every_split_are_counted_per_split() -> None:
    task = _task(_data(60, offset=-1), _data(30, offset=1), _data(30))
    with pytest.raises(SqueezerayError) as info:
        check_splits(task, source="t")
    message = str(info.value)
    assert "train: 20 of 60 (e.g. train[0] has label -1)" in message, message
    assert "val: 10 of 30 (e.g. val[2] has label 3)" in message
    assert "test: none" in message


def test_nan_inputs_are_named_with_split_count_and_first_index() -> None:
    with pytest.raises(SqueezerayError) as info:
        check_splits(nan_inputs(), source="t")
    message = str(info.value)
    assert "NaN or inf values in train: 2 of 60 samples (first train[17])" in message, message
    assert "torch.nan_to_num" in message
    assert "learning rate" not in message.split(";")[0]


def test_float64_inputs_too_large_for_float32_are_inf_to_the_model() -> None:
    x = torch.zeros(10, 2, dtype=torch.float64)
    x[6, 0] = 1e300  # finite in float64, inf once cast to float32 for the model
    check = split_check(TensorDataset(x, torch.zeros(10, dtype=torch.long)), "val", num_classes=3)
    assert (check.non_finite, check.non_finite_index) == (1, 6)


def test_good_data_passes_and_every_sample_is_read() -> None:
    checks = check_splits(_task(_data(60), _data(30), _data(30)), source="t")
    assert [(c.split, c.checked, c.bad_labels, c.non_finite) for c in checks] == [
        ("train", 60, 0, 0),
        ("val", 30, 0, 0),
        ("test", 30, 0, 0),
    ]


class _Samples(Dataset):
    """A user's map-style dataset: x a tensor, a tuple or a dict of tensors, y a Python int."""

    def __init__(self, n: int, form: str, *, nan_at: int = -1, label_shift: int = 0) -> None:
        self.n, self.form, self.nan_at, self.label_shift = n, form, nan_at, label_shift

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[object, int]:
        a = torch.full((3,), float(i))
        if i == self.nan_at:
            a[1] = float("inf")
        ids = torch.arange(5) + i  # integer inputs are never "non-finite"
        x: object = {"tensor": a, "tuple": (ids, a), "dict": {"input_ids": ids, "values": a}}[
            self.form
        ]
        return x, i % 3 + (self.label_shift if i >= 5 else 0)


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_tuple_and_dict_inputs_are_checked_through_the_dataloader(form: str) -> None:
    check = split_check(_Samples(300, form, nan_at=270, label_shift=3), "val", num_classes=3)
    assert (check.checked, check.non_finite, check.non_finite_index) == (300, 1, 270)
    assert (check.bad_labels, check.bad_label_index, check.bad_label_example) == (295, 5, 5)


def test_a_large_dataset_is_sampled_and_the_message_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(datacheck, "FULL_CHECK_MAX_ITEMS", 100)
    monkeypatch.setattr(datacheck, "SAMPLED_ITEMS", 11)
    check = split_check(_Samples(1001, "tensor", nan_at=500), "train", num_classes=3)
    # 11 evenly spaced samples: 0, 100, ..., 1000 (500 among them)
    assert (check.size, check.checked, check.sampled) == (1001, 11, True)
    assert (check.non_finite, check.non_finite_index) == (1, 500)
    task = _task(_Samples(1001, "tensor", nan_at=500), _data(30), _data(30))
    with pytest.raises(SqueezerayError, match=r"train: 1 of 11 sampled of 1001 samples"):
        check_splits(task, source="t")
