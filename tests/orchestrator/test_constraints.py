"""Constraint checks, Optuna violations and the closest-miss message (pure functions)."""

from __future__ import annotations

import math

from orchestrator.space.constraints import closest_miss, constraint_met, feasible, violations

ROWS = [
    {"status": "ok", "is_baseline": False, "val_accuracy": 0.95, "size_bytes": 9000},
    {"status": "ok", "is_baseline": False, "val_accuracy": 0.97, "size_bytes": 30000},
    {"status": "error", "is_baseline": False, "val_accuracy": None, "size_bytes": None},
    {"status": "ok", "is_baseline": True, "val_accuracy": 0.99, "size_bytes": 190000},
]


def test_operators() -> None:
    assert constraint_met(">=", 0.95, 0.95) and not constraint_met(">", 0.95, 0.95)
    assert constraint_met("<=", 5, 5) and not constraint_met("<", 5, 5)
    assert constraint_met("==", 1.0, 1.0)


def test_violations_are_zero_when_met_and_positive_gap_otherwise() -> None:
    cons = [("val_accuracy", ">=", 0.96), ("size_bytes", "<=", 10000)]
    gap, size_gap = violations(cons, ROWS[0])
    assert math.isclose(gap, 0.01) and size_gap == 0.0
    assert violations(cons, ROWS[1])[0] == 0.0
    assert violations(cons, ROWS[1])[1] == 20000
    assert violations(cons, ROWS[2]) == [math.inf, math.inf]
    # a strict bound exactly on the edge is a (tiny) violation, not a pass
    assert violations([("val_accuracy", ">", 0.95)], ROWS[0])[0] > 0


def test_feasible() -> None:
    assert feasible([], ROWS[0]) is None
    assert feasible([("val_accuracy", ">=", 0.9)], ROWS[0]) is True
    assert feasible([("val_accuracy", ">=", 0.96)], ROWS[0]) is False


def test_closest_miss_names_the_nearest_constraint() -> None:
    cons = [("val_accuracy", ">=", 0.98), ("size_bytes", "<=", 5000)]
    message = closest_miss(cons, ROWS)
    assert message is not None
    # accuracy is 0.01 short of 0.98 (1% relative); size is 4000 bytes over 5000 (80%).
    assert "val_accuracy >= 0.98" in message and "best 0.97" in message
    # baseline rows never count: its 0.99 accuracy would otherwise meet the constraint
    assert closest_miss([("val_accuracy", ">=", 0.96)], ROWS) is None


def test_closest_miss_when_every_single_constraint_is_met_by_some_trial() -> None:
    cons = [("val_accuracy", ">=", 0.96), ("size_bytes", "<=", 10000)]
    message = closest_miss(cons, ROWS)
    assert message is not None and "met by some trial" in message
