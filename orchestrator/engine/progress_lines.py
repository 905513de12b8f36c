"""The texts of a sweep's progress: a finished trial's line, what runs now, durations.

Shared by the terminal bar and the plain lines written where stderr is not a terminal
(`engine.progress.SweepProgress`). Pure functions of the progress events' data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.query.steadiness import IMPRECISE_MARK, sweep_latency_imprecise
from orchestrator.space.metrics import VALIDATION_PREFIX


def metric_label(column: str) -> str:
    """`val_accuracy` -> "val accuracy", `val_f1_macro` -> "val f1_macro"."""
    return column.replace(VALIDATION_PREFIX, "val ", 1)


def metric_value(data: Mapping[str, Any], column: str) -> float | None:
    """`column` of a finished trial's row or result (a task metric may sit in the row's
    `custom_metrics` JSON); None when absent or not finite."""
    value = data.get(column)
    if value is None and data.get("custom_metrics"):
        value = json.loads(str(data["custom_metrics"])).get(column)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def trial_line(
    data: Mapping[str, Any], quality: str, knobs: Sequence[str], *, done: int, total: int | None
) -> str:
    """One finished trial: id, status, how many are done, then its validation metric
    (`quality`, plus val_accuracy when that is another column), size and in-sweep latency, or
    its error's first line; its values of the searched `knobs` last. E.g. `trial 3f2a_00002
    ok (3/4 done): val accuracy 0.9123, size 45.2 MB, latency 11.3 ms; prune.ratio=0.35
    quantize.mode=dynamic_int8`."""
    from rich.filesize import decimal

    status = str(data.get("status") or "?")
    head = f"trial {data.get('trial_id')} {status} ({done}/{total if total else '?'} done)"
    if status != "ok":
        first = "".join(str(data.get("error") or "").strip().splitlines()[:1])
        log = f" (log: {data['error_log']})" if data.get("error_log") else ""
        return f"{head}: {first}{log}"
    parts = [
        f"{metric_label(c)} {v:.4f}"
        for c in dict.fromkeys([quality, "val_accuracy"])
        if (v := metric_value(data, c)) is not None
    ]
    size, latency = metric_value(data, "size_bytes"), metric_value(data, "latency_ms_sweep")
    if size is not None:
        parts.append(f"size {decimal(int(size))}")
    if latency is not None:
        # the front table's `~`: timed on a machine too busy to rank it (its CI above 10%)
        mark = IMPRECISE_MARK if sweep_latency_imprecise(data) else ""
        parts.append(f"latency {mark}{latency:.3g} ms")
    drawn = knobs_text(data.get("params"), knobs)
    return f"{head}: {', '.join(parts) or 'no metrics'}{f'; {drawn}' if drawn else ''}"


def knobs_text(params: Any, knobs: Sequence[str]) -> str:
    """The `knobs` of a row's `params` (JSON of its effective knobs) as `prune.ratio=0.35
    lora.rank=4` (a knob the trial's pipeline left out is not shown)."""
    if not params:
        return ""
    try:
        values = json.loads(params) if isinstance(params, str) else dict(params)
    except (TypeError, ValueError):
        return ""
    return " ".join(
        f"{k}={f'{v:.4g}' if isinstance(v, float) else v}"
        for k in knobs
        if (v := values.get(k)) is not None
    )


def running_text(
    trials: int,
    stages: Sequence[str],
    queued: int,
    *,
    sharing: Sequence[int] = (),
    progress: Sequence[str] = (),
) -> str:
    """ "running 4: distill ×2, prune, teacher (shared by 3 trials; epoch 1/3, batch 40/400)
    (+1 queued)": the running trials and the stage tasks running for them now, by stage name.
    A stage shared by trials runs once; `sharing`, beside `stages`, says how many trials wait
    on each task, so a shared one says so instead of reading as one run per trial;
    `progress`, beside `stages`, where each task is (`stages.progress`; "" when it has not
    said)."""
    from collections import Counter

    text = "running" if stages and not trials else f"running {trials}"
    if stages:
        counts = Counter(stages)
        waiting: Counter[str] = Counter()
        where: dict[str, list[str]] = {}
        for name, n in zip(stages, sharing, strict=False):
            waiting[name] += n
        for name, said in zip(stages, progress, strict=False):
            if said:
                where.setdefault(name, []).append(said)
        parts = []
        for name, n in sorted(counts.items()):
            notes = [f"shared by {waiting[name]} trials"] if waiting[name] > n else []
            notes += where.get(name, [])
            parts.append(
                (name if n == 1 else f"{name} ×{n}") + (f" ({'; '.join(notes)})" if notes else "")
            )
        text += ": " + ", ".join(parts)
    if queued:
        text += f" (+{queued} queued)"
    return text


def duration_text(seconds: float) -> str:
    """ "45 s", "4m10s", "1h02m"."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
