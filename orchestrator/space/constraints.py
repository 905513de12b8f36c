"""Constraints (`val_accuracy: ">= 0.95"`): checking rows, Optuna violations, the closest miss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Constraint = tuple[str, str, float]  # (metric column, operator, bound)


def constraint_met(op: str, value: float, bound: float) -> bool:
    return {
        ">=": value >= bound,
        ">": value > bound,
        "<=": value <= bound,
        "<": value < bound,
        "==": value == bound,
    }[op]


def violations(constraints: Sequence[Constraint], result: Mapping[str, Any]) -> list[float]:
    """One value per constraint: 0 when met, else how far off (> 0; Optuna's convention)."""
    out = []
    for column, op, bound in constraints:
        value = result.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(math.inf)
        elif constraint_met(op, float(value), bound):
            out.append(0.0)
        else:
            out.append(max(abs(float(value) - bound), 1e-12))
    return out


def feasible(constraints: Sequence[Constraint], result: Mapping[str, Any]) -> bool | None:
    """True when every constraint holds (None when there are no constraints)."""
    if not constraints:
        return None
    return all(v == 0.0 for v in violations(constraints, result))


def closest_miss(
    constraints: Sequence[Constraint], rows: Sequence[Mapping[str, Any]]
) -> str | None:
    """When no ok row meets every constraint: which constraint came closest, as a sentence.

    "Closest" is the smallest relative gap (gap / |bound|) of the best row per constraint.
    Returns None when some row is feasible or there are no constraints.
    """
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("is_baseline")]
    if not constraints or any(feasible(constraints, r) for r in ok):
        return None
    best: list[tuple[float, str]] = []
    for column, op, bound in constraints:
        values = [float(r[column]) for r in ok if r.get(column) is not None]
        if not values:
            best.append((math.inf, f"{column} {op} {bound:g} (no trial measured {column})"))
            continue
        nearest = max(values) if op in (">=", ">") else min(values)
        if op == "==":
            nearest = min(values, key=lambda v: abs(v - bound))
        gap = violations([(column, op, bound)], {column: nearest})[0]
        relative = gap / abs(bound) if bound else gap
        state = "met by some trial" if gap == 0 else f"best {nearest:g}, {gap:g} short"
        best.append((relative, f"{column} {op} {bound:g} ({state})"))
    unmet = [b for b in best if b[0] > 0] or best
    relative, text = min(unmet)
    return f"no trial met every constraint; the closest unmet one: {text}"
