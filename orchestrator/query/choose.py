"""Choosing the row to export or load: by trial id, or the best `--pick` among ok trials
matching `--where` (`select_row`, `find_row`, `parse_pick`).

An unknown, ambiguous or failed trial, or a choice that leaves no single row, is a
SqueezerayError that says how to choose (`option_style`: the options spelled `sweep=` in
Python, `--sweep` on the command line).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa

OptionStyle = Literal["python", "cli"]


def parse_pick(
    text: str,
    directions: Mapping[str, str] | None = None,
    *,
    columns: Sequence[str] = (),
) -> tuple[str, str]:
    """`COLUMN[:min|max]` -> (column, direction); a bare metric takes its usual direction
    (built-in metrics, and those in `directions`, e.g. a task metric's). The column follows
    the one naming rule (`orchestrator.space.metrics`: `accuracy` is refused). A column that
    is neither in `directions` nor in `columns` (the table's numeric ones) is refused with the
    closest of them (`did_you_mean`)."""
    from orchestrator.space.checks import did_you_mean
    from orchestrator.space.metrics import resolve_metric
    from orchestrator.store.schema import DEFAULT_DIRECTIONS

    known = {**DEFAULT_DIRECTIONS, **(directions or {})}
    column, _, direction = text.partition(":")
    column = column.strip()
    resolve_metric("--pick", column, purpose="choose", columns=list(known))
    direction = direction.strip() or known.get(column, "")
    unknown = column not in known and column not in columns
    hint = did_you_mean(column, [*known, *columns]) if unknown and column else ""
    if not column or direction not in ("min", "max"):
        raise SqueezerayError(
            f"--pick {text!r} is not accepted{hint}; accepted: COLUMN[:min|max], e.g. "
            "size_bytes or "
            "val_accuracy:max (min|max may be left out for "
            f"{', '.join(DEFAULT_DIRECTIONS)})"
        )
    return column, direction


def select_row(
    table: pa.Table,
    trial_id: str | None = None,
    *,
    where: str | None = None,
    pick: str | None = None,
    option_style: OptionStyle = "python",
) -> dict[str, Any]:
    """The row to export: by trial id, or the best `pick` among ok trials matching `where`.

    `pick` names its column under the one naming rule, as the search and the front do
    (`val_accuracy`; a bare `accuracy` is refused, the test split is never picked on).
    `where` filters on the columns it names, as `squeezeray pareto --where` does.

    Raises SqueezerayError when the trial is unknown, ambiguous (`--sweep all` with one id in
    two sweeps), not ok, or when no trial id and no single candidate is given (`option_style`:
    errors spell the sweep option `sweep=` or `--sweep`).
    """
    if trial_id is not None and (where or pick):
        raise SqueezerayError(
            "give either a TRIAL_ID or --where/--pick to choose the row, not both"
        )
    if trial_id is not None:
        return _row_by_id(table, trial_id, option_style)
    from orchestrator.query.knobs import with_knob_columns

    table = with_knob_columns(table)  # --where and --pick may name any searched knob
    candidates = _ok_trials_matching(table, where)
    if pick is None:
        if candidates.num_rows == 1:
            return dict(candidates.to_pylist()[0])
        raise SqueezerayError(
            f"{candidates.num_rows} trials match; give a TRIAL_ID, or --pick COLUMN[:min|max] "
            "to take the best of them (e.g. --pick size_bytes)"
        )
    return _best_by_pick(candidates, pick, _task_metric_directions(table))


def _sweep_option(option_style: OptionStyle, sweep_id: str = "ID") -> str:
    """How the user chooses a sweep: `sweep='ID'` in Python, `--sweep ID` on the command line."""
    if option_style == "cli":
        return f"--sweep {sweep_id}"
    return "sweep=ID" if sweep_id == "ID" else f"sweep={sweep_id!r}"


def _row_by_id(
    table: pa.Table, trial_id: str, option_style: OptionStyle = "python"
) -> dict[str, Any]:
    """The one ok row of `trial_id` (unknown, in two sweeps or not ok: SqueezerayError)."""
    import pyarrow.compute as pc

    rows = table.filter(pc.equal(table.column("trial_id"), trial_id)).to_pylist()
    if not rows:
        known = [r["trial_id"] for r in table.to_pylist() if r["status"] == "ok"][:12]
        raise SqueezerayError(
            f"trial {trial_id!r} is not in the chosen sweep(s); ok trials there: "
            f"{', '.join(known) or 'none'} (choose the sweep with "
            f"{_sweep_option(option_style)})"
        )
    if len(rows) > 1:
        sweeps = sorted({str(r["sweep_id"]) for r in rows})
        raise SqueezerayError(
            f"trial {trial_id!r} is in {len(rows)} sweeps ({', '.join(sweeps)}); "
            f"choose one with {_sweep_option(option_style, sweeps[0])}"
        )
    row = rows[0]
    if row["status"] != "ok":
        raise SqueezerayError(
            f"trial {trial_id!r} of sweep {row['sweep_id']} has status {row['status']!r} "
            f"({row.get('error') or 'no model'}); only ok trials have a model to export"
        )
    return dict(row)


def _ok_trials_matching(table: pa.Table, where: str | None) -> pa.Table:
    """The ok, non-baseline rows `where` keeps; none left is a SqueezerayError."""
    import pyarrow.compute as pc

    candidates = table.filter(
        pc.and_(pc.equal(table.column("status"), "ok"), pc.invert(table.column("is_baseline")))
    )
    if where:
        from orchestrator.query.where import parse_where

        candidates = candidates.filter(parse_where(where, table.schema))
    if candidates.num_rows == 0:
        raise SqueezerayError(
            f"no ok trial matches{f' --where {where!r}' if where else ''}; loosen the filter "
            "or check the sweep with `squeezeray pareto`"
        )
    return candidates


def _best_by_pick(candidates: pa.Table, pick: str, directions: Mapping[str, str]) -> dict[str, Any]:
    """The candidate best on `pick`'s column; ties go to the smallest trial id."""
    from orchestrator.space.checks import did_you_mean
    from orchestrator.space.metrics import resolve_metric

    numeric = [n for n in candidates.column_names if _numeric(candidates, n)]
    column, direction = parse_pick(pick, directions, columns=numeric)
    resolve_metric("--pick", column, purpose="choose", columns=candidates.column_names)
    if column not in candidates.column_names:
        raise SqueezerayError(
            f"--pick {pick!r}: no column {column!r}{did_you_mean(column, numeric)}; accepted: "
            + ", ".join(numeric)
        )
    if not _numeric(candidates, column):
        raise SqueezerayError(f"--pick {pick!r}: column {column!r} is not numeric")
    rows = [r for r in candidates.to_pylist() if _finite(r[column])]
    if not rows:
        raise SqueezerayError(f"--pick {pick!r}: no matching trial has a value for {column!r}")
    sign = 1.0 if direction == "min" else -1.0
    return dict(min(rows, key=lambda r: (sign * float(r[column]), str(r["trial_id"]))))


def _task_metric_directions(table: pa.Table) -> dict[str, str]:
    """{name: direction, val_<name>: direction, test_<name>: direction} of the task metrics
    the rows record (the tasks are loaded only when some row has one); the bare name is known
    only to be refused as ambiguous."""
    from stages.tasks import load_task

    rows = table.select(["task", "custom_metrics"]).to_pylist()
    out: dict[str, str] = {}
    for task_name in sorted({str(r["task"]) for r in rows if r["custom_metrics"]}):
        metric = load_task(task_name).metric
        if metric is not None:
            for column in (metric.name, "val_" + metric.name, "test_" + metric.name):
                out[column] = metric.direction
    return out


def _numeric(table: pa.Table, name: str) -> bool:
    import pyarrow.types as pt

    dtype = table.schema.field(name).type
    return bool(pt.is_integer(dtype) or pt.is_floating(dtype))


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def find_row(
    storage: str | os.PathLike[str],
    trial_id: str | None = None,
    *,
    sweep: str = "latest",
    where: str | None = None,
    pick: str | None = None,
    option_style: OptionStyle = "python",
) -> tuple[dict[str, Any], pa.Table]:
    """(the chosen row, every row of its sweep).

    A `trial_id` that is not in the chosen sweep but in others of the storage is a
    SqueezerayError naming those sweeps and how to choose one (`option_style`).
    """
    import pyarrow.compute as pc

    from orchestrator.store.results import load_results

    try:
        table = load_results(os.fspath(storage), sweep=sweep)
    except SqueezerayError as exc:  # an unknown sweep: spelled as the caller passes it
        text = str(exc)
        if option_style == "python" and text.startswith("--sweep "):
            raise SqueezerayError("sweep=" + text.removeprefix("--sweep ")) from None
        raise
    if trial_id is not None and trial_id not in set(table.column("trial_id").to_pylist()):
        chosen = sorted({str(s) for s in table.column("sweep_id").to_pylist()})
        _raise_if_in_other_sweeps(storage, trial_id, sweep, chosen, option_style)
    row = select_row(table, trial_id, where=where, pick=pick, option_style=option_style)
    sweep_rows = table.filter(pc.equal(table.column("sweep_id"), row["sweep_id"]))
    return row, sweep_rows


def _raise_if_in_other_sweeps(
    storage: str | os.PathLike[str],
    trial_id: str,
    sweep: str,
    chosen_ids: list[str],
    option_style: OptionStyle,
) -> None:
    """SqueezerayError naming the sweeps of the storage that hold `trial_id` (if any do);
    `chosen_ids`: the sweep(s) `sweep` chose, where it is not."""
    import pyarrow.compute as pc

    from orchestrator.store.results import load_results

    everything = load_results(os.fspath(storage), sweep="all")
    found = everything.filter(pc.equal(everything.column("trial_id"), trial_id))
    holders = sorted({str(s) for s in found.column("sweep_id").to_pylist()})
    if holders:
        chosen = f"sweep {', '.join(chosen_ids)}"
        if sweep == "latest":
            chosen = f"the latest {chosen}"
        options = " or ".join(_sweep_option(option_style, h) for h in holders)
        raise SqueezerayError(
            f"trial {trial_id!r} is not in {chosen} but in sweep {', '.join(holders)}; "
            f"choose it with {options}"
        )
