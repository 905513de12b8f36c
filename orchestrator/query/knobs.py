"""Every knob a sweep searched, as a column: read-time expansion of the `params` JSON.

The results table stores six common knobs as typed columns and every knob of every trial in
the `params` JSON string (`orchestrator.store.schema`). Readers (`pareto`, `--where`, `export`,
plots) call `with_knob_columns` so any `stage.param` - a searched `lowrank.rank_ratio`,
`distill.lr`, `export.runtime` - is a typed column they can show and filter on, and
`varying_knobs` to show the knobs that tell the trials apart instead of a fixed list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.store.schema import KNOB_COLUMNS
from stages import PIPELINE_ORDER as _STAGE_ORDER  # torch-free

if TYPE_CHECKING:
    import pyarrow as pa


def is_knob(name: str) -> bool:
    """A `stage.param` column name."""
    stage, dot, param = name.partition(".")
    return bool(dot and param) and stage in _STAGE_ORDER


def with_knob_columns(table: pa.Table) -> pa.Table:
    """`table` plus one typed column per knob found in its `params` JSON that is not a column
    yet (null where a row lacks it). Integers stay int64, other numbers float64, booleans
    bool; anything else is a string."""
    import pyarrow as pa

    if "params" not in table.column_names or table.num_rows == 0:
        return table
    parsed = [_loads(text) for text in table.column("params").to_pylist()]
    names = sorted({k for p in parsed for k in p if is_knob(k)} - set(table.column_names))
    for name in sorted(names, key=_knob_order):
        values = [p.get(name) for p in parsed]
        table = table.append_column(pa.field(name, _arrow_type(values)), [_cast(values)])
    return table


def varying_knobs(table: pa.Table) -> list[str]:
    """Knob columns whose values differ among the table's trials (baselines left out), in
    pipeline order: the knobs that tell two trials apart. With a single trial, the knobs
    that the common columns hold for it."""
    import pyarrow.compute as pc

    trials = table
    if "is_baseline" in table.column_names:
        trials = table.filter(pc.invert(pc.fill_null(table.column("is_baseline"), False)))
    knobs = sorted((c for c in table.column_names if is_knob(c)), key=_knob_order)
    varying = [k for k in knobs if len({_hashable(v) for v in trials.column(k).to_pylist()}) > 1]
    if varying or trials.num_rows > 1:
        return varying
    return [k for k in KNOB_COLUMNS if k in table.column_names]


def _knob_order(name: str) -> tuple[int, str]:
    stage, _, param = name.partition(".")
    index = _STAGE_ORDER.index(stage) if stage in _STAGE_ORDER else len(_STAGE_ORDER)
    return index, param


def _loads(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _arrow_type(values: Sequence[Any]) -> pa.DataType:
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _cast(values: Sequence[Any]) -> pa.Array:
    import pyarrow as pa

    dtype = _arrow_type(values)
    if dtype == pa.string():
        values = [None if v is None else _text(v) for v in values]
    elif dtype == pa.float64():
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, type=dtype)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value
