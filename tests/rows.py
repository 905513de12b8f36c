"""Synthetic results rows for store, query and report tests (no Ray, no training).

`result_row` is one row with just the columns a test needs (the store fills the rest with
nulls); `make_rows` is a whole digits-like sweep with a front, failures and every knob.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def result_row(
    sweep: str, trial: str, minute: int = 0, *, start: datetime = T0, **values: Any
) -> dict[str, Any]:
    """One ok row of sweep `sweep` (trial "baseline" is the sweep's baseline row).

    It starts `minute` minutes after `start` and finishes one minute later; its metrics move
    with `minute` (test_accuracy = val_accuracy = 0.9 + minute/1000, size_bytes 1000 - minute,
    latency_ms_sweep 0.05 + minute/10_000), so rows written later are distinguishable; its one
    stage key is `k-<sweep>-<trial>`. `values` set or override any column.
    """
    row: dict[str, Any] = {
        "sweep_id": sweep,
        "sweep_name": sweep,
        "trial_id": trial,
        "started_at": start + timedelta(minutes=minute),
        "finished_at": start + timedelta(minutes=minute + 1),
        "task": "digits",
        "status": "ok",
        "is_baseline": trial == "baseline",
        "test_accuracy": 0.9 + minute / 1000,
        "val_accuracy": 0.9 + minute / 1000,
        "size_bytes": 1000 - minute,
        "latency_ms_sweep": 0.05 + minute / 10_000,
        "stage_keys": [f"k-{sweep}-{trial}"],
    }
    row.update(values)
    return row


def make_rows(
    sweep_id: str,
    n: int = 24,
    *,
    seed: int = 0,
    start: datetime = T0,
    task: str = "digits",
    failures: int = 2,
) -> list[dict[str, Any]]:
    """A sweep's rows with digits-like values: one baseline, `n` trials, the first `failures`
    of them failed.

    Accuracy falls with the prune ratio, size shrinks with pruning and int8, latency depends on
    the runtime: a front of a handful of trials, like a real sweep.
    """
    rng = random.Random(seed)
    name = sweep_id.split("-")[0]
    rows: list[dict[str, Any]] = [
        result_row(
            sweep_id,
            "baseline",
            start=start,
            sweep_name=name,
            finished_at=start + timedelta(seconds=3),
            task=task,
            runtime="eager",
            test_accuracy=0.9722,
            val_accuracy=0.9722,
            size_bytes=189_700,
            params_total=50_826,
            params_nonzero=50_826,
            latency_ms_sweep=0.026,
            latency_ms_sweep_p90=0.029,
            wall_s=2.1,
            stage_keys=None,
            code_version="test",
        )
    ]
    for i in range(n):
        ratio = round(rng.uniform(0.0, 0.9), 3)
        method = rng.choice(["l1_unstructured", "global", "structured"])
        mode = rng.choice(["none", "dynamic_int8", "static_int8"])
        runtime = rng.choice(["eager", "torchscript", "onnxruntime"])
        rank = rng.choice([0, 2, 4, 8])
        size = int(25_600 * (1 - 0.6 * ratio) * (0.3 if mode != "none" else 1.0))
        latency = {"eager": 0.023, "torchscript": 0.0125, "onnxruntime": 0.0063}[runtime]
        row = result_row(
            sweep_id,
            f"t{i:03d}",
            start=start + timedelta(seconds=5 + i),
            sweep_name=name,
            finished_at=start + timedelta(seconds=8 + i),
            task=task,
            feasible=True,
            runtime=runtime,
            **{
                "distill.temperature": rng.choice([1.0, 2.0, 4.0, 8.0]),
                "distill.alpha": rng.choice([0.3, 0.5, 0.7]),
                "prune.ratio": ratio,
                "prune.method": method,
                "lora.rank": rank,
                "quantize.mode": mode,
            },
            params=json.dumps({"prune.ratio": ratio, "prune.method": method}),
            test_accuracy=(
                accuracy := round(
                    0.975
                    - 0.06 * ratio**2
                    - (0.004 if mode != "none" else 0)
                    + rng.gauss(0, 0.003),
                    4,
                )
            ),
            val_accuracy=accuracy,  # one value for both splits: the expected fronts stay put
            size_bytes=size,
            params_total=2_410,
            params_nonzero=int(2_410 * (1 - ratio)),
            latency_ms_sweep=round(latency * rng.uniform(0.9, 1.1), 5),
            latency_ms_sweep_p90=round(latency * 1.2, 5),
            wall_s=round(rng.uniform(1, 4), 2),
            stage_keys=[f"teacher-{seed}", f"distill-{i % 3}", f"prune-{i}"],
            code_version="test",
        )
        if i < failures:
            row.update(
                status="error",
                error="RuntimeError: boom",
                test_accuracy=None,
                val_accuracy=None,
                size_bytes=None,
                latency_ms_sweep=None,
            )
        rows.append(row)
    return rows
