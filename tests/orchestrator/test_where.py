"""`--where` parsing: precedence, literals, types, errors; never Python evaluation."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from orchestrator.query.where import columns_of, parse_where
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError

ROWS = [
    {"trial_id": "a", "accuracy": 0.97, "latency_ms": 0.1, "prune.method": "structured",
     "lora.rank": 0, "feasible": True, "started_at": datetime(2025, 1, 1, tzinfo=timezone.utc)},
    {"trial_id": "b", "accuracy": 0.96, "latency_ms": 0.3, "prune.method": "global",
     "lora.rank": 4, "feasible": False, "started_at": datetime(2025, 2, 1, tzinfo=timezone.utc)},
    {"trial_id": "c", "accuracy": 0.90, "latency_ms": 0.3, "prune.method": "structured",
     "lora.rank": 8, "feasible": None, "started_at": datetime(2025, 3, 1, tzinfo=timezone.utc)},
    {"trial_id": "d", "accuracy": None, "latency_ms": 0.05, "prune.method": "it's \"odd\"",
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
        ("accuracy >= 0.95", ["a", "b"]),
        ("accuracy >= 0.95 and latency_ms < 0.2", ["a"]),
        ('accuracy >= 0.95 and latency_ms < 0.2 or prune.method == "structured"', ["a", "c"]),
        ('accuracy >= 0.95 and (latency_ms < 0.2 or prune.method == "global")', ["a", "b"]),
        ("not accuracy < 0.95", ["a", "b"]),  # null accuracy stays out
        ("0.95 < accuracy", ["a", "b"]),  # literal on the left
        ("lora.rank != 0 AND lora.rank <= 4", ["b", "d"]),  # keywords in any case
        ("lora.rank == 4.0", ["b"]),
        ("latency_ms > 5e-2", ["a", "b", "c"]),
        ("latency_ms >= -1", ["a", "b", "c", "d"]),
        ("feasible", ["a", "d"]),
        ("feasible == false", ["b"]),
        ("not feasible", ["b"]),
        ("prune.method == 'it\\'s \"odd\"'", ["d"]),
        ('started_at >= "2025-02-01"', ["b", "c"]),
        ('started_at < "2025-01-15T12:00:00+00:00"', ["a"]),
        ("accuracy > latency_ms", ["a", "b", "c"]),  # column against column
        ("((accuracy > 0.95))", ["a", "b"]),
    ],
)
def test_filters(expr: str, expected: list[str]) -> None:
    assert ids(expr) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "position 1: the expression is empty"),
        ("accuracy >=", "position 12: expected a column or a value, found the end"),
        ("accuracy = 0.9", "position 10: '=' is not a comparison; use '=='"),
        ("(accuracy > 0.9", "expected '\\)' to close the '\\(' at 1"),
        ("accuracy > 0.9 latency_ms", "position 16: unexpected 'latency_ms'; expected and/or"),
        ("accuracy > 0.9 && latency_ms < 1", "position 16: unexpected character '&'"),
        ("accuracy", "expected a comparison operator after 'accuracy'"),
        ("0.9 < 1", "a comparison needs a column on one side"),
        ("__import__('os').system('true')", "position 17: unexpected character '.'"),
        ("__import__ == 'os'", "unknown column '__import__'"),
        ("accuracy == null", "comparisons with null are always null"),
    ],
)
def test_syntax_errors_point_at_the_position(expr: str, message: str) -> None:
    with pytest.raises(SqueezerayError, match=message):
        parse_where(expr, TABLE.schema)


def test_error_message_shows_a_caret_under_the_problem() -> None:
    with pytest.raises(SqueezerayError) as info:
        parse_where("accuracy > 0.9 latency_ms", TABLE.schema)
    lines = str(info.value).splitlines()
    assert lines[1].strip() == "accuracy > 0.9 latency_ms"
    assert lines[2].index("^") == lines[1].index("latency_ms")


def test_unknown_column_lists_the_available_ones_and_suggests() -> None:
    with pytest.raises(SqueezerayError) as info:
        parse_where("acuracy > 0.9", TABLE.schema)
    text = str(info.value)
    assert "unknown column 'acuracy' (did you mean accuracy?)" in text
    assert "prune.method" in text and "latency_ms" in text


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ('accuracy > "high"', "'accuracy' is double, so compare it with a number, not 'high'"),
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
