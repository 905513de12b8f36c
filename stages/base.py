"""The Stage contract: a frozen params dataclass plus one pure function per stage.

    run(StageInput, Params) -> StageOutput

A stage does no I/O of its own and knows nothing of Ray; it must not mutate its input
checkpoint, and with the same seed it returns the same weights.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.tasks import Task


@dataclass(frozen=True)
class StageInput:
    """Everything a stage may read.

    parent: the previous stage's checkpoint (None only for `teacher`).
    teacher: the trained teacher's checkpoint, for distillation and KD fine-tuning.
    device: "auto" | "cpu" | "cuda" (see `stages.device.resolve_device`).
    """

    task: Task
    parent: ModelCheckpoint | None
    teacher: ModelCheckpoint | None = None
    device: str = "cpu"
    seed: int = 0


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
    """A stage's name, its params class and its function, as the orchestrator sees them."""

    name: str
    params: type[P]
    run: Callable[[StageInput, P], StageOutput]
    needs_parent: bool = True

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
