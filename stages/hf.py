"""Hugging Face models in a few lines: a `Task` from a local `save_pretrained` directory.

`sequence_classification_task(checkpoint_dir, train=..., val=..., test=...)` builds a Task
whose teacher is `AutoModelForSequenceClassification.from_pretrained(checkpoint_dir)` (the
model as given: run it with `teacher.epochs: 0` to use it unchanged, or a few teacher epochs
to fine-tune it first), whose student is made from the teacher (`student=None`: the teacher
structurally pruned to `distill.student_ratio`, by whole heads), and whose samples are named
inputs (`({"input_ids": ..., "attention_mask": ...}, label)`, passed to `forward` by keyword;
`NamedTensorDataset` makes such a dataset from a tokenizer's output).
`image_classification_task` is the same for `AutoModelForImageClassification` and
`{"pixel_values": ...}` samples.

The tokenizer/processor files found in the directory (`tokenizer.json`, `vocab.txt`,
`preprocessor_config.json`, ...) become the task's `export_files`: `squeezeray export` copies
them beside the exported `save_pretrained` directory, so it loads like the original.

Nothing is downloaded: `from_pretrained` reads the local directory only (`local_files_only`).
transformers and safetensors are the optional extra `hf` (`pip install -c constraints/cpu.txt
-e ".[hf]"`), imported when a task is built; without them the helpers raise SqueezerayError
naming the extra.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from stages.errors import SqueezerayError
from stages.tasks import Metric, Task

HF_EXTRA = 'pip install -c constraints/cpu.txt -e ".[hf]"  (or pip install "squeezeray[hf]")'

# Files `save_pretrained` writes itself (the model's weights and config): not copied as
# tokenizer/processor files.
MODEL_FILES = ("config.json", "generation_config.json")
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def require_transformers(what: str) -> Any:
    """The `transformers` module; SqueezerayError naming the `hf` extra when it is missing."""
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise SqueezerayError(
            f"{what} needs the Hugging Face packages (transformers, safetensors), which are "
            f"not installed; install the extra: {HF_EXTRA}"
        ) from exc


class NamedTensorDataset(Dataset):
    """Samples `({name: tensor[i]}, labels[i])` from columns of equal length, e.g. a
    tokenizer's output: `NamedTensorDataset(tokenizer(texts, padding="max_length",
    truncation=True, return_tensors="pt"), labels)`.

    `inputs`: {name: (N, ...)} tensors (a `BatchEncoding` works: it is a mapping), the
    keyword arguments of the model's `forward`, in the order the ONNX export will list them;
    `labels`: (N,) integer classes. Raises SqueezerayError for empty or unequal columns.
    """

    def __init__(self, inputs: Mapping[str, Any], labels: Any) -> None:
        self.inputs = {str(k): torch.as_tensor(v) for k, v in inputs.items()}
        self.labels = torch.as_tensor(labels)
        lengths = {k: len(v) for k, v in self.inputs.items()}
        if not lengths or set(lengths.values()) != {len(self.labels)}:
            raise SqueezerayError(
                f"NamedTensorDataset: every input column and the labels must have the same "
                f"length; got {lengths or 'no inputs'} and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: v[i] for k, v in self.inputs.items()}, self.labels[i]


def export_files(checkpoint_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The tokenizer/processor files of a `save_pretrained` directory (absolute paths,
    sorted): every plain file but the config, generation config and weight files."""
    root = Path(checkpoint_dir)
    return tuple(
        str(p.resolve())
        for p in sorted(root.iterdir())
        if p.is_file()
        and p.name not in MODEL_FILES
        and not p.name.endswith(MODEL_SUFFIXES)
        and not p.name.endswith(".index.json")  # a sharded checkpoint's weight index
    )


def _checked_dir(checkpoint_dir: str | os.PathLike[str], what: str) -> Path:
    path = Path(checkpoint_dir).expanduser().resolve()
    if not path.is_dir():
        raise SqueezerayError(
            f"{what}: checkpoint_dir={os.fspath(checkpoint_dir)!r} is not a directory ({path}); "
            "give the directory model.save_pretrained(...) wrote (config.json + weights)"
        )
    if not (path / "config.json").is_file():
        raise SqueezerayError(
            f"{what}: checkpoint_dir={os.fspath(checkpoint_dir)!r} has no config.json; give "
            "the directory model.save_pretrained(...) wrote (config.json + weights)"
        )
    return path


def _load(auto_class: str, path: str) -> nn.Module:
    """`transformers.<auto_class>.from_pretrained(path)` from local files only, in float32
    and eval mode (the teacher as given)."""
    transformers = require_transformers(auto_class)
    with quiet_progress():  # the factory runs in every stage: no progress bar each time
        model: nn.Module = getattr(transformers, auto_class).from_pretrained(
            path, local_files_only=True, dtype=torch.float32
        )
    return model.eval()


@contextmanager
def quiet_progress() -> Iterator[None]:
    """transformers' progress bars (loading, writing shards) off for the block, then back as
    they were."""
    bars = require_transformers("quiet_progress").utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            bars.enable_progress_bar()


def _task(
    auto_class: str,
    checkpoint_dir: str | os.PathLike[str],
    *,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    name: str | None,
    student: Callable[[], nn.Module] | None,
    description: str,
    version: str | None,
    metric: Metric | None,
) -> Task:
    what = f"stages.hf task from {auto_class}"
    transformers = require_transformers(what)
    path = _checked_dir(checkpoint_dir, what)
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    return Task(
        name=name or path.name,
        teacher=functools.partial(_load, auto_class, str(path)),
        student=student,
        train=train,
        val=val,
        test=test,
        num_classes=int(config.num_labels),
        description=description
        or f"{type(config).__name__.removesuffix('Config')} from {path} ({auto_class})",
        version=version,
        metric=metric,
        export_files=export_files(path),
    )


def sequence_classification_task(
    checkpoint_dir: str | os.PathLike[str],
    *,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    name: str | None = None,
    student: Callable[[], nn.Module] | None = None,
    description: str = "",
    version: str | None = None,
    metric: Metric | None = None,
) -> Task:
    """A Task for a text classifier saved with `save_pretrained` in `checkpoint_dir`.

    teacher: `AutoModelForSequenceClassification.from_pretrained(checkpoint_dir)` (local
    files only, float32, eval mode), the model as given; `num_classes` is its
    `config.num_labels`. student: None (made from the teacher by `distill.student_ratio`), or
    a factory of your own. train/val/test: datasets of `({"input_ids": (L,) int64,
    "attention_mask": (L,) int64, ...}, label)` samples, e.g. `NamedTensorDataset`; the keys
    are `forward`'s keyword arguments. name: the task's name (default: the directory's name).
    The directory's tokenizer files become the task's `export_files`.

    Raises SqueezerayError when transformers is not installed (naming the `hf` extra) or the
    directory has no config.json.
    """
    return _task(
        "AutoModelForSequenceClassification",
        checkpoint_dir,
        train=train,
        val=val,
        test=test,
        name=name,
        student=student,
        description=description,
        version=version,
        metric=metric,
    )


def image_classification_task(
    checkpoint_dir: str | os.PathLike[str],
    *,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    name: str | None = None,
    student: Callable[[], nn.Module] | None = None,
    description: str = "",
    version: str | None = None,
    metric: Metric | None = None,
) -> Task:
    """As `sequence_classification_task`, for `AutoModelForImageClassification` (ViT, ...):
    samples `({"pixel_values": (C, H, W) float32}, label)`; the directory's image processor
    file (`preprocessor_config.json`) becomes an export file."""
    return _task(
        "AutoModelForImageClassification",
        checkpoint_dir,
        train=train,
        val=val,
        test=test,
        name=name,
        student=student,
        description=description,
        version=version,
        metric=metric,
    )


__all__ = [
    "HF_EXTRA",
    "NamedTensorDataset",
    "export_files",
    "image_classification_task",
    "require_transformers",
    "sequence_classification_task",
]
