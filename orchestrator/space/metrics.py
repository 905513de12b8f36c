"""The metric names a search space may use, and the column that selects on each.

Objectives and constraints name a metric (`accuracy`); the search, constraints, early stopping
and the default front select on its validation-split twin (`val_accuracy`), never the test split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from orchestrator.space.checks import did_you_mean, fail

# The metric columns of the results table (orchestrator.store.schema.METRIC_COLUMNS; kept here as
# plain names so validating a space does not import pyarrow; a test keeps them in sync).
METRICS: tuple[str, ...] = (
    "accuracy",
    "val_accuracy",
    "size_bytes",
    "params_total",
    "params_nonzero",
    "quantized_fraction",
    "latency_ms",
    "latency_ms_p90",
    "latency_ms_sweep",
)

DIRECTIONS: tuple[str, ...] = ("max", "min")

VALIDATION_PREFIX = "val_"


# Metrics whose selection column is not a `val_` twin: latency_ms is re-measured apart for the
# front and the baseline when the sweep ends (so rows differ in how it was taken); every trial
# keeps its in-sweep measurement in latency_ms_sweep, which the search and the front use.
SELECTION_TWINS: dict[str, str] = {"latency_ms": "latency_ms_sweep"}


def selection_column(metric: str, columns: Sequence[str] | None = None) -> str:
    """The column the search, constraints, early stopping and the default front use for `metric`.

    Objectives and constraints name a metric (`accuracy`); when its validation-split column
    (`val_accuracy`) exists (in `columns`, default the results' METRICS) that column selects
    models, and `accuracy` (the test split) is only reported. A metric without a validation
    twin (size_bytes) is its own selection column; latency_ms selects on latency_ms_sweep, the
    in-sweep measurement every trial has (the front's final latency_ms is re-measured apart,
    after the search). Naming `val_accuracy` directly means the same thing.
    """
    known = METRICS if columns is None else columns
    if metric.startswith(VALIDATION_PREFIX):
        return metric
    twin = SELECTION_TWINS.get(metric, VALIDATION_PREFIX + metric)
    return twin if twin in known else metric


def check_metric(source: str, key: str, metric: Any) -> None:
    """A built-in metric, or a name a task metric could have (checked against the task by
    `SearchSpace.with_task_metric` once the task is loaded)."""
    if metric not in METRICS and not (
        isinstance(metric, str) and _TASK_METRIC_NAME.fullmatch(metric)
    ):
        fail(source, key, unknown_metric(metric, None))


_TASK_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,66}")


def unknown_metric(metric: Any, task_metric: str | None) -> str:
    own = (
        f", or the task's own metric {task_metric!r} (and val_{task_metric})"
        if task_metric
        else ", or a metric the task defines (Task(metric=stages.Metric(...)))"
    )
    return (
        f"{metric!r} is not a metric{did_you_mean(str(metric), METRICS)};"
        f" accepted: {', '.join(METRICS)}{own}"
    )
