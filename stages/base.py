"""The Stage contract: a frozen params dataclass plus one pure function per stage.

    run(StageInput, Params) -> StageOutput

A stage does no I/O of its own and knows nothing of Ray; it must not mutate its input
checkpoint, and with the same seed it returns the same weights. What a stage needs and
promises (a parent, a float parent, the teacher, the metrics it reports) is declared on its
`StageSpec`; `stages.runner.run_stage` enforces it for every stage, resolves the device and
checks the checkpoint round trip, so the stage function holds only its own behaviour.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from stages.checkpoint import ModelCheckpoint
from stages.device import resolve_device
from stages.errors import SqueezerayError
from stages.tasks import Task


@dataclass(frozen=True)
class StageInput:
    """Everything a stage may read.

    parent: the previous stage's checkpoint (None only for `teacher`).
    teacher: the trained teacher's checkpoint, for distillation and KD fine-tuning.
    device: "auto" | "cpu" | "cuda" | "cuda:N" (see `stages.device.resolve_device`; the
    runner passes the resolved name).
    """

    task: Task
    parent: ModelCheckpoint | None
    teacher: ModelCheckpoint | None = None
    device: str = "cpu"
    seed: int = 0

    @property
    def torch_device(self) -> torch.device:
        """`device` as a torch device (`stages.device.resolve_device`)."""
        return resolve_device(self.device)

    def require_parent(self) -> ModelCheckpoint:
        """The parent checkpoint. `stages.runner.run_stage` refuses a missing one (naming the
        stage and the fix) before a stage whose spec `needs_parent` runs, so inside such a
        stage this only narrows the type; called without the runner, it raises a
        SqueezerayError."""
        if self.parent is None:
            raise SqueezerayError(
                "this stage needs a parent checkpoint (StageInput.parent is None); put it "
                "after a stage that trains a model, or run it with stages.runner.run_stage"
            )
        return self.parent

    def require_teacher(self) -> ModelCheckpoint:
        """The teacher checkpoint, as `require_parent` (the runner refuses a missing one for a
        setting that reads it, `StageSpec.needs_teacher`, naming the setting and the fix)."""
        if self.teacher is None:
            raise SqueezerayError(
                "this stage's settings read the teacher checkpoint (StageInput.teacher is None); "
                "keep a 'teacher' stage in the pipeline, or run it with stages.runner.run_stage"
            )
        return self.teacher


@dataclass(frozen=True)
class StageOutput:
    """The new checkpoint and the stage's own metrics (plain floats, e.g. val_accuracy).

    model: the in-memory module the checkpoint was taken from (eval mode), which
    `stages.selfcheck.check_output` compares with the model rebuilt from the checkpoint's
    bytes; None where the stage made no torch module (an ONNX Runtime artifact).
    """

    checkpoint: ModelCheckpoint
    metrics: dict[str, float] = field(default_factory=dict)
    model: Any = field(default=None, compare=False, repr=False)


P = TypeVar("P")


@dataclass(frozen=True)
class StageSpec(Generic[P]):
    """A stage's name, its params class, its function, and its contract.

    The contract, enforced by `stages.runner.run_stage` for every stage:

    needs_parent: the stage starts from `StageInput.parent`; run without one, it is refused
        with `parent_fix` (what to change in the pipeline).
    teacher_as_parent: with no parent, `StageInput.teacher` is the model it starts from
        (distill: the teacher is its parent).
    float_parent_fix: when set, the parent must be a float torch model (not quantized, not an
        ONNX Runtime artifact); otherwise the stage is refused with this fix.
    needs_teacher: params -> the setting that makes this run read `StageInput.teacher` (e.g.
        "finetune.mode='kd'"), or None when it does not; with no teacher given, the stage is
        refused with `teacher_fix`.
    metrics: the keys every run reports in `StageOutput.metrics` (a missing one is a bug in
        the stage, reported as such).
    """

    name: str
    params: type[P]
    run: Callable[[StageInput, P], StageOutput]
    needs_parent: bool = True
    parent_fix: str = "put it after a stage that trains a model (teacher, distill)"
    teacher_as_parent: bool = False
    float_parent_fix: str = ""
    needs_teacher: Callable[[P], str | None] | None = None
    teacher_fix: str = "keep a 'teacher' stage in the pipeline"
    metrics: tuple[str, ...] = ("val_accuracy",)

    def make_params(self, values: Mapping[str, Any]) -> P:
        """Build params from a flat mapping, rejecting unknown keys with a suggestion."""
        known = [f.name for f in dataclasses.fields(self.params)]  # type: ignore[arg-type]
        for key in values:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                did_you_mean = f" (did you mean {self.name}.{hint[0]}?)" if hint else ""
                raise SqueezerayError(
                    f"{self.name}.{key} is not a parameter of stage {self.name!r}{did_you_mean}; "
                    f"accepted: {', '.join(f'{self.name}.{k}' for k in known)}"
                )
        return self.params(**values)

    def param_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.params)]  # type: ignore[arg-type]


# -- validation helpers used by every params dataclass ------------------------------------


def check_range(
    key: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise a SqueezerayError naming `key`, the value and the accepted interval."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SqueezerayError(f"{key}={value!r} is not a number")
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise SqueezerayError(f"{key}={value!r} is out of range; accepted: {left}{lo}, {hi}{right}")


def check_int(key: str, value: int, *, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SqueezerayError(f"{key}={value!r} is not an integer")
    check_range(key, value, low=low, high=high)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SqueezerayError(
            f"{key}={value!r} is not accepted{did_you_mean}; accepted: {', '.join(choices)}"
        )
