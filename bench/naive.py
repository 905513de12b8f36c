"""The naive baseline: what a user writes without squeezeray.

One plain Ray Tune function trainable per trial, holding one CPU, that runs the whole pipeline
from scratch in-process (teacher -> ... -> export, calling each stage's function directly) and
then measures the final model, exactly as a trial's measure task does. Nothing is shared
between trials: every trial trains its own teacher and its own KD student.

The configurations are given explicitly (each trial is one index of a grid), so the naive run
and a squeezeray run can be made to evaluate exactly the same knobs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

StageParams = dict[str, dict[str, Any]]  # stage -> its full params, in pipeline order
ROW_KEYS = ("index", "accuracy", "size_bytes", "latency_ms", "runtime", "stage_s", "trial_s")


def stage_params_from_row(params_json: Mapping[str, Any], pipeline: Sequence[str]) -> StageParams:
    """A results row's effective params ("stage.param" -> value) -> {stage: params} in order."""
    out: StageParams = {stage: {} for stage in pipeline}
    for name, value in params_json.items():
        stage, _, param = name.partition(".")
        if stage in out:
            out[stage][param] = value
    return out


def run_pipeline_inprocess(
    task_name: str,
    config: StageParams,
    *,
    seed: int,
    latency: Mapping[str, int],
    threads: int = 1,
) -> dict[str, Any]:
    """Every stage of `config` in order, then accuracy/size/latency; with per-stage timings."""
    import torch

    from stages import get_stage
    from stages.base import StageInput
    from stages.metrics import evaluate
    from stages.tasks import load_task

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    task = load_task(task_name)
    parent = teacher = None
    timings: dict[str, float] = {}
    for stage, values in config.items():
        spec = get_stage(stage)
        s0 = time.perf_counter()
        out = spec.run(
            StageInput(task=task, parent=parent, teacher=teacher, device="cpu", seed=seed),
            spec.make_params(values),
        )
        timings[stage] = time.perf_counter() - s0
        parent = out.checkpoint
        if stage == "teacher":
            teacher = out.checkpoint
    assert parent is not None, "a pipeline has at least one stage"
    m0 = time.perf_counter()
    metrics = evaluate(
        task,
        parent,
        warmup=int(latency.get("warmup", 50)),
        repeats=int(latency.get("repeats", 300)),
        threads=int(latency.get("threads", 1)),
    )
    timings["measure"] = time.perf_counter() - m0
    return {
        "accuracy": metrics.accuracy,
        "size_bytes": metrics.size_bytes,
        "latency_ms": metrics.latency_ms,
        "runtime": metrics.runtime,
        "stage_s": timings,
        "trial_s": time.perf_counter() - t0,
    }


def naive_trial(
    config: dict[str, Any],
    *,
    configs: Sequence[StageParams],
    task_name: str,
    seed: int,
    latency: Mapping[str, int],
) -> None:
    """The Tune function trainable: one whole pipeline per trial."""
    from ray import tune

    result = run_pipeline_inprocess(
        task_name, configs[int(config["index"])], seed=seed, latency=latency
    )
    tune.report({"index": int(config["index"]), **result})


def run_naive(
    task_name: str,
    configs: Sequence[StageParams],
    *,
    seed: int,
    latency: Mapping[str, int],
    storage: str,
    cpus_per_trial: float = 1.0,
) -> dict[str, Any]:
    """Run the configs as a plain Tune sweep on the running Ray; wall time and per-trial rows."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(
            naive_trial, configs=list(configs), task_name=task_name, seed=seed, latency=latency
        ),
        {"cpu": cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(list(range(len(configs))))},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name="naive", storage_path=storage, verbose=0),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    for i in range(len(grid)):
        result = grid[i]
        if result.error is not None:
            rows.append({"error": repr(result.error)})
            continue
        metrics: dict[str, Any] = dict(result.metrics or {})
        rows.append({k: metrics.get(k) for k in ROW_KEYS})
    rows.sort(key=lambda r: r.get("index", -1))
    return {
        "wall_s": wall_s,
        "trials": len(configs),
        "stage_executions": sum(len(c) for c in configs),
        "errors": sum("error" in r for r in rows),
        "rows": rows,
    }
