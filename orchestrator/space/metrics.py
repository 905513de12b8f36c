"""Metric names: one rule everywhere a user names a metric.

Every metric column says which split or which measurement it holds:

    val_accuracy, val_<metric>       validation split: what the search, constraints, fronts,
                                     --where and --pick choose on
    test_accuracy, test_<metric>     test split: reported only, never chosen on
    latency_ms_sweep (+ _p90)        measured in the sweep, on every row: what the search and
                                     fronts choose on
    latency_ms_final (+ _p90)        re-measured after the sweep (front and baseline rows only,
                                     with speedup, latency_cv, latency_rounds): reported

The bare names `accuracy`, `latency_ms`, `latency_ms_p90` and a task metric's own name (`f1`)
are ambiguous and refused in every place that takes a metric name (objectives, constraints,
--where, --pick, --objectives, pareto_front, hypervolume, SweepResult.best, export), with the
same message naming the explicit columns to choose from (`ambiguous_message`). Results written
before these names existed are renamed when read (`orchestrator.store.results.upgrade_columns`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from orchestrator.space.checks import did_you_mean, fail
from stages.errors import SqueezerayError

# The metric columns of the results table (orchestrator.store.schema.METRIC_COLUMNS; kept here as
# plain names so validating a space does not import pyarrow; a test keeps them in sync).
METRICS: tuple[str, ...] = (
    "val_accuracy",
    "test_accuracy",
    "size_bytes",
    "params_total",
    "params_nonzero",
    "quantized_fraction",
    "latency_ms_sweep",
    "latency_ms_sweep_p90",
    "latency_ms_final",
    "latency_ms_final_p90",
)

DIRECTIONS: tuple[str, ...] = ("max", "min")

VALIDATION_PREFIX = "val_"
TEST_PREFIX = "test_"

# Bare names that could mean two columns -> (the one to choose on, the reported one).
AMBIGUOUS: dict[str, tuple[str, str]] = {
    "accuracy": ("val_accuracy", "test_accuracy"),
    "latency_ms": ("latency_ms_sweep", "latency_ms_final"),
    "latency_ms_p90": ("latency_ms_sweep_p90", "latency_ms_final_p90"),
}

# Columns measured after the search on some rows only: a search can never select on them.
AFTER_SEARCH: tuple[str, ...] = ("latency_ms_final", "latency_ms_final_p90")

# What a place does with the name: "search" (a space's objectives and constraints: the
# search selects on it while trials run), "choose" (a front's objectives, --pick, best():
# picks models among finished rows), "filter" (--where: any column, the test split included).
PURPOSES: tuple[str, ...] = ("search", "choose", "filter")


def explicit_names(name: str) -> tuple[str, str] | None:
    """The two explicit columns a bare ambiguous `name` could mean, or None when `name` is
    not ambiguous. A task metric's bare name (`f1`) is ambiguous as `accuracy` is; pass it
    through `ambiguous_names` to know it."""
    if name in AMBIGUOUS:
        return AMBIGUOUS[name]
    return None


def ambiguous_message(place: str, name: str, pair: tuple[str, str]) -> str:
    """The one refusal of a bare name, the same words in every place (only `place` differs)."""
    chosen, reported = pair
    if chosen.startswith(VALIDATION_PREFIX):
        what = (
            f"{chosen} (validation split: what searches, fronts, --where and --pick choose "
            f"on) or {reported} (test split: reported only)"
        )
    else:
        what = (
            f"{chosen} (measured in the sweep, every row: what searches and fronts choose "
            f"on) or {reported} (re-measured after the sweep, front and baseline rows only)"
        )
    return f"{place}: {name!r} is ambiguous; name the column: {what}"


def task_metric_pair(name: str) -> tuple[str, str]:
    """A task metric's two columns: (`val_<name>`, `test_<name>`)."""
    return VALIDATION_PREFIX + name, TEST_PREFIX + name


def resolve_metric(
    place: str,
    name: Any,
    *,
    purpose: str,
    columns: Sequence[str] | None = None,
    task_metric: str | None = None,
) -> str:
    """The column `name` means at `place` (e.g. "--pick", "objectives.val_accuracy"): the
    name itself, once checked by the one rule of this module.

    Refused (SqueezerayError naming the place, the name and the columns to choose from): a
    bare ambiguous name (`accuracy`, `latency_ms`, a task metric's bare name, or any bare
    name whose val_/test_ twins are both in `columns`); a test-split column where a model is
    searched for or chosen (`purpose` "search" or "choose"); a final latency in a search.
    `columns` (default: the built-in METRICS plus the task metric's pair) limits what exists.
    """
    text = str(name)
    pair = explicit_names(text)
    if pair is None and task_metric is not None and text == task_metric:
        pair = task_metric_pair(text)
    if pair is None and columns is not None and _has_both_splits(text, columns):
        pair = task_metric_pair(text)
    if pair is not None:
        raise SqueezerayError(ambiguous_message(place, text, pair))
    if purpose in ("search", "choose") and text.startswith(TEST_PREFIX):
        chosen = VALIDATION_PREFIX + text[len(TEST_PREFIX) :]
        raise SqueezerayError(
            f"{place}: {text!r} is the test split, which is reported only (choosing on it "
            f"overfits the test set); accepted: {chosen}, its validation twin"
        )
    if purpose == "search" and text in AFTER_SEARCH:
        raise SqueezerayError(
            f"{place}: {text!r} is measured after the search, on front rows only; accepted: "
            f"{text.replace('_final', '_sweep')}, measured for every trial"
        )
    return text


def _has_both_splits(name: str, columns: Sequence[str]) -> bool:
    val, test = task_metric_pair(name)
    return val in columns and test in columns


def check_metric(source: str, key: str, metric: Any) -> None:
    """A space's objective or constraint: a built-in metric, or a name a task metric's
    column could have (`val_f1`; checked against the task by `SearchSpace.with_task_metric`
    once the task is loaded); refused as `resolve_metric` refuses with purpose "search"."""
    try:
        resolve_metric(key, metric, purpose="search")
    except SqueezerayError as exc:
        raise SqueezerayError(f"{source}: {exc}") from exc
    if metric not in METRICS and not (
        isinstance(metric, str) and _TASK_METRIC_COLUMN.fullmatch(metric)
    ):
        fail(source, key, unknown_metric(metric, None))


# val_f1, or a bare f1 (refused as ambiguous once the task says it is its metric's name).
_TASK_METRIC_COLUMN = re.compile(r"[a-z][a-z0-9_]{0,66}")


def unknown_metric(metric: Any, task_metric: str | None) -> str:
    own = (
        f", or the task's own metric val_{task_metric} (test_{task_metric} is reported only)"
        if task_metric
        else ", or val_<name> of a metric the task defines (Task(metric=stages.Metric(...)))"
    )
    return (
        f"{metric!r} is not a metric{did_you_mean(str(metric), METRICS)};"
        f" accepted: {', '.join(METRICS)}{own}"
    )
