"""Every quantize mode side by side: size, latency in each runtime it deploys to, accuracy.

    python -m bench.quantize_modes [--tasks digits,digits-cnn,tests.zoo:transformer,...]
        [--compiled-tasks digits,...] [--repeats N] [--out DIR]

For each task: a teacher trained briefly (`--epochs`), then every `quantize.mode` run as a Ray
stage task runs it (`stages.runner.run_stage`: the checkpoint's bytes must rebuild its model).
Each result is measured in every runtime it can deploy to: `eager`, `torchscript` (tracing;
a mode whose model does not trace is recorded as refused with the reason), `compiled`
(`torch.compile`, Inductor; its compile time is recorded apart as `compile_s`, paid once at
load per process; only on `--compiled-tasks`, as each compile costs seconds to a minute here)
and `onnxruntime` (the float model exported, and the two ONNX modes). Latency is the median of
`--repeats` single-thread batch-1 calls after a warm-up, on one input batch per call cycled
over test samples; accuracy is the test split's through that runtime, and the delta is against
the float model in eager. `dynamic_int8` is torch.ao's `quantize_dynamic` (today's torch.ao
figure; the FX graph-mode static_int8/qat it had beside it were replaced by PT2E).

Writes `quantize_modes.json` and `quantize_modes.md` under `--out` (default bench/results).
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, machine_info, write_result
from stages.base import StageInput
from stages.batches import select, stack_samples
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.metrics import size_bytes
from stages.names import ONNX_QUANT_MODES, QUANTIZE_MODES
from stages.runner import run_stage
from stages.runtime import make_predictor
from stages.tasks import Task, load_task

TASKS = "digits,digits-cnn,tests.zoo:transformer,tests.zoo:resnet"
TORCH_RUNTIMES = ("eager", "torchscript", "compiled")


def _teacher(task: Task, epochs: int) -> ModelCheckpoint:
    from stages.teacher import SPEC as TEACHER

    out, _ = run_stage(
        TEACHER, StageInput(task=task, parent=None), TEACHER.make_params({"epochs": epochs})
    )
    return out.checkpoint


def _quantized(task: Task, parent: ModelCheckpoint, mode: str) -> tuple[ModelCheckpoint, float]:
    from stages.quantize import SPEC

    start = time.perf_counter()
    params = SPEC.make_params({"mode": mode, "calibration_batches": 4, "qat_epochs": 1})
    _out, data = run_stage(SPEC, StageInput(task=task, parent=parent), params)
    return ModelCheckpoint.from_bytes(data), time.perf_counter() - start


def _float_onnx(task: Task, parent: ModelCheckpoint) -> ModelCheckpoint:
    from stages.export import SPEC as EXPORT

    out, _ = run_stage(
        EXPORT, StageInput(task=task, parent=parent), EXPORT.make_params({"runtime": "onnxruntime"})
    )
    return out.checkpoint


def _latency(task: Task, ckpt: ModelCheckpoint, *, repeats: int) -> dict[str, Any]:
    """{latency_ms, latency_ms_p90, accuracy, compile_s} of `ckpt` in its runtime."""
    predictor = make_predictor(task, ckpt)
    n = min(16, len(task.test))  # type: ignore[arg-type]
    samples = stack_samples([task.test[i][0] for i in range(n)])
    inputs = [predictor.prepare(select(samples, slice(i, i + 1))) for i in range(n)]
    for i in range(max(10, repeats // 10)):
        predictor.run_native(inputs[i % len(inputs)])
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        predictor.run_native(inputs[i % len(inputs)])
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "latency_ms": round(statistics.median(times), 4),
        "latency_ms_p90": round(times[int(0.9 * (len(times) - 1))], 4),
        "accuracy": round(predictor.accuracy(task.test), 4),
        "compile_s": round(predictor.compile_s, 2) if predictor.compile_s is not None else None,
    }


def _runtimes(mode: str, compiled: bool) -> tuple[str, ...]:
    if mode in ONNX_QUANT_MODES:
        return ("onnxruntime",)
    runtimes = TORCH_RUNTIMES if compiled else ("eager", "torchscript")
    return (*runtimes, "onnxruntime") if mode == "none" else runtimes


def _task_rows(name: str, *, epochs: int, repeats: int, compiled: bool) -> list[dict[str, Any]]:
    task = load_task(name)
    parent = _teacher(task, epochs)
    rows: list[dict[str, Any]] = []
    float_acc: float | None = None
    for mode in QUANTIZE_MODES:
        base = {"task": name, "mode": mode}
        try:
            ckpt, quantize_s = _quantized(task, parent, mode)
        except SqueezerayError as exc:
            rows.append({**base, "status": "refused", "error": str(exc)[:300]})
            print(f"{name} {mode}: refused: {str(exc)[:120]}", flush=True)
            continue
        except Exception as exc:  # a failure is a result too
            traceback.print_exc()
            rows.append({**base, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        for runtime in _runtimes(mode, compiled):
            row = {
                **base,
                "runtime": runtime,
                "size_bytes": None,
                "quantize_s": round(quantize_s, 2),
            }
            try:
                if runtime == "onnxruntime" and mode == "none":
                    deployed = _float_onnx(task, parent)
                else:
                    deployed = (
                        ckpt if runtime == ckpt.runtime else ckpt.with_recipe(runtime=runtime)
                    )
                row["size_bytes"] = size_bytes(deployed)
                row.update(_latency(task, deployed, repeats=repeats), status="ok")
                if mode == "none" and runtime == "eager":
                    float_acc = row["accuracy"]
                row["accuracy_delta"] = (
                    round(row["accuracy"] - float_acc, 4) if float_acc is not None else None
                )
            except Exception as exc:  # a runtime that refuses this model: recorded, not hidden
                row.update(status="refused", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            rows.append(row)
            print(f"{name} {mode} {runtime}: {_brief(row)}", flush=True)
    return rows


def _brief(row: dict[str, Any]) -> str:
    keys = ("latency_ms", "size_bytes", "accuracy", "compile_s", "status", "error")
    return ", ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None)


def _blank(value: Any) -> str:
    return "" if value is None else str(value)


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        "# Quantize modes side by side (`python -m bench.quantize_modes`)",
        "",
        f"{m['date']}, {m['cpu_model']}, {m['cores']} cores, torch {m['versions'].get('torch')}, "
        f"torchao {payload.get('torchao')}, onnxruntime {m['versions'].get('onnxruntime')}; "
        f"one thread, batch 1, median of {payload['repeats']} calls; load average at start "
        f"{payload['load_average']} (a shared machine: compare rows of one run, not runs).",
        "",
        "| task | mode | runtime | size (B) | latency ms (p90) | vs float eager | acc | Δacc "
        "| compile s | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    floats = {
        r["task"]: r["latency_ms"]
        for r in payload["rows"]
        if r["mode"] == "none" and r.get("runtime") == "eager" and r.get("status") == "ok"
    }
    for r in payload["rows"]:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['task']} | {r['mode']} | {r.get('runtime', '')} | | | | | | | "
                f"{r['status']}: {' '.join(r.get('error', '').split())[:90]} |"  # one line
            )
            continue
        ratio = floats.get(r["task"])
        speed = f"{ratio / r['latency_ms']:.3g}x" if ratio else ""
        lines.append(
            f"| {r['task']} | {r['mode']} | {r['runtime']} | {r['size_bytes']} | "
            f"{r['latency_ms']:.3f} ({r['latency_ms_p90']:.3f}) | {speed} | {r['accuracy']:.3f} | "
            f"{r['accuracy_delta']:+.3f} | {_blank(r['compile_s'])} | ok |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import os

    import torchao

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--compiled-tasks", default="digits,tests.zoo:transformer")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    compiled = set(args.compiled_tasks.split(",")) if args.compiled_tasks else set()
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    load = [round(x, 2) for x in os.getloadavg()]
    for name in args.tasks.split(","):
        rows += _task_rows(
            name, epochs=args.epochs, repeats=args.repeats, compiled=name in compiled
        )
    payload = {
        "repeats": args.repeats,
        "load_average": load,
        "torchao": torchao.__version__,
        "wall_s": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    path = write_result("quantize_modes", payload, results_dir=args.out)
    payload["machine"] = machine_info()
    (args.out / "quantize_modes.md").write_text(markdown(payload))
    print(f"wrote {path} and quantize_modes.md in {payload['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
