"""`SweepOptions`: every setting of one sweep that is not in its search space, validated once.

The CLI (`squeezeray sweep` and `squeezeray nightly`, from the same option definitions), the
Python API (`run_sweep`, `prepare_sweep`, `prepare_nightly`, `run_nightly` with keyword
arguments, a thin layer over `SweepOptions.build`) and `--resume` (from the sweep manifest)
all produce one of these; the sweep engine reads nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.errors import SqueezerayError

DEFAULT_STORAGE = "squeezeray-results"

# The command-line flag of each field, for messages (time fields take durations: 30m, 90s).
FLAGS: dict[str, str] = {
    "storage": "--storage",
    "task": "--task",
    "trials": "--trials",
    "seed": "--seed",
    "name": "--name",
    "algorithm": "--algorithm",
    "time_budget_s": "--time-budget",
    "trial_timeout_s": "--trial-timeout",
    "cpus_per_trial": "--cpus-per-trial",
    "gpus_per_trial": "--gpus-per-trial",
    "max_concurrent": "--max-concurrent",
    "teacher_weights": "--teacher-weights",
    "address": "--address",
    "num_cpus": "--num-cpus",
    "latency_resource": "--latency-resource",
}

# Where a sweep runs, not what it runs: these may change on --resume (a new cluster).
PLACEMENT = frozenset({"storage", "address", "num_cpus", "latency_resource"})


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """The options of one sweep. None means "the search space's own value" (task, trials,
    seed, name, algorithm, time budget) or "automatic" (max_concurrent, num_cpus).

    Units: `time_budget_s` and `trial_timeout_s` are seconds of wall-clock time (the budget
    stops launching trials; the timeout limits the time one trial's stages run, queueing not
    counted); `cpus_per_trial` / `gpus_per_trial` are Ray logical CPUs / GPUs per stage task
    (fractions allowed); `max_concurrent` is trials at once; `num_cpus` the CPUs of an
    embedded Ray. `teacher_weights` is an absolute path to the teacher's weights (a
    `torch.save` state_dict, a .safetensors file or a `save_pretrained` directory).

    Raises SqueezerayError naming the flag, the value and what is accepted.
    """

    storage: str = DEFAULT_STORAGE
    task: str | None = None
    trials: int | None = None
    seed: int | None = None
    name: str | None = None
    algorithm: str | None = None
    time_budget_s: float | None = None
    trial_timeout_s: float | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    teacher_weights: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    latency_resource: str | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if self.cpus_per_trial <= 0:
            raise SqueezerayError(f"--cpus-per-trial={self.cpus_per_trial:g} must be > 0")
        if self.gpus_per_trial < 0:
            raise SqueezerayError(f"--gpus-per-trial={self.gpus_per_trial:g} must be >= 0")
        for name in ("trials", "max_concurrent", "num_cpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise SqueezerayError(f"{FLAGS[name]}={value} must be a whole number >= 1")
        for name in ("time_budget_s", "trial_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SqueezerayError(f"{FLAGS[name]}={value} must be > 0 seconds")

    @classmethod
    def build(
        cls,
        *,
        storage: str | os.PathLike[str] = DEFAULT_STORAGE,
        time_budget: str | float | None = None,
        trial_timeout: str | float | None = None,
        teacher_weights: str | os.PathLike[str] | None = None,
        **fields: Any,
    ) -> SweepOptions:
        """From the keyword arguments of the Python API and the CLI: durations as text ("30m",
        "90s") or seconds, paths as `os.PathLike`. Other keywords are the fields above; an
        unknown one is a SqueezerayError naming it and the accepted ones."""
        _check_keywords(fields)
        return cls(
            storage=os.fspath(storage),
            time_budget_s=_seconds("--time-budget", time_budget),
            trial_timeout_s=_seconds("--trial-timeout", trial_timeout),
            teacher_weights=None
            if teacher_weights is None
            else str(Path(teacher_weights).expanduser().resolve()),
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the sweep manifest stores it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def given(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what a user gave explicitly)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }


_INTEGERS = ("trials", "seed", "max_concurrent", "num_cpus")
_NUMBERS = ("cpus_per_trial", "gpus_per_trial", "time_budget_s", "trial_timeout_s")
# the keywords `build` takes besides the fields (durations as text, paths)
_BUILD_KEYWORDS = ("storage", "time_budget", "trial_timeout", "teacher_weights")


def _check_types(options: SweepOptions) -> None:
    """Each given field of the type it takes: SqueezerayError naming the option (its keyword
    and flag), the value and what is accepted (a "3" for trials compared as text failed deep
    in the checks with a bare TypeError)."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value is None:
            continue
        if f.name in _INTEGERS:
            ok, accepted = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif f.name in _NUMBERS:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            accepted = "a number"
        else:
            ok, accepted = isinstance(value, str), "a string"
        if not ok:
            raise SqueezerayError(
                f"{f.name}={value!r} ({FLAGS[f.name]}) is not {accepted}; accepted: {accepted}"
            )


def _check_keywords(fields: dict[str, Any]) -> None:
    """No keyword but the options' own: SqueezerayError with a did-you-mean."""
    from orchestrator.space.checks import did_you_mean

    accepted = sorted(
        {f.name for f in dataclasses.fields(SweepOptions)} - {"time_budget_s", "trial_timeout_s"}
        | set(_BUILD_KEYWORDS)
    )
    for name in fields:
        if name not in accepted:
            raise SqueezerayError(
                f"{name!r} is not a sweep option{did_you_mean(name, accepted)}; accepted: "
                f"{', '.join(accepted)}"
            )


def _seconds(flag: str, value: str | float | None) -> float | None:
    from orchestrator.space.checks import parse_duration

    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise SqueezerayError(f"{flag}={value} must be > 0 seconds")
        return float(value)
    try:
        return parse_duration(value)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{flag}: {exc}") from exc
