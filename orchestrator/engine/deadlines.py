"""A sweep's time budget as a deadline of this process (Ray-free).

`DEADLINES` maps a sweep id to the `time.monotonic()` value at which its search stops
launching trials. The search algorithm looks it up when a trial is to start
(`current_deadline`), so a search restored from a dead process's checkpoint (`--resume`) uses
this process's deadline, never the pickled one.
"""

from __future__ import annotations

import time

# sweep id -> the time.monotonic() at which its search stops launching trials (this process).
DEADLINES: dict[str, float] = {}


def current_deadline(key: str | None, default: float) -> float:
    return DEADLINES.get(key, default) if key is not None else default


def start_budget(key: str, budget_s: float | None, spent_s: float) -> float:
    """Start counting a sweep's time budget now, after the `spent_s` seconds earlier runs
    used (--resume): sets its deadline (when it has a budget); returns the start
    (`time.monotonic()`), from which this run's share of the budget is counted."""
    start = time.monotonic()
    if budget_s is not None:
        DEADLINES[key] = start + max(0.0, budget_s - spent_s)
    return start


def end_budget(key: str) -> None:
    DEADLINES.pop(key, None)
