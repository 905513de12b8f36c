"""`--where` parsing: precedence, literals, types, errors; never Python evaluation."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from orchestrator.query.where import columns_of, parse_where
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError

ROWS = [
    {"trial_id": "a", "val_accuracy": 0.97, "latency_ms_sweep": 0.1, "prune.method": "structured",
     "lora.rank": 0, "feasible": True, "started_at": datetime(2025, 1, 1, tzinfo=timezone.utc)},
    {"trial_id": "b", "val_accuracy": 0.96, "latency_ms_sweep": 0.3, "prune.method": "global",
     "lora.rank": 4, "feasible": False, "started_at": datetime(2025, 2, 1, tzinfo=timezone.utc)},
    {"trial_id": "c", "val_accuracy": 0.90, "latency_ms_sweep": 0.3, "prune.method": "structured",
     "lora.rank": 8, "feasible": None, "started_at": datetime(2025, 3, 1, tzinfo=timezone.utc)},
    {"trial_id": "d", "val_accuracy": None, "latency_ms_sweep": 0.05,
     "prune.method": "it's \"odd\"",
     "lora.rank": 2, "feasible": True, "started_at": None},
]  # fmt: skip
TABLE = pa.Table.from_pylist(
    [{"sweep_id": "s", "status": "ok", "is_baseline": False, **r} for r in ROWS],
    schema=RESULTS_SCHEMA,
)


def ids(expr: str) -> list[str]:
    return TABLE.filter(parse_where(expr, TABLE.schema)).column("trial_id").to_pylist()


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("val_accuracy >= 0.95", ["a", "b"]),
        ("val_accuracy >= 0.95 and latency_ms_sweep < 0.2", ["a"]),
        (
            'val_accuracy >= 0.95 and latency_ms_sweep < 0.2 or prune.method == "structured"',
            ["a", "c"],
        ),
        (
            'val_accuracy >= 0.95 and (latency_ms_sweep < 0.2 or prune.method == "global")',
            ["a", "b"],
        ),
        ("not val_accuracy < 0.95", ["a", "b"]),  # null val_accuracy stays out
        ("0.95 < val_accuracy", ["a", "b"]),  # literal on the left
        ("lora.rank != 0 AND lora.rank <= 4", ["b", "d"]),  # keywords in any case
        ("lora.rank == 4.0", ["b"]),
        ("latency_ms_sweep > 5e-2", ["a", "b", "c"]),
        ("latency_ms_sweep >= -1", ["a", "b", "c", "d"]),
        ("feasible", ["a", "d"]),
        ("feasible == false", ["b"]),
        ("not feasible", ["b"]),
        ("prune.method == 'it\\'s \"odd\"'", ["d"]),
        ('started_at >= "2025-02-01"', ["b", "c"]),
        ('started_at < "2025-01-15T12:00:00+00:00"', ["a"]),
        ("val_accuracy > latency_ms_sweep", ["a", "b", "c"]),  # column against column
        ("((val_accuracy > 0.95))", ["a", "b"]),
    ],
)
def test_filters(expr: str, expected: list[str]) -> None:
    assert ids(expr) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "position 1: the expression is empty"),
        ("val_accuracy >=", "position 16: expected a column or a value, found the end"),
        ("val_accuracy = 0.9", "position 14: '=' is not a comparison; use '=='"),
        ("(val_accuracy > 0.9", "expected '\\)' to close the '\\(' at 1"),
        (
            "val_accuracy > 0.9 latency_ms_sweep",
            "position 20: unexpected 'latency_ms_sweep'; expected and/or",
        ),
        ("val_accuracy > 0.9 && latency_ms_sweep < 1", "position 20: unexpected character '&'"),
        ("val_accuracy", "expected a comparison operator after 'val_accuracy'"),
        ("0.9 < 1", "a comparison needs a column on one side"),
        ("__import__('os').system('true')", "position 17: unexpected character '.'"),
        ("__import__ == 'os'", "unknown column '__import__'"),
        ("val_accuracy == null", "comparisons with null are always null"),
    ],
)
def test_syntax_errors_point_at_the_position(expr: str, message: str) -> None:
    with pytest.raises(SqueezerayError, match=message):
        parse_where(expr, TABLE.schema)


def test_error_message_shows_a_caret_under_the_problem() -> None:
    with pytest.raises(SqueezerayError) as info:
        parse_where("val_accuracy > 0.9 latency_ms_sweep", TABLE.schema)
    lines = str(info.value).splitlines()
    assert lines[1].strip() == "val_accuracy > 0.9 latency_ms_sweep"
    assert lines[2].index("^") == lines[1].index("latency_ms_sweep")


def test_unknown_column_lists_the_available_ones_and_suggests() -> None:
    with pytest.raises(SqueezerayError) as info:
        parse_where("acuracy > 0.9", TABLE.schema)
    text = str(info.value)
    assert "unknown column 'acuracy' (did you mean val_accuracy?)" in text
    assert "prune.method" in text and "latency_ms_sweep" in text


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (
            'val_accuracy > "high"',
            "'val_accuracy' is double, so compare it with a number, not 'high'",
        ),
        ("prune.method == 3", "'prune.method' is string, so compare it with a quoted string"),
        ("feasible == 1", "compare it with true or false"),
        ("started_at > 5", "an ISO date in quotes"),
        ('started_at > "yesterday"', "'yesterday' is not an ISO date/time"),
    ],
)
def test_type_errors(expr: str, message: str) -> None:
    with pytest.raises(SqueezerayError, match=message):
        parse_where(expr, TABLE.schema)


def test_columns_of() -> None:
    assert columns_of('a.b > 1 and not c == "x"') == ["a.b", "c"]
