"""The Task contract (how a model and its data enter squeezeray) and the built-in tasks."""

from __future__ import annotations

import functools
import importlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from stages.batches import (
    INPUT_RULE,
    OUTPUT_RULE,
    Inputs,
    call,
    input_names,
    logits_of,
    stack_samples,
    tensors,
)
from stages.conv1d import linear_form
from stages.errors import SqueezerayError
from stages.models import MLP, ConvNet

DATA_SEED = 0  # fixed: every process (every Ray worker) must see the same split
# Task.eval_batch_size's default: the batches accuracy and task metrics are measured in.
DEFAULT_EVAL_BATCH_SIZE = 256


# Result columns a task metric may not take (orchestrator.store.schema's own metric columns).
RESERVED_METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "size_bytes",
    "params_total",
    "params_nonzero",
    "quantized_fraction",
    "latency_ms",
    "latency_ms_p90",
    "latency_ms_sweep",
    "latency_ms_sweep_p90",
    "latency_ms_final",
    "latency_ms_final_p90",
    "speedup",
    "wall_s",
)
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Metric:
    """A task's own quality metric, e.g. macro F1 for imbalanced classes.

    `fn(logits, targets) -> float` gets a whole split at once: logits (N, num_classes) float,
    targets (N,) int64 (so it can compute per-class statistics). squeezeray records it for
    every trial as two results columns, `test_<name>` (test split, reported) and `val_<name>`
    (validation split, which objectives, constraints, fronts and --pick use), like
    `test_accuracy`/`val_accuracy`; the bare `<name>` is refused as ambiguous, as `accuracy`.
    `name`: lower-case letters, digits and `_`, not a built-in column; `direction`: max|min.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float]
    direction: str = "max"

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        return float(self.fn(logits, targets))


def check_metric(metric: Metric, *, source: str) -> None:
    """Fail early, naming the fix, when a task's metric cannot be recorded."""
    where = f"task={source!r}: metric"
    if not isinstance(metric, Metric):
        raise SqueezerayError(
            f"{where} is a {type(metric).__name__}; accepted: stages.Metric(name, fn, direction)"
        )
    if not _METRIC_NAME.fullmatch(metric.name) or metric.name.startswith(("val_", "test_")):
        raise SqueezerayError(
            f"{where} name {metric.name!r} is not accepted; accepted: lower-case letters, digits "
            "and '_', starting with a letter, not starting with 'val_' or 'test_' (those "
            "prefixes name the split's column), e.g. 'f1_macro'"
        )
    if metric.name in RESERVED_METRIC_NAMES:
        raise SqueezerayError(
            f"{where} name {metric.name!r} is a built-in column; choose another name"
        )
    if metric.direction not in ("max", "min"):
        raise SqueezerayError(
            f"{where} {metric.name!r} direction={metric.direction!r}; accepted: max, min"
        )
    if not callable(metric.fn):
        raise SqueezerayError(f"{where} {metric.name!r}: fn is not callable")


