"""Building results rows (RESULTS_SCHEMA) from trial outcomes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from orchestrator.store.schema import (
    CUSTOM_METRICS,
    KNOB_COLUMNS,
    LATENCY_COUNT_COLUMNS,
    LATENCY_FINAL_COLUMNS,
    METRIC_COLUMNS,
)

INT_METRICS = (
    "size_bytes",
    "params_total",
    "params_nonzero",
    "latency_rounds",
    "latency_repeats_sweep",
    "latency_repeats_final",
)


def now() -> datetime:
    return datetime.now(timezone.utc)


def _clean_metric(name: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(f):
        return None
    return int(f) if name in INT_METRICS else f


def trial_row(
    *,
    sweep_id: str,
    sweep_name: str,
    trial_id: str,
    task: str,
    started_at: datetime,
    result: Mapping[str, Any],
    code_version: str,
    feasible: bool | None,
    is_baseline: bool = False,
) -> dict[str, Any]:
    """One results row. `result` is what the trial reported (or a synthesised error result)."""
    params = dict(result.get("effective_params") or {})
    row: dict[str, Any] = {
        "sweep_id": sweep_id,
        "sweep_name": sweep_name,
        "trial_id": trial_id,
        "started_at": started_at,
        "finished_at": now(),
        "task": task,
        "status": str(result.get("status") or "error"),
        "error": result.get("error"),
        "error_log": result.get("error_log"),
        "is_baseline": is_baseline,
        "feasible": feasible,
        "runtime": result.get("runtime"),
        "eval_batch_size": result.get("eval_batch_size"),
        "compile_s": _clean_metric("compile_s", result.get("compile_s")),
        "params": json.dumps(params, sort_keys=True, default=str),
        "wall_s": _clean_metric("wall_s", result.get("wall_s")),
        "stage_keys": list(result.get("stage_keys") or []),
        "last_val_accuracy": _clean_metric("last_val_accuracy", result.get("last_val_accuracy")),
        "code_version": code_version,
    }
    for column in KNOB_COLUMNS:
        value = params.get(column)
        if column == "lora.rank" and value is not None:
            value = int(value)
        row[column] = value
    for column in (*METRIC_COLUMNS, *LATENCY_FINAL_COLUMNS, *LATENCY_COUNT_COLUMNS):
        row[column] = _clean_metric(column, result.get(column))
    custom = {n: _clean_metric(n, result.get(n)) for n in result.get("custom_metric_names") or []}
    row[CUSTOM_METRICS] = json.dumps(custom, sort_keys=True) if custom else None
    return row
