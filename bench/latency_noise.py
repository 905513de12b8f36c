"""Benchmark 3: latency measurement noise, alone and beside a running sweep.

One child process trains the digits teacher once, then measures the same model's batch-1
single-thread latency `n` times (each a median of the sweep's default 300 timed calls after 50
warm-up calls, the measure task's settings), `interval_s` apart. Conditions, each a fresh child:

- alone: nothing else of ours runs;
- beside-1cpu: a squeezeray sweep on a 1-CPU embedded Ray runs in another process (one core
  busy; the other free, as for the measure task inside a 2-CPU sweep, which holds one CPU);
- beside-2cpu: a 2-CPU sweep runs beside it (both cores busy: the measurement is oversubscribed).

Each condition is measured unpinned (as the orchestrator's measure task runs) and pinned to one
core (`os.sched_setaffinity`), in the eager runtime and in ONNX Runtime. Reported per case: CV
(stdev / mean of the n medians), and the median shift vs alone.

The final latency phase (what a sweep now does when its last trial ends), two ways:

- rounds: the same two models timed by `stages.latency.interleaved_latency` (7 interleaved
  rounds of 300 calls, pinned, nothing else of ours running): CV across rounds per model, and
  the paired per-round ONNX/eager speedup with its spread;
- sweep: a real sweep (`quick`, random search) on an embedded Ray; for every front row the CV
  across its final rounds (latency_cv) and how far its in-sweep figure (latency_ms_sweep) was
  from the final one (latency_ms).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    run_child,
    scratch_dir,
    spread,
    stop_group,
    wait_for_quiet,
    write_result,
)

N = 10
INTERVAL_S = 1.0
SWEEP_WARMUP_S = 12.0  # Ray start-up + the first stages, so the sweep is busy when we measure


def child_latency(payload: dict[str, Any]) -> dict[str, Any]:
    """Train the digits teacher once; measure its latency n times per runtime and pinning."""
    import torch

    from stages import get_stage
    from stages.base import StageInput
    from stages.latency import measure_latency
    from stages.tasks import load_task

    torch.set_num_threads(1)
    task = load_task(payload.get("task", "digits"))
    spec = get_stage("teacher")
    teacher = spec.run(
        StageInput(task=task, parent=None, seed=0),
        spec.make_params({"epochs": int(payload.get("epochs", 40))}),
    ).checkpoint
    export = get_stage("export")
    models = {
        "eager": teacher,
        "onnxruntime": export.run(
            StageInput(task=task, parent=teacher, teacher=teacher, seed=0),
            export.make_params({"runtime": "onnxruntime"}),
        ).checkpoint,
    }
    start_at = float(payload.get("start_at", 0.0))
    while time.time() < start_at:
        time.sleep(0.2)
    all_cpus = os.sched_getaffinity(0)
    out: dict[str, Any] = {}
    n, interval = int(payload["n"]), float(payload["interval_s"])
    for i in range(n):
        for pinned in (False, True):
            os.sched_setaffinity(0, {max(all_cpus)} if pinned else all_cpus)
            for runtime, ckpt in models.items():
                r = measure_latency(task, ckpt, warmup=50, repeats=300, threads=1)
                case = out.setdefault(f"{runtime}{'-pinned' if pinned else ''}", [])
                load = os.getloadavg()[0]
                case.append({"median_ms": r.median_ms, "p90_ms": r.p90_ms, "load": load})
        os.sched_setaffinity(0, all_cpus)
        if i < n - 1:
            time.sleep(interval)
    return out


def child_rounds(payload: dict[str, Any]) -> dict[str, Any]:
    """The digits teacher (eager and ONNX Runtime), timed in interleaved rounds `n` times."""
    import torch

    from stages import get_stage
    from stages.base import StageInput
    from stages.latency import interleaved_latency
    from stages.tasks import load_task

    torch.set_num_threads(1)
    task = load_task("digits")
    spec = get_stage("teacher")
    teacher = spec.run(
        StageInput(task=task, parent=None, seed=0),
        spec.make_params({"epochs": int(payload.get("epochs", 40))}),
    ).checkpoint
    export = get_stage("export")
    onnx = export.run(
        StageInput(task=task, parent=teacher, teacher=teacher, seed=0),
        export.make_params({"runtime": "onnxruntime"}),
    ).checkpoint
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cpus)})  # as the final latency task pins its worker
    runs = []
    for _ in range(int(payload["n"])):
        eager_r, onnx_r = interleaved_latency(
            task, [teacher, onnx], rounds=int(payload["rounds"]), warmup=50, repeats=300
        )
        runs.append(
            {
                "eager": {"median_ms": eager_r.median_ms, "cv": eager_r.cv},
                "onnxruntime": {"median_ms": onnx_r.median_ms, "cv": onnx_r.cv},
                "speedup_onnx": onnx_r.speedup,
                "load": os.getloadavg()[0],
            }
        )
    os.sched_setaffinity(0, cpus)
    return {"runs": runs}


def child_sweep_final(payload: dict[str, Any]) -> dict[str, Any]:
    """A sweep with the final latency phase; per front row: latency_cv and sweep vs final."""
    from orchestrator.engine.runtime import init_ray
    from orchestrator.engine.sweep import execute_sweep, prepare_sweep
    from orchestrator.space.options import SweepOptions

    sweep = prepare_sweep(
        payload["space"],
        SweepOptions.build(
            trials=payload["trials"],
            seed=0,
            algorithm="random",
            storage=payload["storage"],
            name="bench-final",
            num_cpus=payload["num_cpus"],
        ),
    )
    init_ray(address=None, num_cpus=payload["num_cpus"])
    t0 = time.perf_counter()
    outcome = execute_sweep(sweep)
    wall_s = time.perf_counter() - t0
    rows = [r for r in outcome.table.to_pylist() if r["latency_rounds"]]
    return {
        "wall_s": wall_s,
        "trials": payload["trials"],
        "front_models": outcome.summary.latency_final_models,
        "rows": [
            {
                "trial_id": r["trial_id"],
                "baseline": r["is_baseline"],
                "runtime": r["runtime"],
                "latency_ms_final": r["latency_ms_final"],
                "latency_ms_sweep": r["latency_ms_sweep"],
                "latency_cv": r["latency_cv"],
                "speedup": r["speedup"],
                "sweep_vs_final": r["latency_ms_sweep"] / r["latency_ms_final"] - 1.0,
            }
            for r in rows
        ],
    }


def final_phase(
    *,
    runs: int = 5,
    rounds: int = 7,
    epochs: int = 40,
    space: str | None = "quick",
    trials: int = 8,
    inprocess: bool = False,
) -> dict[str, Any]:
    """The final latency phase, as interleaved rounds alone (`runs` times) and inside a real
    sweep of `space` (None: no sweep)."""
    timed = run_child(
        "bench.latency_noise:child_rounds",
        {"n": runs, "rounds": rounds, "epochs": epochs},
        inprocess=inprocess,
    )["runs"]
    out: dict[str, Any] = {
        "rounds": {
            "rounds": rounds,
            "eager_cv": spread([r["eager"]["cv"] for r in timed]),
            "onnxruntime_cv": spread([r["onnxruntime"]["cv"] for r in timed]),
            "speedup_onnx": spread([r["speedup_onnx"] for r in timed]),
            "raw": timed,
        }
    }
    if space is None:
        return out
    storage = scratch_dir("noise-final") / "store"
    sweep = run_child(
        "bench.latency_noise:child_sweep_final",
        {"space": space, "trials": trials, "num_cpus": 2, "storage": str(storage)},
        inprocess=inprocess,
    )
    models = [r for r in sweep["rows"] if not r["baseline"]]
    out["sweep"] = {
        "space": space,
        "front_cv": spread([r["latency_cv"] for r in sweep["rows"]]),
        "sweep_vs_final_abs": spread([abs(r["sweep_vs_final"]) for r in models] or [0.0]),
        **sweep,
    }
    return out


def _start_sweep(num_cpus: int, log: Path) -> subprocess.Popen[bytes]:
    """A default-space squeezeray sweep in its own process group (so it can be stopped whole)."""
    payload = scratch_dir("noise") / "payload.json"
    payload.write_text(
        json.dumps(
            {
                "space": "default",
                "trials": 24,
                "seed": 0,
                "algorithm": "random",
                "num_cpus": num_cpus,
                "storage": str(payload.parent / "store"),
            }
        )
    )
    code = "import bench.common as c; c.child_main()"
    target = "bench.sweep_vs_naive:child_squeezeray"
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", code, target, str(payload), str(payload.parent / "out.json")],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run(*, smoke: bool = False, results_dir: Any = None) -> dict[str, Any]:
    """alone / beside-1cpu / beside-2cpu, each n measurements; writes the JSON."""
    n, interval = (2, 0.0) if smoke else (N, INTERVAL_S)
    conditions: dict[str, Any] = {}
    payload: dict[str, Any] = {"n": n, "interval_s": interval, "epochs": 2 if smoke else 40}
    conditions["alone"] = run_child("bench.latency_noise:child_latency", payload, inprocess=smoke)
    for cpus in () if smoke else (1, 2):
        log = scratch_dir("noise-log") / "sweep.log"
        waited_s, busy = wait_for_quiet()
        proc = _start_sweep(cpus, log)
        try:
            # The child trains its model while the sweep starts, then waits until it is busy.
            measured = run_child(
                "bench.latency_noise:child_latency",
                {**payload, "start_at": time.time() + SWEEP_WARMUP_S},
                quiet=False,  # the sweep beside it is the point
            )
            measured["quiet_wait"] = {"waited_s": waited_s, "busy_cores_at_start": busy}
        finally:
            still_running = proc.poll() is None
            stop_group(proc)
        if not still_running:
            measured["warning"] = "the sweep finished before the measurements did"
        conditions[f"beside-{cpus}cpu"] = measured
    summary: dict[str, Any] = {}
    for condition, cases in conditions.items():
        for case, values in cases.items():
            if case in ("warning", "quiet_wait"):
                continue
            medians = [v["median_ms"] for v in values]
            alone = spread([v["median_ms"] for v in conditions["alone"][case]])["median"]
            s = spread(medians)
            summary[f"{condition}/{case}"] = {
                "median_ms": spread(medians),
                "cv": s["cv"],
                "median_shift": s["median"] / alone - 1.0,
                "p90_over_median": spread([v["p90_ms"] / v["median_ms"] for v in values]),
                "load_1min": spread([v["load"] for v in values]),
            }
    final = (
        final_phase(runs=1, rounds=3, epochs=2, space=None, inprocess=True)
        if smoke
        else final_phase()
    )
    out = {
        "final_phase": final,
        "n": n,
        "interval_s": interval,
        "warmup": 50,
        "repeats": 300,
        "model": "digits teacher MLP [256,128], eager and ONNX Runtime",
        "goal_cv": 0.05,
        "summary": summary,
        "raw": conditions,
        "command": "python -m bench --only latency_noise",
    }
    write_result("latency_noise_smoke" if smoke else "latency_noise", out, results_dir=results_dir)
    return out
