"""The progress events a sweep sends to its display (`progress=` of `run_sweep`,
`prepare_sweep`, `execute_sweep`; the CLI's `engine.progress.SweepProgress`).

A callback `progress(event, data)` receives, in order:

- `step`, `{"step": text}`: a step of the run starts that may take a while on a big model
  (each pre-flight check: loading the task, checking every sample of its splits, checking
  that the stages apply to its model, fingerprinting it; starting Ray; the final latency phase).
- `ready`, `{"running_stages": fn}`: Ray and the sweep's stage cache are up; `fn()` answers
  `{"stages": [stage names running now], "trials": [beside each, the trials waiting on that
  one task], "queued": n}` from the cache actor (a Ray call that
  waits at most 2 s: poll it every second or two, not more).
- `start` and `done` per trial, with the trial's row (`done`) and `counts` ({"ok", "failed"})
  and `total` (the trials this run plans) - written by `tune_callbacks.ResultsWriter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Progress = Callable[[str, Mapping[str, Any]], None]


def report_step(progress: Progress | None, step: str) -> None:
    """Tell `progress` (if any) that `step` starts: a `step` event."""
    if progress is not None:
        progress("step", {"step": step})
