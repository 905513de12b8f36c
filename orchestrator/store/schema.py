"""The Arrow schemas of squeezeray's Parquet tables (results and stages).

Results: one row per trial (failed ones too) plus one `is_baseline` row per sweep. Knob columns
are named `stage.param`; knobs outside the fixed list are kept in the `params` JSON column.

What the measured columns count (`stages.metrics`; the latencies: `stages.latency`):
- `size_bytes`: the deployed artifact's bytes (the ONNX model for ONNX Runtime, else
  `torch.save(state_dict)` of the checkpoint) compressed with zstd at level 1 (zstd's fastest
  regular level; streamed, linear in the model's bytes). zstd turns zeros (sparsity) and int8
  weights into fewer bytes, so both show; it is not the file's uncompressed size. Rows written
  by earlier versions used level 3 (up to 0.7% smaller on float/int8 models, 2% on sparse
  ones) or, before that, level 19 (5-15% smaller on 70%-sparse ones; docs/scale.md).
- `latency_ms_sweep`/`latency_ms_sweep_p90`: median/p90 milliseconds of single-thread calls
  measured in the sweep (every row), time-boxed (`latency.time_cap` seconds of timed calls, at
  most `latency.repeats`, fewer once the median's 95% confidence interval is within
  +-`latency.precision` of it); `latency_repeats_sweep`: how many timed calls are behind them,
  `latency_ci_sweep`: that interval's half-width / the median (the precision reached; above
  the space's precision when the time cap came first, on a noisy machine).
- `latency_ms_final`/`latency_ms_final_p90`: the final phase's re-measurement (front and
  baseline rows only), with `latency_repeats_final`: the timed calls of all its rounds.
"""

from __future__ import annotations

import pyarrow as pa

# Knobs that get their own typed column (others live in the `params` JSON string).
KNOB_COLUMNS: dict[str, pa.DataType] = {
    "distill.temperature": pa.float64(),
    "distill.alpha": pa.float64(),
    "prune.ratio": pa.float64(),
    "prune.method": pa.string(),
    "lora.rank": pa.int64(),
    "quantize.mode": pa.string(),
}

# The metric columns. Each says which split or which measurement it holds (one rule for every
# place a user names a metric: orchestrator.space.metrics): `val_accuracy` is the validation
# split (searches, constraints, fronts and --pick choose on it), `test_accuracy` the test split
# (reported only); `latency_ms_sweep` the in-sweep measurement every row has (chosen on).
METRIC_COLUMNS: dict[str, pa.DataType] = {
    "val_accuracy": pa.float64(),
    "test_accuracy": pa.float64(),
    "size_bytes": pa.int64(),
    "params_total": pa.int64(),
    "params_nonzero": pa.int64(),
    "quantized_fraction": pa.float64(),  # share of weight elements stored as int8, [0, 1]
    "latency_ms_sweep": pa.float64(),  # median, measured in the sweep (every row)
    "latency_ms_sweep_p90": pa.float64(),
    "latency_ms_final": pa.float64(),  # median of the final phase's round medians (front rows)
    "latency_ms_final_p90": pa.float64(),
}
# The rest of the final latency phase (rows of the front and the baseline; null elsewhere): the
# spread of the round medians (MAD / median), the paired per-round speedup against the
# baseline (the one latency ratio squeezeray reports), the rounds.
LATENCY_FINAL_COLUMNS: dict[str, pa.DataType] = {
    "latency_cv": pa.float64(),
    "speedup": pa.float64(),
    "latency_rounds": pa.int64(),
}
# How each latency was measured: the timed calls behind latency_ms_sweep (every measured row)
# and behind latency_ms_final (all the final phase's rounds; its rows only), and how precisely
# latency_ms_sweep is known: the half-width of its 95% confidence interval / the median
# (stages.latency.median_ci; null on rows written before it was recorded).
LATENCY_COUNT_COLUMNS: dict[str, pa.DataType] = {
    "latency_repeats_sweep": pa.int64(),
    "latency_repeats_final": pa.int64(),
    "latency_ci_sweep": pa.float64(),
}
DEFAULT_DIRECTIONS: dict[str, str] = {
    "val_accuracy": "max",
    "test_accuracy": "max",
    "size_bytes": "min",
    "params_total": "min",
    "params_nonzero": "min",
    "quantized_fraction": "max",
    "latency_ms_sweep": "min",
    "latency_ms_sweep_p90": "min",
    "latency_ms_final": "min",
    "latency_ms_final_p90": "min",
    "speedup": "max",
}
# Columns of results written before the names said their split or measurement: read beside
# the schema and folded into the new columns (orchestrator.store.results.upgrade_columns).
# accuracy was the test split; latency_ms/latency_ms_p90/latency_repeats held the final
# phase's figures on re-measured rows (latency_rounds set) and the in-sweep ones elsewhere.
LEGACY_COLUMNS: dict[str, pa.DataType] = {
    "accuracy": pa.float64(),
    "latency_ms": pa.float64(),
    "latency_ms_p90": pa.float64(),
    "latency_repeats": pa.int64(),
}

