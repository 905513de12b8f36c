"""Built-in tasks and user tasks by import path, with the errors a user sees."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.tasks import BUILTIN_TASKS, clear_task_cache, load_task


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_tasks(name: str) -> None:
    task = load_task(name)
    sizes = [len(task.train), len(task.val), len(task.test)]
    assert all(n > 0 for n in sizes)
    _x, y = task.train[0]
    assert 0 <= int(y) < task.num_classes
    for arch in ("teacher", "student"):
        out = task.build(arch)(task.example_input(3))
        assert out.shape == (3, task.num_classes)
    teacher_params = sum(p.numel() for p in task.teacher().parameters())
    student_params = sum(p.numel() for p in task.student().parameters())
    assert student_params < teacher_params


def test_digits_split_is_stratified_and_fixed() -> None:
    task = load_task("digits")
    assert (len(task.train), len(task.val), len(task.test)) == (1257, 269, 271)
    labels = torch.stack([task.test[i][1] for i in range(len(task.test))])
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 25  # every class present in proportion (stratified)
    cnn = load_task("digits-cnn")
    assert cnn.example_input(1).shape == (1, 1, 8, 8)
    assert torch.equal(cnn.test[0][0].flatten(), task.test[0][0])  # same images, same split


@pytest.fixture()
def user_modules(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            from stages.tasks import Task

            def _data(n_features):
                x = torch.randn(30, n_features)
                return TensorDataset(x, torch.arange(30) % 3)

            def good():
                ds = _data(4)
                return Task(name="good", teacher=lambda: nn.Linear(4, 3),
                            student=lambda: nn.Linear(4, 3), train=ds, val=ds, test=ds,
                            num_classes=3)

            def wrong_shape():
                ds = _data(4)
                return Task(name="bad", teacher=lambda: nn.Linear(5, 3),
                            student=lambda: nn.Linear(4, 3), train=ds, val=ds, test=ds,
                            num_classes=3)

            def wrong_classes():
                ds = _data(4)
                return Task(name="bad", teacher=lambda: nn.Linear(4, 2),
                            student=lambda: nn.Linear(4, 2), train=ds, val=ds, test=ds,
                            num_classes=3)

            def not_a_task():
                return {"name": "nope"}

            NOT_CALLABLE = 3
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("my_tasks", None)
    clear_task_cache()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("my_tasks", None)
    clear_task_cache()


def test_user_task_loads(user_modules: Path) -> None:
    task = load_task("my_tasks:good")
    assert task.name == "good" and task.num_classes == 3


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("my_tasks:wrong_shape", "teacher model fails on one test sample, called as model(*x)"),
        ("my_tasks:wrong_shape", "with x = [(1, 4) float32]: RuntimeError: mat1 and mat2"),
        ("my_tasks:wrong_classes", "expected float (1, 3) (num_classes=3)"),
        ("my_tasks:not_a_task", "returned dict, not a stages.Task"),
        ("my_tasks:NOT_CALLABLE", "is not callable"),
        ("my_tasks:missing", "has no attribute 'missing'"),
        ("no_such_pkg.mod:make", "cannot import module 'no_such_pkg.mod'"),
        ("my_tasks:", "is not an import path"),
        ("nosuchtask", "accepted: blobs, digits, digits-cnn"),
    ],
)
def test_user_task_errors(user_modules: Path, path: str, message: str) -> None:
    with pytest.raises(SqueezerayError) as info:
        load_task(path)
    assert message in str(info.value)
    assert repr(path) in str(info.value)


def test_corrupt_checkpoint_bytes_are_rejected() -> None:
    ckpt = ModelCheckpoint(task="digits", state_dict={"w": torch.ones(3)})
    data = ckpt.to_bytes()
    assert ModelCheckpoint.from_bytes(data).state_dict["w"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(SqueezerayError, match="not a readable squeezeray checkpoint"):
        ModelCheckpoint.from_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("metric", "match"),
    [
        (("F1", "max"), "name 'F1' is not accepted"),
        (("val_f1", "max"), "not starting with 'val_'"),
        (("accuracy", "max"), "'accuracy' is a built-in column"),
        (("f1", "up"), "direction='up'; accepted: max, min"),
    ],
)
def test_bad_task_metric_is_refused(metric: tuple[str, str], match: str) -> None:
    import dataclasses

    from stages.tasks import Metric, check_task

    task = dataclasses.replace(
        load_task("blobs"), metric=Metric(metric[0], lambda lo, t: 0.5, metric[1])
    )
    with pytest.raises(SqueezerayError, match=match):
        check_task(task, source="mine")


def test_failing_task_metric_names_its_call() -> None:
    import dataclasses

    from stages.tasks import Metric, check_task

    def broken(logits, targets):  # type: ignore[no-untyped-def]
        raise ValueError("boom")

    task = dataclasses.replace(load_task("blobs"), metric=Metric("f1", broken))
    with pytest.raises(SqueezerayError, match=r"metric 'f1' fails .*fn\(logits, targets\).*boom"):
        check_task(task, source="mine")
    nan = dataclasses.replace(load_task("blobs"), metric=Metric("f1", lambda lo, t: float("nan")))
    with pytest.raises(SqueezerayError, match="finite"):
        check_task(nan, source="mine")