@dataclass(frozen=True)
class Task:
    """A model family plus its data.

    `teacher` builds the teacher: a fresh module (the `teacher` stage trains it), or a trained
    one, e.g. loading the user's state dict with `weights_only=True` (`teacher.epochs: 0` uses
    it as given). `student` builds the fresh, smaller module distillation trains; `None` makes
    the student from the teacher (the teacher structurally pruned to the width ratio
    `distill.student_ratio`, then distilled). Datasets yield `(x, y)`: `x` a tensor, a tuple of
    tensors (positional model arguments) or a dict of tensors (keyword arguments, e.g.
    `input_ids`, `attention_mask`: `model(**x)`), `y` an integer class in `[0, num_classes)`.
    `metric`: an optional quality metric of the task's own (`Metric`, e.g. macro F1), recorded
    beside accuracy. `eval_batch_size`: the batch size every accuracy and task metric of a row
    is measured at (validation and test splits, in the trial's runtime, in order, unshuffled);
    int8 modes that quantize activations per batch (dynamic_int8, onnx_int8) score slightly
    differently at other batch sizes, so rows and model cards record it. `num_workers`:
    DataLoader worker processes reading the datasets in training and evaluation (default 0).
    """

    name: str
    teacher: Callable[[], nn.Module]
    student: Callable[[], nn.Module] | None
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    description: str = field(default="", compare=False)
    # Names the data's version for stage keys instead of a hash of the datasets' contents
    # (stages.fingerprint): set it for large datasets whose sampled digest could miss an edit,
    # and change it whenever the data changes.
    version: str | None = field(default=None, compare=False)
    metric: Metric | None = field(default=None, compare=False)  # the task's own quality metric
    # Files copied beside a Hugging Face export (`save_pretrained` directory) of a trial's
    # model: the tokenizer/processor files the model is used with (absolute paths).
    # `stages.hf` tasks fill it from their checkpoint directory.
    export_files: tuple[str, ...] = field(default=(), compare=False)
    eval_batch_size: int = field(default=DEFAULT_EVAL_BATCH_SIZE, compare=False)
    # DataLoader worker processes that read the datasets in training and evaluation
    # (`stages.loading.batches`): 0 reads them in the stage's own process. More helps a dataset
    # whose __getitem__ does real work (decoding, tokenising); a stage task runs on
    # --cpus-per-trial CPUs, so more workers than that only compete with it.
    num_workers: int = field(default=0, compare=False)

    def example_input(self, batch_size: int = 1) -> Inputs:
        """A real input batch from the test split: a tensor (batch_size, *input_shape), a
        tuple of such tensors for a model with several inputs, or a dict of them for named
        inputs; dtypes as in `stages.batches.as_inputs` (int64 ids unchanged, other floats ->
        float32)."""
        n = min(batch_size, len(self.test))  # type: ignore[arg-type]
        return stack_samples([self.test[i % n][0] for i in range(batch_size)])

    def build(self, arch: str, *, prepare: Callable[[nn.Module], None] | None = None) -> nn.Module:
        """A fresh `teacher` or `student` module in the form every stage sees.

        That is the factory's module with each transformers `Conv1D` swapped for the
        equivalent `nn.Linear` (`stages.conv1d.linear_form`; exact, state_dict keys kept).
        `prepare(module)` runs on the factory's module before the swap, e.g. to load weights
        saved from the user's own (Conv1D) model.
        """
        if arch == "teacher":
            model = self.teacher()
        elif arch == "student":
            if self.student is None:
                raise SqueezerayError(
                    f"task {self.name!r} has no student factory (student=None): its student is "
                    "made from the teacher by the distill stage (distill.student_ratio)"
                )
            model = self.student()
        else:
            raise SqueezerayError(f"arch={arch!r} is not a model role; accepted: teacher, student")
        if prepare is not None:
            prepare(model)
        if isinstance(model, nn.Module):  # check_task reports anything else
            linear_form(model)
        return model


# -- built-in tasks -----------------------------------------------------------------------


