"""When a row's final latency is too unsteady to read: `latency_unsteady`, the one flag.

The final latency phase records `latency_cv`, the robust spread of a model's round medians
(`stages.latency.robust_cv`). Above `LATENCY_CV_UNSTEADY` the rounds disagree so much that the
row's `latency_ms_final`, and a `speedup` that uses it (the model's or its baseline's), are not
to be trusted: the front table marks such cells with `!` and the model card says
`latency_unsteady: true`. Measured single-thread noise on a quiet host is 8-11%
(stages/metrics.py); a flagged row wants more `latency.rounds` or a quieter node
(`--latency-resource`).

The in-sweep figure every row has, `latency_ms_sweep`, carries `latency_ci_sweep`: how
precisely its median is known (the half-width of its 95% confidence interval / the median).
Timing stops once that is within `latency.precision` (2%); a row whose time cap came first with
an interval wider than `LATENCY_CI_IMPRECISE` (10%, the run-to-run noise of a quiet host) was
timed on a machine too busy to rank it on latency: `sweep_latency_imprecise`, marked `~`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

LATENCY_CV_UNSTEADY = 0.25  # latency_cv above this: the row's final latency is unsteady
UNSTEADY_MARK = "!"
LATENCY_CI_IMPRECISE = 0.10  # latency_ci_sweep above this: the in-sweep median is imprecise
IMPRECISE_MARK = "~"


def latency_unsteady(row: Mapping[str, Any] | None) -> bool | None:
    """True when the row's latency_cv is above `LATENCY_CV_UNSTEADY`, False when at or below,
    None when the row was not re-measured (no latency_cv)."""
    cv = None if row is None else row.get("latency_cv")
    if cv is None or (isinstance(cv, float) and math.isnan(cv)):
        return None
    return float(cv) > LATENCY_CV_UNSTEADY


def speedup_unsteady(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> bool:
    """True when the row's paired speedup rests on an unsteady figure: its own or its
    baseline's (`latency_unsteady`)."""
    return bool(latency_unsteady(row)) or bool(latency_unsteady(baseline))


def sweep_latency_imprecise(row: Mapping[str, Any] | None) -> bool | None:
    """True when the row's latency_ci_sweep is above `LATENCY_CI_IMPRECISE`, False when at or
    below, None when the row has none (not measured, or written before it was recorded)."""
    ci = None if row is None else row.get("latency_ci_sweep")
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return None
    return float(ci) > LATENCY_CI_IMPRECISE
