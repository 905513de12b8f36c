"""Plain, torch-free descriptions of the work a Ray task does (they travel to workers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The trial id of the baseline's requests and row: the teacher, measured as the user has it.
BASELINE_TRIAL = "baseline"


@dataclass(frozen=True)
class StageRequest:
    """One stage execution: its identity and how to run it."""

    stage: str
    params: dict[str, Any]  # every field of the stage's params dataclass
    key: str
    parent_key: str | None
    task: str
    storage: str  # where the checkpoint is written (local path or URI)
    device: str = "cpu"
    seed: int = 0
    threads: int = 1
    sys_path: tuple[str, ...] = ()  # directories holding a user's task module
    sweep_id: str = ""
    trial_id: str = ""
    # The parts of the driver's task fingerprint this stage reads (stages.fingerprint: teacher,
    # student, data); the worker checks its own copy of the task against them.
    fingerprint: dict[str, str] = field(default_factory=dict)
    teacher_key: str | None = None  # the teacher stage's key (names its file in errors)


@dataclass(frozen=True)
class MeasureRequest:
    """Measuring one final checkpoint: accuracy, size, parameters and latency."""

    task: str
    key: str  # the final stage's key
    warmup: int = 50
    repeats: int = 300  # timed calls at most
    time_cap_s: float = 0.5  # seconds of timed calls (stages.latency: time-boxed latency)
    precision: float = 0.02  # timing stops once the median's 95% CI is within +-this share
    batch_size: int = 1
    threads: int = 1
    sys_path: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    storage: str = ""  # where the checkpoint of `key` lives (names it in errors)
    sweep_id: str = ""


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint handed from task to task as its file in a local storage's cache, not as
    its bytes: the reader maps the file (`ModelCheckpoint.from_file`) instead of holding a
    copy from Ray's object store and loaded tensors beside it.

    `path`: the checkpoint file (written atomically, then never changed); `nbytes` and
    `sha256`: its size and digest when it was written (the manifest's)."""

    path: str
    nbytes: int
    sha256: str
