"""A task's fingerprint: what a user can change without changing squeezeray's code.

Stage keys hash the stages' source and library versions
(`orchestrator.engine.keys.code_version`) and the task's import path; a user who edits their
model or their data keeps both. The fingerprint adds what the stages actually read from the task:

- `teacher` / `student`: the architecture (`repr` of the module tree, every state_dict entry's
  name, shape and dtype) and a sha256 of the weights the factory returns when built the way the
  stages build it (`torch.manual_seed(seed)` first). Random initial weights hash the same in
  every process; a pretrained teacher's given weights are part of it, so new weights are new
  results.
- `data`: a sha256 of the train, val and test splits' contents, or `Task.version` when the user
  sets one (then the user says when the data changed). A `TensorDataset` is hashed whole (its
  tensors' bytes, memory speed); another map-style dataset item by item up to
  `FULL_HASH_MAX_ITEMS` items, and beyond that from its length and `SAMPLED_ITEMS` items at
  evenly spaced indices (the first and last included): cheap, and sufficient to notice a new
  or reshuffled dataset, but an edit between sampled items goes unseen; set `Task.version` for
  such datasets.

Cost on the digits task: about 5 ms (two model builds and 1,797 small tensors).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from stages.tasks import Task

FULL_HASH_MAX_ITEMS = 50_000
SAMPLED_ITEMS = 1024
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs carry addresses that differ per run


@dataclass(frozen=True)
class TaskFingerprint:
    """Short sha256 hex digests (16 chars each) of what the stages read from a task."""

    teacher: str  # teacher architecture + its factory's weights
    student: str  # student architecture + its factory's weights
    data: str  # the three splits' contents, or "version:<Task.version>"
    # bytes of the larger factory model's state_dict as built (float32: 4 per parameter); not
    # part of the identity (`as_dict`): what the sweep sizes its memory requests with
    model_bytes: int = field(default=0, compare=False)

    def as_dict(self) -> dict[str, str]:
        return {"teacher": self.teacher, "student": self.student, "data": self.data}


def task_fingerprint(task: Task, *, seed: int = 0) -> TaskFingerprint:
    """The fingerprint of `task` (see the module docstring); the global torch RNG is left as
    it was. Models are built on the CPU with `seed` (the stages' training seed)."""
    teacher, teacher_bytes = _model_digest(task, "teacher", seed)
    student, student_bytes = _student_digest(task, seed)
    return TaskFingerprint(
        teacher=teacher,
        student=student,
        data=_data_part(task),
        model_bytes=max(teacher_bytes, student_bytes),
    )


PARTS = ("teacher", "student", "data")


def fingerprint_part(task: Task, part: str, *, seed: int = 0) -> str:
    """One part of `task_fingerprint` (`TaskFingerprint.as_dict()[part]`), computed alone: a
    worker that checks only the student and the data builds no teacher.

    Raises ValueError for a part not in `PARTS`."""
    if part == "teacher":
        return _model_digest(task, "teacher", seed)[0]
    if part == "student":
        return _student_digest(task, seed)[0]
    if part == "data":
        return _data_part(task)
    raise ValueError(f"fingerprint part {part!r} is not one of {', '.join(PARTS)}")


def _student_digest(task: Task, seed: int) -> tuple[str, int]:
    # a task without a student factory (the student made from the teacher) has none
    return _model_digest(task, "student", seed) if task.student is not None else ("none", 0)


def _data_part(task: Task) -> str:
    version = getattr(task, "version", None)
    return f"version:{version}" if version is not None else _data_digest(task)


def _model_digest(task: Task, arch: str, seed: int) -> tuple[str, int]:
    """(digest, state_dict bytes) of the `arch` model as the stages build it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build(arch)
    nbytes = sum(
        t.numel() * t.element_size()
        for t in model.state_dict().values()
        if isinstance(t, torch.Tensor)
    )
    return model_digest(model), nbytes


def model_digest(model: nn.Module) -> str:
    """sha256 (16 hex chars) of a module's structure, state_dict names/shapes/dtypes and
    weights."""
    h = hashlib.sha256()
    h.update(_ADDRESS.sub("", repr(model)).encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        _feed(h, value)
    return h.hexdigest()[:16]


def _data_digest(task: Task) -> str:
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        h.update(split.encode())
        dataset_digest(getattr(task, split), h)
    return h.hexdigest()[:16]


def dataset_digest(dataset: Dataset[Any], h: Any) -> None:
    """Feed a dataset's contents (or its sampled digest, see the module docstring) into `h`."""
    if isinstance(dataset, TensorDataset):
        h.update(b"tensors")
        for tensor in dataset.tensors:
            _feed(h, tensor)
        return
    n = len(dataset)  # type: ignore[arg-type]
    h.update(f"len={n}".encode())
    if n <= FULL_HASH_MAX_ITEMS:
        indices: Any = range(n)
    else:
        indices = np.unique(np.linspace(0, n - 1, SAMPLED_ITEMS).round().astype(np.int64))
    for i in indices:
        _feed(h, dataset[int(i)])


def _feed(h: Any, value: Any) -> None:
    """Hash a value: tensors and arrays by dtype, shape and bytes; containers recursively."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_quantized:
            t = t.dequantize()
        t = t.cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():  # the tensor's own memory, not a bytes copy of it
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"A{a.dtype}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8) if a.dtype != object else repr(a.tolist()).encode())
    elif isinstance(value, tuple | list):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, Mapping):
        h.update(f"M{len(value)}".encode())
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            _feed(h, value[key])
    elif isinstance(value, bytes | bytearray):
        h.update(b"B" + bytes(value))
    else:  # numbers, strings, None; other objects by their address-free repr
        h.update(f"{type(value).__name__}:{_ADDRESS.sub('', repr(value))}".encode())
