"""Warm-starting Optuna from stored rows: their knob points, objectives and constraint values.

Used by nightly runs (the earlier sweeps of the task) and by a resumed sweep whose Tune state
could not be restored (its own finished trials, `tune_state`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.space.model import Distribution, SearchSpace

if TYPE_CHECKING:
    import pyarrow as pa

WARM_START_MAX = 1000  # newest distinct knob points given to Optuna (older ones add little)

# (knob points, their objective values, their stored constraint-column values)
WarmStart = tuple[list[dict[str, Any]], list[list[float]], list[dict[str, float]]]


def warm_start_from(table: pa.Table | None, space: SearchSpace) -> WarmStart | None:
    """Earlier ok trials of `space.task` as Optuna warm-start points, their objectives and the
    values of the space's constraint columns (read from the stored rows, so a constraint on a
    column that is not an objective is judged on what that trial measured).

    Only the knobs searched by `space` are kept, and only rows that have all of them with a
    value the space can produce, every objective and every constraint column (a row missing
    one is skipped, not assumed feasible); the newest row of a knob point wins.
    """
    if table is None or table.num_rows == 0:
        return None
    searched = space.searched()
    # The values the search optimises and constrains (validation columns, `val_accuracy`), as
    # the sweep's searcher sees them; rows without them (written before squeezeray recorded
    # val_accuracy) are skipped.
    names = [column for column, _ in space.search_objectives()]
    constrained = sorted({column for column, _, _ in space.search_constraints()})
    if not searched or any(n not in table.column_names for n in [*names, *constrained]):
        return None
    rows = sorted(
        (
            r
            for r in table.to_pylist()
            if r["status"] == "ok" and not r["is_baseline"] and r.get("task") == space.task
        ),
        key=lambda r: (r.get("finished_at") is not None, r.get("finished_at")),
    )
    points: dict[str, tuple[dict[str, Any], list[float], dict[str, float]]] = {}
    for row in rows:
        params = json.loads(row.get("params") or "{}")
        point: dict[str, Any] = {}
        for key, dist in searched.items():
            value = _fits(dist, params.get(key))
            if value is None:
                break
            point[key] = value
        else:
            values = [_selection_value(row, n) for n in [*names, *constrained]]
            if any(v is None or not math.isfinite(float(v)) for v in values):
                continue
            key = json.dumps(point, sort_keys=True, default=str)
            points.pop(key, None)  # re-insert: newest last
            measured = {c: float(row[c]) for c in constrained}
            points[key] = (point, [float(v) for v in values[: len(names)]], measured)
    if not points:
        return None
    kept = list(points.values())[-WARM_START_MAX:]
    return [p for p, _, _ in kept], [v for _, v, _ in kept], [c for _, _, c in kept]


def _selection_value(row: Mapping[str, Any], column: str) -> Any:
    """A row's value of a selection column (rows of older versions were renamed on read,
    `orchestrator.store.results.upgrade_columns`)."""
    return row.get(column)


def _fits(dist: Distribution, value: Any) -> Any:
    """`value` as the distribution would produce it, or None when it cannot."""
    if value is None:
        return None
    if dist.kind == "choice":
        for choice in dist.choices:
            if isinstance(value, bool) == isinstance(choice, bool) and value == choice:
                return choice  # (True == 1 in Python; a bool matches only a bool)
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    assert dist.low is not None and dist.high is not None
    if not (dist.low <= number <= dist.high):
        return None
    if dist.kind == "int":
        step = dist.step or 1
        if not number.is_integer() or (int(number) - int(dist.low)) % step:
            return None
        return int(number)
    return number