def _split(
    x: torch.Tensor, y: torch.Tensor, *, train: float = 0.7, val: float = 0.15
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Stratified train/val/test split with a fixed seed."""
    from sklearn.model_selection import train_test_split

    idx = list(range(len(y)))
    idx_train, idx_rest = train_test_split(
        idx, train_size=train, stratify=y.numpy(), random_state=DATA_SEED
    )
    val_share = val / (1.0 - train)
    idx_val, idx_test = train_test_split(
        idx_rest, train_size=val_share, stratify=y[idx_rest].numpy(), random_state=DATA_SEED
    )
    return tuple(  # type: ignore[return-value]
        TensorDataset(x[i], y[i]) for i in (idx_train, idx_val, idx_test)
    )


def make_blobs(n_per_class: int = 600, n_classes: int = 3, std: float = 0.9) -> Task:
    """Seed 000: Gaussian blobs centred on a circle of radius 5, one per class. x: (2,)."""
    g = torch.Generator().manual_seed(DATA_SEED)
    xs, ys = [], []
    for k in range(n_classes):
        theta = 2 * math.pi * k / n_classes
        centre = torch.tensor([5.0 * math.cos(theta), 5.0 * math.sin(theta)])
        xs.append(torch.randn(n_per_class, 2, generator=g) * std + centre)
        ys.append(torch.full((n_per_class,), k, dtype=torch.long))
    train, val, test = _split(torch.cat(xs), torch.cat(ys))
    return Task(
        name="blobs",
        teacher=lambda: MLP(2, [128, 128, 64], n_classes),
        student=lambda: MLP(2, [64, 32], n_classes),
        train=train,
        val=val,
        test=test,
        num_classes=n_classes,
        description="2-D Gaussian blobs (seed 000); teacher MLP [128,128,64], student [64,32]",
    )


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1797 images, shipped in the wheel), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


def make_digits() -> Task:
    """Digits as 64-d vectors; teacher MLP [256,128], student [64,32]."""
    x, y = _digits_tensors()
    train, val, test = _split(x, y)
    return Task(
        name="digits",
        teacher=lambda: MLP(64, [256, 128], 10),
        student=lambda: MLP(64, [64, 32], 10),
        train=train,
        val=val,
        test=test,
        num_classes=10,
        description="scikit-learn 8x8 digits as vectors; teacher MLP [256,128], student [64,32]",
    )


def make_digits_cnn() -> Task:
    """Digits as 1x8x8 images; conv teacher (32, 64 channels) and a narrower student (8, 16)."""
    x, y = _digits_tensors()
    train, val, test = _split(x.reshape(-1, 1, 8, 8), y)
    return Task(
        name="digits-cnn",
        teacher=lambda: ConvNet(1, [32, 64], 128, 10),
        student=lambda: ConvNet(1, [8, 16], 32, 10),
        train=train,
        val=val,
        test=test,
        num_classes=10,
        description="digits as 1x8x8 images; conv teacher [32,64]+128, student [8,16]+32",
    )


BUILTIN_TASKS: dict[str, Callable[[], Task]] = {
    "blobs": make_blobs,
    "digits": make_digits,
    "digits-cnn": make_digits_cnn,
}


# -- loading ------------------------------------------------------------------------------


def load_task(name: str, *, check_models: bool = True) -> Task:
    """A built-in task by name, or a user's task by import path `package.module:callable`.

    The callable takes no arguments and returns a `Task`. The result is checked (types,
    non-empty data and, with `check_models`, a forward pass of both models with the right
    number of logits) and cached per process, so every stage task in a Ray worker builds it
    once. `check_models=False` is for a Ray worker that verifies the task's models against the
    driver's fingerprint instead (the driver checked them): each check builds both models, a
    tenth of a CPU second per 10M parameters. The models are checked at most once per process.
    """
    task = _built_task(name)
    if check_models and name not in _MODELS_CHECKED:
        check_task_models(task, source=name)
        _MODELS_CHECKED.add(name)
    return task


_MODELS_CHECKED: set[str] = set()  # tasks whose models `check_task_models` passed here


@functools.lru_cache(maxsize=16)
def _built_task(name: str) -> Task:
    if name in BUILTIN_TASKS:
        task = BUILTIN_TASKS[name]()
    elif ":" in name:
        task = _import_task(name)
    else:
        raise SqueezerayError(
            f"task={name!r} is not a built-in task or an import path; accepted: "
            f"{', '.join(BUILTIN_TASKS)}, or 'package.module:callable' returning a Task"
        )
    check_task(task, source=name, models=False)
    return task


def clear_task_cache() -> None:
    """Forget every task `load_task` built (tests that rewrite a task module)."""
    _built_task.cache_clear()
    _MODELS_CHECKED.clear()


def _import_task(path: str) -> Task:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise SqueezerayError(
            f"task={path!r} is not an import path; write it as 'package.module:callable'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SqueezerayError(
            f"task={path!r}: cannot import module {module_name!r} ({exc}); check that the module "
            "is importable (on PYTHONPATH or installed) from where squeezeray runs"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise SqueezerayError(f"task={path!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise SqueezerayError(f"task={path!r}: {attr!r} is not callable; it must return a Task")
    task = factory()
    if not isinstance(task, Task):
        raise SqueezerayError(
            f"task={path!r}: {attr}() returned {type(task).__name__}, not a stages.Task; "
            "return Task(name=..., teacher=..., student=..., train=..., val=..., test=..., "
            "num_classes=...)"
        )
    return task


def check_task(task: Task, *, source: str, models: bool = True) -> None:
    """Fail early, with the fix, when a task cannot run through the pipeline: its settings,
    data and (with `models`) its models (`check_task_models`)."""
    if task.num_classes < 2:
        raise SqueezerayError(f"task={source!r}: num_classes={task.num_classes} must be >= 2")
    size = task.eval_batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SqueezerayError(
            f"task={source!r}: eval_batch_size={size!r}; accepted: an integer >= 1 (the batch "
            f"size accuracy is measured at, default {DEFAULT_EVAL_BATCH_SIZE})"
        )
    workers = task.num_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SqueezerayError(
            f"task={source!r}: num_workers={workers!r}; accepted: an integer >= 0 (DataLoader "
            "worker processes reading the datasets; 0 reads them in the stage's own process)"
        )
    files = task.export_files
    if not isinstance(files, tuple) or not all(isinstance(f, str) for f in files):
        raise SqueezerayError(
            f"task={source!r}: export_files={files!r}; accepted: a tuple of file paths (str)"
        )
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise SqueezerayError(
            f"task={source!r}: export_files names {len(missing)} file(s) that do not exist "
            f"({', '.join(missing[:3])}); give the tokenizer/processor files' paths"
        )
    for split in ("train", "val", "test"):
        ds = getattr(task, split)
        try:
            n = len(ds)
        except TypeError as exc:
            raise SqueezerayError(
                f"task={source!r}: {split} dataset has no len(); use a map-style Dataset"
            ) from exc
        if n == 0:
            raise SqueezerayError(f"task={source!r}: the {split} dataset is empty")
        item = ds[0]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise SqueezerayError(
                f"task={source!r}: {split}[0] must be an (x, y) pair, got "
                f"{_kind(item)}; {INPUT_RULE}"
            )
        x0 = item[0]
        if not (
            _is_array(x0)
            or (isinstance(x0, (tuple, list)) and x0 and all(_is_array(t) for t in x0))
            or (
                isinstance(x0, Mapping)
                and x0
                and all(isinstance(k, str) and _is_array(t) for k, t in x0.items())
            )
        ):
            raise SqueezerayError(
                f"task={source!r}: {split}[0] has x of type {_kind(x0)}; {INPUT_RULE}"
            )
        _check_label(item[1], split=split, num_classes=task.num_classes, source=source)
    for arch in ("teacher", "student"):
        factory = getattr(task, arch)
        if isinstance(factory, nn.Module):
            raise SqueezerayError(
                f"task={source!r}: {arch} is a model instance ({type(factory).__name__}); it "
                f"must be a zero-argument callable that builds one, e.g. "
                f"{arch}=lambda: {type(factory).__name__}(...) or {arch}={type(factory).__name__}"
            )
    if models:
        check_task_models(task, source=source)


def check_task_models(task: Task, *, source: str) -> None:
    """Each factory builds a float32 nn.Module that maps one test sample to (1, num_classes)
    float logits; SqueezerayError with the call and shapes when not."""
    x = task.example_input(1)
    names = input_names(x)
    shapes = ", ".join(
        (f"{names[i]}=" if names else "") + f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        for i, t in enumerate(tensors(x))
    )
    how = "model(**x)" if names else "model(*x)"
    for arch in ("teacher", "student") if task.student is not None else ("teacher",):
        model = task.build(arch)
        if not isinstance(model, nn.Module):
            raise SqueezerayError(
                f"task={source!r}: {arch}() returned {type(model).__name__}, not an nn.Module"
            )
        _check_float32(model, arch=arch, source=source)
        model.eval()
        try:
            with torch.no_grad():
                raw = call(model, x)
        except Exception as exc:  # a user's model: any error is a shape/type problem to report
            raise SqueezerayError(
                f"task={source!r}: {arch} model fails on one test sample, called as "
                f"{how} with x = [{shapes}]: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            out = logits_of(raw)
        except SqueezerayError as exc:
            raise SqueezerayError(f"task={source!r}: {arch}: {exc}") from exc
        if tuple(out.shape) != (1, task.num_classes) or not out.is_floating_point():
            raise SqueezerayError(
                f"task={source!r}: {arch} logits have shape {tuple(out.shape)} "
                f"({out.dtype}) for one input; expected float (1, {task.num_classes}) "
                f"(num_classes={task.num_classes}); {OUTPUT_RULE}"
            )
        if arch == "teacher" and task.metric is not None:
            _try_metric(task.metric, out, task.test[0][1], source=source)


DTYPE_RULE = (
    "squeezeray trains, compresses and measures models in float32 (int8 quantization, the LoRA "
    "merge check and the checkpoint rebuild all start from float32 weights)"
)


def _check_float32(model: nn.Module, *, arch: str, source: str) -> None:
    """Refuse a model with floating-point parameters or buffers other than float32 (bf16,
    fp16, float64): the stages would fail one by one with errors about other causes."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    other = [(n, t) for n, t in tensors if t.is_floating_point() and t.dtype != torch.float32]
    if not other:
        return
    dtypes = sorted({str(t.dtype).replace("torch.", "") for _, t in other})
    raise SqueezerayError(
        f"task={source!r}: the {arch} model has {'/'.join(dtypes)} weights ({len(other)} "
        f"tensors, e.g. {other[0][0]!r}); {DTYPE_RULE}: build it in float32 (return "
        "model.float() from the factory, or from_pretrained(..., dtype=torch.float32)); its "
        "size and latency are then measured in float32, and int8 quantization makes it smaller"
    )


LABEL_RULE = (
    "labels are integer classes in [0, num_classes): a Python int or an integer tensor of "
    "one value (e.g. y.long()); float labels are not classes"
)


def _check_label(y: object, *, split: str, num_classes: int, source: str) -> None:
    """The first sample's label is an integer class in range (a float label passes a forward
    pass but fails every training step inside Ray)."""
    import numpy as np

    scalar = isinstance(y, (int, float, bool, np.generic))
    value = torch.as_tensor(y) if _is_array(y) or scalar else None
    if (
        value is None
        or value.numel() != 1
        or value.dtype.is_floating_point
        or (value.dtype == torch.bool)
    ):
        kind = _kind(y) if value is None else f"{str(value.dtype).replace('torch.', '')} {y!r}"
        if value is not None and _per_position(value, num_classes):
            rule = PER_POSITION_RULE.format(shape=tuple(value.shape))
            raise SqueezerayError(f"task={source!r}: {split}[0] has label {kind}: {rule}")
        vector = "" if value is None else _vector_hint(value, num_classes)
        raise SqueezerayError(f"task={source!r}: {split}[0] has label {kind}{vector}; {LABEL_RULE}")
    if not 0 <= int(value.item()) < num_classes:
        raise SqueezerayError(
            f"task={source!r}: {split}[0] has label {int(value.item())}, outside "
            f"[0, {num_classes}) (num_classes={num_classes}); {LABEL_RULE}"
        )


PER_POSITION_RULE = (
    "a label of shape {shape} per sample, one class per position (token classification or "
    "segmentation labels); per-position labels are not supported: squeezeray trains "
    "(cross-entropy, distillation) and scores (accuracy or a Task.metric, called with logits "
    "(N, num_classes) and targets (N,)) one class per sample, so a model must return "
    "(N, num_classes) logits; give each sample one class, e.g. a sequence-level label with "
    "stages.hf.sequence_classification_task (AutoModelForSequenceClassification)"
)

IGNORE_INDEX = -100  # the label Hugging Face token classifiers put on padding positions


def _per_position(value: torch.Tensor, num_classes: int) -> bool:
    """An integer label with more than one value, each a class or the ignore index: a class
    per token or pixel, unless it reads as one one-hot row of `num_classes` values."""
    if value.numel() < 2 or value.dtype.is_floating_point or value.dtype == torch.bool:
        return False
    flat = value.reshape(-1)
    ok = ((flat >= 0) & (flat < num_classes)) | (flat == IGNORE_INDEX)
    return bool(ok.all()) and not _one_hot(value, num_classes)


def _one_hot(value: torch.Tensor, num_classes: int) -> bool:
    """One row of `num_classes` values that is plausibly one-hot: floats (one-hot or scores),
    or integers that are all 0 but a single 1."""
    if value.numel() != num_classes or value.shape[-1] != num_classes:
        return False
    if value.dtype.is_floating_point:
        return True
    return bool(((value == 0) | (value == 1)).all()) and int(value.sum()) == 1


def _vector_hint(value: torch.Tensor, num_classes: int) -> str:
    """What a label of more than one value looks like, and the fix when there is one."""
    if value.numel() < 2:
        return ""
    if _one_hot(value, num_classes):
        return (
            f" (a vector of {num_classes} values = num_classes, one-hot or per-class scores: "
            "give the class index, e.g. y.argmax())"
        )
    return f" (shape {tuple(value.shape)}: one value per sample is expected)"


def _try_metric(metric: Metric, logits: torch.Tensor, y0: object, *, source: str) -> None:
    """The task's metric, called once on the teacher's logits for one test sample."""
    check_metric(metric, source=source)
    targets = torch.as_tensor(y0, dtype=torch.long).reshape(1)
    try:
        value = metric(logits.float(), targets)
    except Exception as exc:  # the user's function: report what it was called with
        raise SqueezerayError(
            f"task={source!r}: metric {metric.name!r} fails when called as fn(logits, targets) "
            f"with logits {tuple(logits.shape)} float32 and targets (1,) int64: "
            f"{type(exc).__name__}: {exc}; it must return a float"
        ) from exc
    if not math.isfinite(value):
        raise SqueezerayError(
            f"task={source!r}: metric {metric.name!r} returned {value} for one test sample; "
            "it must return a finite float"
        )


def _is_array(value: object) -> bool:
    import numpy as np

    return isinstance(value, torch.Tensor | np.ndarray)


def _kind(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__