CUSTOM_METRICS = "custom_metrics"

STATUSES = ("ok", "error", "timeout", "stopped", "lost")
"""A row's `status`: `ok` (measured), `error` (the trial's model or data failed: a stage raised,
or its worker crashed on every retry), `timeout` (its stages ran past --trial-timeout),
`stopped` (ASHA stopped it early) or `lost` (the infrastructure failed it, not its model: the
stage cache actor, a node, the owner of its objects or Ray itself died and did not come back
in time; `orchestrator.engine.faults`). Every status but `lost` is final; `--resume` runs a
`lost` trial again under its trial id (its new row replaces the old on read)."""

LOST = "lost"
RERUN_STATUSES = (LOST,)
"""Statuses `--resume` runs again (a resumed sweep does not count or replay them as done)."""

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("sweep_id", pa.string(), nullable=False),
        pa.field("sweep_name", pa.string()),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("task", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),  # the whole message, at most 2,000 characters
        pa.field("error_log", pa.string()),  # full traceback: <storage>/logs/<sweep>/<trial>.txt
        pa.field("is_baseline", pa.bool_(), nullable=False),
        pa.field("feasible", pa.bool_()),
        pa.field("runtime", pa.string()),
        # the batch size the row's accuracies and task metrics were measured at
        # (stages.Task.eval_batch_size: per-batch int8 activations make them depend on it)
        pa.field("eval_batch_size", pa.int64()),
        # seconds torch.compile took when the measuring process loaded the model (runtime
        # "compiled"; null for the others): paid once per process at load, not in latency_ms
        pa.field("compile_s", pa.float64()),
        *(pa.field(name, dtype) for name, dtype in KNOB_COLUMNS.items()),
        pa.field("params", pa.string()),  # JSON of every knob of the trial
        *(pa.field(name, dtype) for name, dtype in METRIC_COLUMNS.items()),
        *(pa.field(name, dtype) for name, dtype in LATENCY_FINAL_COLUMNS.items()),
        *(pa.field(name, dtype) for name, dtype in LATENCY_COUNT_COLUMNS.items()),
        # The task's own metric (stages.Metric) as JSON {name: test value, val_<name>: val
        # value}; `load_results` expands it into float64 columns test_<name> and val_<name>.
        pa.field(CUSTOM_METRICS, pa.string()),
        pa.field("wall_s", pa.float64()),
        pa.field("stage_keys", pa.list_(pa.string())),  # the stages the trial completed
        # validation accuracy after the trial's last completed stage (every status: a stopped
        # or failed trial shows how far it got)
        pa.field("last_val_accuracy", pa.float64()),
        pa.field("code_version", pa.string()),
    ]
)

STAGES_SCHEMA = pa.schema(
    [
        pa.field("stage_key", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("params", pa.string()),  # JSON
        pa.field("parent_key", pa.string()),
        pa.field("sweep_id", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("wall_s", pa.float64()),
        pa.field("cpu_s", pa.float64()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)

# What a results read asks the files for: the schema plus the legacy columns old files hold.
RESULTS_READ_SCHEMA = pa.schema(
    [*RESULTS_SCHEMA, *(pa.field(name, dtype) for name, dtype in LEGACY_COLUMNS.items())]
)
