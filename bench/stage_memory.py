"""Benchmark: where a stage task's memory peak comes from, stage by stage (issue 24).

`python -m bench.stage_memory [--size 50M] [--quantize none] [--steps teacher,distill,...]`
runs the scale benchmark's chain (`bench/scale_task.py`: teacher given trained, distill with
the student made from the teacher, prune, finetune, quantize, export, then the measurement of
the teacher, of the final model, and the final latency phase) one task body at a time, each in
a fresh child process, without Ray: `orchestrator.engine.stage_tasks.execute_stage`,
`execute_measure` and `execute_remeasure`, called as a Ray worker calls them.

What Ray would do around a task is imitated where it costs memory: an input checkpoint is
a StoredCheckpoint of the previous stage's file (what a local storage hands on), or with
`--transfer bytes` that file mapped read-only (`numpy.memmap`; Ray maps an argument from its
object store the same way, and the pages read count in the worker's RSS), and a stage's
returned array is copied into a shared anonymous mapping (Ray copies a return value into its
object store from the worker; a StoredCheckpoint costs nothing there). The fingerprint check
builds the task's models as a worker's first stage does.

Memory is read from /proc/self/status: VmRSS at each event, and VmHWM (the peak RSS since the
last reset; reset by writing 5 to /proc/self/clear_refs) between events. Events are the entry
and exit of the steps named in `_WATCHED` (wrapped where every module imported them), so each
step's peak is the highest RSS seen while it ran. Baseline: RSS after the imports (torch, ray,
stages, the orchestrator's task module). Float bytes: the teacher's float32 weights. Writes
bench/results/stage_memory.json and prints one table per step.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import run_child, scratch_dir, write_result

MB = 2**20
CHAIN = ("teacher", "distill", "prune", "finetune", "quantize", "export")
STEPS = (*CHAIN, "measure_teacher", "measure_final", "remeasure")
PARAMS: dict[str, dict[str, Any]] = {  # bench/scale.py's space (one of its 4 trials)
    "teacher": {"epochs": 0},
    "distill": {"epochs": 1, "student_ratio": 0.5},
    "prune": {"method": "l1_unstructured", "ratio": 0.6},
    "finetune": {"epochs": 1},
    "quantize": {"mode": "none"},
    "export": {"runtime": "eager"},
}
# (module, attribute) of the steps whose entry and exit are events; a function is wrapped in
# every module that imported it under the same name.
_WATCHED = (
    ("orchestrator.engine.stage_tasks", "_load_input"),
    ("orchestrator.engine.stage_tasks", "_worker_fingerprint"),
    ("stages.runner", "check_output"),
    ("stages.rebuild", "build_model"),
    ("stages.training", "fit"),
    ("stages.training", "accuracy"),
    ("stages.training", "trained_output"),
    ("stages.distill", "student_from_teacher"),
    ("stages.prune", "prune_module"),
    ("stages.runtime", "make_predictor"),
    ("stages.metrics", "size_bytes"),
    ("stages.metrics", "count_weights"),
    ("stages.latency", "time_calls"),
    ("stages.latency", "interleaved_latency"),
    ("stages.metrics", "evaluate"),
)


# -- /proc/self/status ---------------------------------------------------------------------


def _status_kb(*names: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            out[key] = int(rest.split()[0])
    return out


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Timeline:
    """Events (label, depth, RSS at the event, peak RSS since the previous event), in bytes."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.depth = 0
        self.baseline = 0

    def mark(self, label: str) -> None:
        kb = _status_kb("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
        self.events.append(
            {
                "label": label,
                "depth": self.depth,
                "rss": kb["VmRSS"] * 1024,
                "peak": max(kb["VmHWM"], kb["VmRSS"]) * 1024,
                "anon": kb.get("RssAnon", 0) * 1024,
                "file_shmem": (kb.get("RssFile", 0) + kb.get("RssShmem", 0)) * 1024,
            }
        )
        _reset_peak()

    def watch(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"> {name}")
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.mark(f"< {name}")

        return wrapped

    def spans(self) -> list[dict[str, Any]]:
        """One row per watched call: RSS at entry, peak while it ran, RSS at exit (each minus
        the baseline), in the order the calls began."""
        rows, open_at = [], []
        for i, event in enumerate(self.events):
            label = event["label"]
            if label.startswith("> "):
                open_at.append(i)
            elif label.startswith("< "):
                start = open_at.pop()
                peak = max(e["peak"] for e in self.events[start + 1 : i + 1])
                rows.append(
                    {
                        "step": label[2:],
                        "depth": event["depth"],
                        "start": start,
                        "entry_mb": (self.events[start]["rss"] - self.baseline) / MB,
                        "peak_mb": (peak - self.baseline) / MB,
                        "exit_mb": (event["rss"] - self.baseline) / MB,
                    }
                )
        return sorted(rows, key=lambda r: r["start"])


def _wrap_everywhere(timeline: Timeline) -> None:
    """Wrap each `_WATCHED` function in every loaded module that holds it."""
    import importlib

    for module_name, attr in _WATCHED:
        original = getattr(importlib.import_module(module_name), attr)
        wrapped = timeline.watch(attr, original)
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if not name.startswith(("stages", "orchestrator")):
                continue
            for key, value in list(vars(module).items()):
                if value is original:
                    setattr(module, key, wrapped)


def _wrap_methods(timeline: Timeline) -> None:
    """Serialisation, loading, hashing and writing: methods and library calls."""
    from orchestrator.store.storage import Storage
    from stages.checkpoint import ModelCheckpoint

    to_buffer = ModelCheckpoint.to_buffer
    from_bytes = ModelCheckpoint.from_bytes.__func__  # type: ignore[attr-defined]
    ModelCheckpoint.to_buffer = timeline.watch("to_buffer", to_buffer)  # type: ignore[method-assign]
    ModelCheckpoint.from_bytes = classmethod(  # type: ignore[method-assign, assignment]
        timeline.watch("from_bytes", from_bytes)
    )
    Storage.write_atomic = timeline.watch("write_atomic", Storage.write_atomic)  # type: ignore[method-assign]
    hashlib.sha256 = timeline.watch("sha256", hashlib.sha256)  # type: ignore[assignment]


# -- one step, in a child process ----------------------------------------------------------


def _key(step: str) -> str:
    return f"{CHAIN.index(step):02d}-{step}" if step in CHAIN else step


def _mapped(storage: str, step: str) -> Any:
    """The checkpoint of `step` as a task gets it: its StoredCheckpoint (a local storage's
    handoff), or with --transfer bytes its file mapped read-only, as Ray maps an object-store
    argument."""
    import numpy as np

    from orchestrator.engine.requests import StoredCheckpoint
    from orchestrator.engine.stage_tasks import CACHE_DIR

    path = Path(storage, CACHE_DIR, f"{_key(step)}.ckpt")
    if os.environ.get("SQUEEZERAY_BENCH_TRANSFER") == "bytes":
        return np.memmap(path, dtype=np.uint8, mode="r")
    manifest = json.loads(path.with_suffix(".json").read_text())
    return StoredCheckpoint(path=str(path), nbytes=path.stat().st_size, sha256=manifest["sha256"])


def _into_object_store(array: Any) -> int:
    """Copy a returned array into a shared mapping (Ray's object store takes it so); bytes.
    A StoredCheckpoint is a few bytes: nothing to copy."""
    from orchestrator.engine.requests import StoredCheckpoint

    if isinstance(array, StoredCheckpoint):
        return 0
    store = mmap.mmap(-1, max(1, array.nbytes))
    store.write(memoryview(array).cast("B"))
    size = store.tell()
    store.close()
    return size


def child(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one step (payload: step, size, storage, quantize) and return its timeline."""
    import ray  # noqa: F401  (a worker has it imported: part of the baseline)
    import torch  # noqa: F401

    import stages.runner  # noqa: F401
    from bench.scale_task import FACTORIES, params_of
    from orchestrator.engine import stage_tasks
    from stages import metrics, selfcheck, stage_registry  # noqa: F401
    from stages.fingerprint import PARTS

    for spec in stage_registry().values():  # every stage module imported before wrapping
        __import__(spec.run.__module__)
    stage_tasks.release_memory()
    timeline = Timeline()
    _reset_peak()
    timeline.mark("baseline (imports)")
    timeline.baseline = timeline.events[0]["rss"]
    _wrap_everywhere(timeline)
    _wrap_methods(timeline)
    step, size, storage = payload["step"], payload["size"], payload["storage"]
    task_name = f"bench.scale_task:{FACTORIES[size]}"
    fingerprint = {part: stage_tasks._worker_fingerprint(task_name, 0, part) for part in PARTS}
    if step in CHAIN:
        _run_stage(timeline, step, task_name, storage, fingerprint, payload["quantize"])
    else:
        _run_measure(timeline, step, task_name, storage)
    stage_tasks.release_memory()
    timeline.mark("after release_memory")
    peak = max(e["peak"] for e in timeline.events) - timeline.baseline
    float_bytes = params_of(size) * 4
    return {
        "step": step,
        "baseline_mb": timeline.baseline / MB,
        "peak_over_baseline_mb": peak / MB,
        "float_mb": float_bytes / MB,
        "peak_over_float": peak / float_bytes,
        "spans": timeline.spans(),
    }


def _run_stage(
    timeline: Timeline,
    step: str,
    task_name: str,
    storage: str,
    fingerprint: dict[str, str],
    quantize: str,
) -> None:
    from orchestrator.engine.requests import StageRequest
    from orchestrator.engine.stage_tasks import execute_stage

    index = CHAIN.index(step)
    parent = CHAIN[index - 1] if index else None
    params = dict(PARAMS[step])
    if step == "quantize":
        params["mode"] = quantize
    request = StageRequest(
        stage=step,
        params=params,
        key=_key(step),
        parent_key=_key(parent) if parent else None,
        teacher_key=_key("teacher") if parent else None,
        task=task_name,
        storage=storage,
        fingerprint=fingerprint,
    )
    parent_arg = _mapped(storage, parent) if parent else None
    teacher_arg = _mapped(storage, "teacher") if parent else None
    run = timeline.watch("execute_stage", execute_stage)
    data, _info = run(request, parent_arg, teacher_arg)
    timeline.watch("return into the object store", _into_object_store)(data)
    del data


def _run_measure(timeline: Timeline, step: str, task_name: str, storage: str) -> None:
    from orchestrator.engine.requests import MeasureRequest
    from orchestrator.engine.stage_tasks import execute_measure, execute_remeasure

    teacher, final = _mapped(storage, "teacher"), _mapped(storage, CHAIN[-1])
    if step == "remeasure":
        request = MeasureRequest(task=task_name, key=_key(CHAIN[-1]), storage=storage)
        remeasure = timeline.watch("execute_remeasure", execute_remeasure)
        remeasure(request, 7, (None, None), teacher, final)
        return
    which = "teacher" if step == "measure_teacher" else CHAIN[-1]
    request = MeasureRequest(task=task_name, key=_key(which), storage=storage)
    checkpoint = teacher if step == "measure_teacher" else final
    timeline.watch("execute_measure", execute_measure)(request, checkpoint)


# -- the parent: one child per step, then the tables ---------------------------------------


def render(result: dict[str, Any], *, min_mb: float = 5.0) -> str:
    """A step's table: each watched call's RSS at entry, peak while running, RSS at exit (MB
    over the baseline); calls whose peak is below `min_mb` are left out."""
    lines = [
        f"## {result['step']}: peak {result['peak_over_baseline_mb']:.0f} MB over a baseline "
        f"of {result['baseline_mb']:.0f} MB = {result['peak_over_float']:.2f}x the teacher's "
        f"{result['float_mb']:.0f} MB of float weights",
        "",
        "| call | at entry (MB) | peak (MB) | at exit (MB) |",
        "|---|---:|---:|---:|",
    ]
    for row in result["spans"]:
        if row["peak_mb"] < min_mb:
            continue
        name = "&nbsp;&nbsp;" * row["depth"] + row["step"]
        lines.append(
            f"| {name} | {row['entry_mb']:.0f} | {row['peak_mb']:.0f} | {row['exit_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="50M", help="a size of bench/scale_task.py (50M)")
    parser.add_argument("--quantize", default="none", help="quantize.mode of the chain (none)")
    parser.add_argument("--steps", default=",".join(STEPS), help="steps to report (all)")
    parser.add_argument("--out", default="stage_memory", help="results file name")
    parser.add_argument(
        "--transfer",
        choices=("stored", "bytes"),
        default="stored",
        help="how checkpoints reach a task: their cache file (a local storage's "
        "StoredCheckpoint, the default) or their bytes mapped from the object store (a URI's)",
    )
    args = parser.parse_args(argv)
    os.environ["SQUEEZERAY_BENCH_TRANSFER"] = args.transfer  # children inherit it
    wanted = set(args.steps.split(","))
    storage = scratch_dir("stage-memory")
    results = []
    try:
        last = max(STEPS.index(s) for s in wanted)
        for step in STEPS[: last + 1]:  # a step needs its parents' checkpoints
            payload = {
                "step": step,
                "size": args.size,
                "storage": str(storage),
                "quantize": args.quantize,
            }
            result = run_child("bench.stage_memory:child", payload, quiet=False)
            if step in wanted:
                results.append(result)
                print(render(result) + "\n", flush=True)
    finally:
        import shutil

        shutil.rmtree(storage, ignore_errors=True)
    summary = [
        {k: r[k] for k in ("step", "baseline_mb", "peak_over_baseline_mb", "peak_over_float")}
        for r in results
    ]
    path = write_result(
        args.out, {"size": args.size, "quantize": args.quantize, "summary": summary, "raw": results}
    )
    print(json.dumps(summary, indent=1))
    print(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
