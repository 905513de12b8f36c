"""GPU check of the stages: run every stage chain on CUDA and on CPU, side by side.

    python -m bench.gpu_stages [--out DIR] [--tasks digits,digits-cnn,...] [--epochs N]

`stages/` is pure PyTorch, so the GPU path of a sweep is the stages' own device handling
(`StageInput.device`); Ray only places the task (`--gpus-per-trial`, tested on CPU with a
logical GPU). For each task and chain this runs the stages on `cuda` and on `cpu` with the
same seed and records, per stage: wall seconds, test accuracy, whether the checkpoint holds
CPU tensors only (it must, to travel through the object store and load anywhere), and whether
it round-trips through bytes (`weights_only`) into a model with the same outputs.

Writes `gpu_stages.json` and `gpu_stages.md` under `--out` (default bench/results). Exits 1
when any stage failed or any round trip differed, so a device run is a real check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from stages import get_stage
from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.metrics import evaluate
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.tasks import Task, load_task

# (chain name, [(stage, params)]); epochs are scaled by --epochs where a stage trains.
CHAINS: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = [
    (
        "structured",
        [
            ("distill", {"epochs": 4}),
            ("prune", {"method": "structured", "ratio": 0.5}),
            ("finetune", {"epochs": 2}),
            ("lowrank", {"rank_ratio": 0.5, "min_features": 4}),
            ("lora", {"rank": 4, "epochs": 2}),
            ("quantize", {"mode": "dynamic_int8"}),
            ("export", {"runtime": "torchscript"}),
        ],
    ),
    (
        "unstructured",
        [
            ("distill", {"epochs": 4}),
            ("prune", {"method": "l1_unstructured", "ratio": 0.6}),
            ("finetune", {"epochs": 2}),
            ("lora", {"rank": 2, "epochs": 2}),
            ("quantize", {"mode": "qat", "qat_epochs": 1}),
            ("export", {"runtime": "torchscript"}),
        ],
    ),
    (
        "static",
        [
            ("distill", {"epochs": 4}),
            ("quantize", {"mode": "static_int8"}),
        ],
    ),
    (
        "onnx",
        [
            ("distill", {"epochs": 4}),
            ("prune", {"method": "structured", "ratio": 0.3}),
            ("quantize", {"mode": "onnx_int8"}),
        ],
    ),
]


def _outputs(task: Task, ckpt: ModelCheckpoint) -> torch.Tensor:
    model = build_model(task, ckpt).eval()
    x = task.example_input(8)
    with torch.no_grad():
        out = model(*x) if isinstance(x, tuple) else model(x)
    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, dict):
        out = out["logits"]
    if hasattr(out, "logits"):
        out = out.logits
    return torch.as_tensor(out).float()


def _check(task: Task, ckpt: ModelCheckpoint) -> dict[str, Any]:
    on_cpu = all(
        t.device.type == "cpu" for t in ckpt.state_dict.values() if isinstance(t, torch.Tensor)
    )
    if ckpt.runtime != "eager" or ckpt.quantize != "none":
        # int8 kernels are CPU-only and exact replay is checked by the stage tests
        return {"cpu_tensors": on_cpu, "round_trip_max_diff": None}
    again = ModelCheckpoint.from_bytes(ckpt.to_bytes())
    diff = (_outputs(task, ckpt) - _outputs(task, again)).abs().max().item()
    return {"cpu_tensors": on_cpu, "round_trip_max_diff": diff}


def _run_chain(
    task: Task, teacher: ModelCheckpoint, chain: list[tuple[str, dict[str, Any]]], device: str
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    parent = teacher
    for stage, values in chain:
        spec = get_stage(stage)
        row: dict[str, Any] = {"stage": stage, "params": values, "device": device}
        start = time.perf_counter()
        try:
            out, _ = run_stage(  # as a sweep's stage task runs it: contract + round trip
                spec,
                StageInput(task=task, parent=parent, teacher=teacher, device=device, seed=0),
                spec.make_params(values),
            )
            if device == "cuda":
                torch.cuda.synchronize()
            row["wall_s"] = round(time.perf_counter() - start, 3)
            row["test_accuracy"] = evaluate(task, out.checkpoint, latency=False).accuracy
            row.update(_check(task, out.checkpoint))
            row["status"] = "ok"
            parent = out.checkpoint
        except SqueezerayError as exc:  # a documented refusal (the stage does not apply)
            row["status"] = "refused"
            row["error"] = str(exc)[:2000]
            rows.append(row)
            break
        except Exception as exc:  # record and stop the chain: later stages need this one
            row["status"] = "error"
            row["error"] = "".join(traceback.format_exception(exc))[-3000:]
            rows.append(row)
            break
        rows.append(row)
    return rows


def _tasks(names: list[str]) -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for name in names:
        if ":" in name and name.startswith("tests.zoo"):
            module, _, attr = name.partition(":")
            try:
                tasks[name] = getattr(importlib.import_module(module), attr)()
            except (ImportError, AttributeError) as exc:
                print(f"skip {name}: {exc}", file=sys.stderr)
            continue
        tasks[name] = load_task(name)
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--tasks", default="digits,digits-cnn")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "runs": [],
    }
    failures = 0
    for name, task in _tasks(args.tasks.split(",")).items():
        for device in devices:
            spec = get_stage("teacher")
            start = time.perf_counter()
            teacher = run_stage(
                spec,
                StageInput(task=task, parent=None, device=device, seed=0),
                spec.make_params({"epochs": args.teacher_epochs}),
            )[0].checkpoint
            teacher_s = round(time.perf_counter() - start, 3)
            base = {"task": name, "device": device, "teacher_wall_s": teacher_s}
            base["teacher_test_accuracy"] = evaluate(task, teacher, latency=False).accuracy
            base.update({f"teacher_{k}": v for k, v in _check(task, teacher).items()})
            for chain_name, chain in CHAINS:
                rows = _run_chain(task, teacher, chain, device)
                bad = [
                    r
                    for r in rows
                    if r["status"] == "error"
                    or (r["status"] == "ok" and not r["cpu_tensors"])
                    or (r.get("round_trip_max_diff") or 0.0) > 1e-4
                ]
                failures += len(bad)
                result["runs"].append({**base, "chain": chain_name, "stages": rows})
                print(json.dumps({**base, "chain": chain_name, "bad": len(bad)}), flush=True)
                for r in bad:
                    print(r.get("error", r), flush=True)
    result["failures"] = failures
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_stages.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_stages.md").write_text(_markdown(result))
    print(_markdown(result))
    return 1 if failures else 0


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# GPU stage check — {result['date']} on {result['machine']} ({result['gpu']}), "
        f"torch {result['torch']}",
        "",
        "| task | chain | device | stage | status | wall s | test acc | round-trip diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for r in run["stages"]:
            diff = r.get("round_trip_max_diff")
            lines.append(
                f"| {run['task']} | {run['chain']} | {run['device']} | {r['stage']} | "
                f"{r['status']} | {r.get('wall_s', '')} | {r.get('test_accuracy', '')} | "
                f"{'' if diff is None else f'{diff:.2e}'} |"
            )
    lines.append(f"\nfailures: {result['failures']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
