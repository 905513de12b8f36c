"""Benchmark: cost of a sweep at model scale (issue 24), beside a hand-written loop.

`python -m bench.scale [--sizes 0.1M,1M,10M,50M] [--nice 10] [--epochs 1]` runs, per size of
the MLP task in `bench/scale_task.py` (teacher given trained: `teacher.epochs: 0`; student=None;
pipeline teacher -> distill -> prune -> finetune -> quantize -> export, 1 epoch each of distill
and finetune (`--epochs`), 2,000 training samples), each in a fresh child process:

1. the hand loop: the same stage functions called once in a row in one process (no runner, no
   checkpoint round trip, no Ray), then the test accuracy: what a user's own script spends. Then,
   on its models, each non-training per-model step alone (serialise, load, rebuild, self-check,
   size at `stages.metrics.ZSTD_LEVEL`, size at zstd 19, latency, accuracy, fingerprint, ONNX
   export), for the slowest one;
2. the sweep: 4 trials (grid over prune.ratio x quantize.mode) on an embedded Ray with 2 CPUs.
   A sampler thread reads /proc every 0.25 s: each Ray worker's RSS (peak per worker, and the
   peak of the whole process tree) and CPU, attributed to the task its process title names
   (`ray::_stage_task`, `ray::_measure_task`, ...); the object store's use from Ray's memory
   summary.

Every Ray worker of the sweep is instrumented (`instrument_worker`, Ray's
`worker_process_setup_hook`): at start it imports what a stage task imports (torch, the stage
modules, the orchestrator's task module) and logs that CPU as the worker's start-up, then logs
the whole CPU of each stage, measure and final-phase task from its entry to its return (the
memory release after the body included), read with `time.process_time` in the worker.

Stage compute = the stage functions' own CPU seconds (`run_cpu_s`, from each stage's manifest);
stage-task overhead = the rest of the stage tasks' CPU (loading the task and its inputs, the
fingerprint check, the checkpoint round trip and self-check, serialising, hashing, writing,
releasing memory); measurement = the measure tasks' CPU (accuracy on val and test, size,
parameter counts, latency) and the final latency phase's. Share = (stage-task overhead +
measurement) / stage compute. Worker start-up (imports, once per worker process, the same at
every model size) is reported beside it, not in the share. Writes bench/results/scale.json and
prints markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import load_average, run_child, scratch_dir, write_result

SIZES = ("0.1M", "1M", "10M", "50M")
TRIALS = 4
NUM_CPUS = 2
SAMPLE_S = 0.25

SPACE = """\
name: scale-{size}
task: bench.scale_task:{factory}
pipeline: [teacher, distill, prune, finetune, quantize, export]
objectives: {{val_accuracy: max, size_bytes: min, latency_ms_sweep: min}}
params:
  teacher.epochs: 0
  distill.epochs: {epochs}
  distill.student_ratio: 0.5
  prune.method: l1_unstructured
  prune.ratio: {{choice: [0.3, 0.6]}}
  finetune.epochs: {epochs}
  quantize.mode: {{choice: [none, dynamic_int8]}}
  export.runtime: eager
search: {{algorithm: grid, trials: {trials}, seed: 0}}
"""


# -- /proc sampling ------------------------------------------------------------------------


def _proc_tree(root: int) -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, title)} of every process under `root` (root included)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            title = (
                Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            )
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry)] = (ppid, title)
    tree = {root}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return {pid: parents[pid] for pid in tree if pid in parents}


def _rss_cpu(pid: int) -> tuple[int, float] | None:
    """(RSS bytes, user+system CPU seconds) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return rss, cpu


def _title_kind(title: str) -> str:
    """What a Ray worker is doing, from its process title (`ray::<task or actor>`)."""
    if title.startswith("ray::"):
        return title.split()[0]
    name = Path(title).name
    return name or "?"


class Sampler:
    """Peak RSS per process and of the whole tree, CPU seconds per process title, and the
    object store's peak use, sampled every SAMPLE_S seconds in a thread."""

    def __init__(self, *, object_store: bool) -> None:
        self.root = os.getpid()
        self.object_store = object_store
        self.peak_rss: dict[int, int] = {}
        self.kind_of: dict[int, str] = {}
        self.peak_tree_rss = 0
        self.peak_store = 0
        self.cpu_by_kind: dict[str, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.load: list[list[float]] = []

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_store = 0.0
        while not self._stop.is_set():
            self.sample()
            if self.object_store and time.monotonic() - last_store > 2.0:
                last_store = time.monotonic()
                self.peak_store = max(self.peak_store, _object_store_bytes())
            self._stop.wait(SAMPLE_S)

    def sample(self) -> None:
        total = 0
        for pid, (_, title) in _proc_tree(self.root).items():
            got = _rss_cpu(pid)
            if got is None:
                continue
            rss, cpu = got
            kind = _title_kind(title)
            total += rss
            if rss > self.peak_rss.get(pid, 0):
                self.peak_rss[pid] = rss
                self.kind_of[pid] = kind
            delta = cpu - self._last_cpu.get(pid, 0.0)
            self._last_cpu[pid] = cpu
            self.cpu_by_kind[kind] = self.cpu_by_kind.get(kind, 0.0) + delta
        self.peak_tree_rss = max(self.peak_tree_rss, total)
        if len(self.load) < 10_000:
            self.load.append(list(os.getloadavg()))

    def report(self) -> dict[str, Any]:
        workers = {
            pid: rss for pid, rss in self.peak_rss.items() if self.kind_of[pid].startswith("ray::")
        }
        by_kind: dict[str, int] = {}
        for pid, rss in self.peak_rss.items():
            kind = self.kind_of[pid]
            by_kind[kind] = max(by_kind.get(kind, 0), rss)
        return {
            "peak_tree_rss_bytes": self.peak_tree_rss,
            "peak_worker_rss_bytes": max(workers.values(), default=0),
            "peak_rss_by_title": by_kind,
            "cpu_s_by_title": {k: round(v, 3) for k, v in self.cpu_by_kind.items()},
            "peak_object_store_bytes": self.peak_store,
            "load_avg_max": [max(x[i] for x in self.load) for i in range(3)] if self.load else [],
        }


def _object_store_bytes() -> int:
    """Bytes in Ray's object store now (its memory summary's plasma line), 0 when unknown."""
    import re

    try:
        from ray._private.internal_api import memory_summary

        text = memory_summary(stats_only=True)
    except Exception:
        return 0
    match = re.search(r"Plasma memory usage (\d+) MiB", text)
    return int(match.group(1)) * 2**20 if match else 0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- the workers' own CPU accounting -------------------------------------------------------

TASK_LOG_ENV = "SQUEEZERAY_BENCH_TASK_LOG"
PROFILE_DIR_ENV = "SQUEEZERAY_BENCH_PROFILE_DIR"  # set: each task body cProfiled into this folder


def instrument_worker() -> None:
    """Ray's worker_process_setup_hook: wrap the task bodies and the memory release so each
    logs its CPU (JSON lines to $SQUEEZERAY_BENCH_TASK_LOG). The first task body a worker runs
    first imports what any task imports (torch, the stage modules, and torch._dynamo, which
    torch.optim imports at the first optimizer), logged apart as the worker's start-up: a
    worker pays it once, whatever the model. (Without torch._dynamo here, where that 1.3 CPU s
    fell, in a stage's compute or in its overhead, depended on which import came first.)"""
    import functools

    from orchestrator.engine import stage_tasks

    imported = False

    def import_once() -> None:
        nonlocal imported
        if imported:
            return
        imported = True
        cpu0 = time.process_time()
        import torch
        import torch._dynamo  # noqa: F401  (torch.optim imports it, sympy with it: ~1.3 CPU s)

        import orchestrator.store.storage  # noqa: F401  (pyarrow's filesystems)
        import stages.metrics
        import stages.runner  # noqa: F401
        from stages import stage_registry

        for spec in stage_registry().values():
            __import__(spec.run.__module__)
        _log_task("worker_start", "", time.process_time() - cpu0)

    # The task bodies and the memory release after each, looked up as module globals when a
    # task runs: the remote functions themselves stay as they are (Ray pickles them by name).
    def wrap(name: str, kind: str) -> None:
        original = getattr(stage_tasks, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if kind != "release":
                import_once()
            start = time.process_time()
            profile_dir = os.environ.get(PROFILE_DIR_ENV)
            if profile_dir and kind != "release":
                import cProfile

                profiler = cProfile.Profile(time.process_time)  # CPU, as the rest
                out = profiler.runcall(original, *args, **kwargs)
                name_ = f"{kind}-{(args[0].key if args else '')[:8]}-{os.getpid()}-{time.time_ns()}"
                profiler.dump_stats(os.path.join(profile_dir, name_ + ".prof"))
            else:
                out = original(*args, **kwargs)
            info = out[1] if kind == "stage" else {}
            key = args[0].key if args else ""
            _log_task(kind, key, time.process_time() - start, info.get("run_cpu_s"))
            return out

        setattr(stage_tasks, name, timed)

    wrap("execute_stage", "stage")
    wrap("execute_measure", "measure")
    wrap("execute_remeasure", "remeasure")
    wrap("release_memory", "release")


def _log_task(kind: str, key: str, cpu_s: float, run_cpu_s: float | None = None) -> None:
    path = os.environ.get(TASK_LOG_ENV)
    if not path:
        return
    line = {"pid": os.getpid(), "kind": kind, "key": key, "cpu_s": cpu_s, "run_cpu_s": run_cpu_s}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def _start_instrumented_ray(log: Path) -> None:
    """The embedded Ray the sweep would start (orchestrator.engine.runtime.init_ray, which
    then reuses it), with every worker instrumented."""
    import logging

    import ray

    from orchestrator.engine.runtime import LATENCY_RESOURCE

    os.environ[TASK_LOG_ENV] = str(log)  # the workers inherit it
    ray.init(
        address="local",
        num_cpus=NUM_CPUS,
        include_dashboard=False,
        resources={LATENCY_RESOURCE: 1},
        logging_level=logging.ERROR,
        log_to_driver=False,
        runtime_env={"worker_process_setup_hook": "bench.scale.instrument_worker"},
    )


# -- children ------------------------------------------------------------------------------


def child_sweep(payload: dict[str, Any]) -> dict[str, Any]:
    """One 4-trial sweep of the task at payload["size"] on a fresh embedded Ray."""
    from bench.scale_task import FACTORIES
    from orchestrator.engine.sweep import execute_sweep, prepare_sweep
    from orchestrator.space.options import SweepOptions
    from orchestrator.store.results import load_stages

    os.nice(int(payload.get("nice", 0)))
    size, storage = payload["size"], Path(payload["storage"])
    space = storage.parent / f"scale-{size}.yaml"
    epochs = int(payload.get("epochs", 1))
    space.write_text(SPACE.format(size=size, factory=FACTORIES[size], trials=TRIALS, epochs=epochs))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    log = storage.parent / "tasks.jsonl"
    with Sampler(object_store=True) as sampler:
        _start_instrumented_ray(log)
        sweep = prepare_sweep(
            str(space), SweepOptions.build(storage=str(storage), num_cpus=NUM_CPUS, name="scale")
        )
        prepared_s = time.perf_counter() - wall0
        outcome = execute_sweep(sweep)
        sampler.sample()
    wall_s = time.perf_counter() - wall0
    rows = outcome.table.to_pylist()
    stages = load_stages(storage).to_pylist()
    manifests = [json.loads(p.read_text()) for p in (storage / "cache").glob("*.json")]
    spill = sum(_du(p) for p in Path("/tmp/ray").glob("session_*/ray_spilled_objects"))
    return {
        "size": size,
        "wall_s": wall_s,
        "prepare_s": prepared_s,
        "driver_cpu_s": time.process_time() - cpu0,
        "rows": [
            {
                k: r.get(k)
                for k in (
                    "trial_id",
                    "status",
                    "error",
                    "is_baseline",
                    "size_bytes",
                    "params_total",
                    "latency_ms_sweep",
                    "latency_repeats_sweep",
                    "latency_rounds",
                    "val_accuracy",
                )
            }
            for r in rows
        ],
        "stages": [{k: s[k] for k in ("stage", "wall_s", "cpu_s", "stage_key")} for s in stages],
        "manifests": [
            {
                k: m.get(k)
                for k in ("stage", "key", "cpu_s", "run_cpu_s", "wall_s", "run_s", "nbytes")
            }
            for m in manifests
        ],
        "tasks": [json.loads(line) for line in log.read_text().splitlines()]
        if log.exists()
        else [],
        "disk_bytes": _du(storage),
        "cache_bytes": _du(storage / "cache"),
        "spilled_bytes": spill,
        **sampler.report(),
    }


def _stage_chain(
    task: Any, *, epochs: int = 1
) -> tuple[list[tuple[str, float, float]], Any, Any, Any]:
    """The pipeline's stage functions once, in a row: [(stage, cpu_s, wall_s)], the teacher's,
    the finetuned student's and the final checkpoints' StageOutputs."""
    from stages import get_stage
    from stages.base import StageInput

    steps: list[tuple[str, dict[str, Any]]] = [
        ("teacher", {"epochs": 0}),
        ("distill", {"epochs": epochs, "student_ratio": 0.5}),
        ("prune", {"ratio": 0.3, "method": "l1_unstructured"}),
        ("finetune", {"epochs": epochs}),
        ("quantize", {"mode": "dynamic_int8"}),
        ("export", {"runtime": "eager"}),
    ]
    timings = []
    teacher = parent = finetuned = None
    for name, params in steps:
        spec = get_stage(name)
        inp = StageInput(
            task=task,
            parent=parent.checkpoint if parent else None,
            teacher=teacher.checkpoint if teacher else None,
        )
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = spec.run(inp, spec.make_params(params))
        timings.append((name, time.process_time() - cpu0, time.perf_counter() - wall0))
        teacher = teacher or out
        finetuned = out if name == "finetune" else finetuned
        parent = out
    return timings, teacher, finetuned, parent


def _steps(task: Any, teacher: Any, student: Any, *, big: bool) -> dict[str, float]:
    """CPU seconds of each non-training per-model step alone, on the teacher (`teacher.*`) and
    the finetuned student (`student.*`)."""
    import zstandard

    from stages import get_stage
    from stages.base import StageInput
    from stages.checkpoint import ModelCheckpoint
    from stages.fingerprint import task_fingerprint
    from stages.latency import measure_latency
    from stages.metrics import size_bytes
    from stages.rebuild import build_model
    from stages.runtime import make_predictor
    from stages.selfcheck import check_output

    out: dict[str, float] = {}

    def clock(name: str, fn: Any) -> Any:
        cpu0 = time.process_time()
        value = fn()
        out[name] = round(time.process_time() - cpu0, 4)
        return value

    clock("task.fingerprint", lambda: task_fingerprint(task))
    for role, stage_out in (("teacher", teacher), ("student", student)):
        ckpt = stage_out.checkpoint
        data = clock(f"{role}.serialise", ckpt.to_buffer)
        clock(f"{role}.load", lambda d=data: ModelCheckpoint.from_bytes(d))
        clock(f"{role}.rebuild", lambda c=ckpt: build_model(task, c))
        clock(f"{role}.selfcheck", lambda s=stage_out, r=role: check_output(task, r, s))
        clock(f"{role}.size", lambda c=ckpt: size_bytes(c))
        if not big:  # level 19: about 0.5 s/MB, minutes at 50M
            clock(
                f"{role}.size_zstd19",
                lambda d=data: zstandard.ZstdCompressor(level=19).compress(d),
            )
        clock(f"{role}.latency", lambda c=ckpt: measure_latency(task, c))
        predictor = make_predictor(task, ckpt)
        clock(
            f"{role}.accuracy_val_test",
            lambda p=predictor: (p.accuracy(task.val), p.accuracy(task.test)),
        )
    export = get_stage("export")
    clock(
        "student.onnx_export",
        lambda: export.run(
            StageInput(task=task, parent=student.checkpoint),
            export.make_params({"runtime": "onnxruntime"}),
        ),
    )
    return out


def child_hand(payload: dict[str, Any]) -> dict[str, Any]:
    """The hand loop at payload["size"], then each per-model step alone."""
    import torch
    import torch._dynamo  # as a worker's start-up: the first optimizer imports it

    from bench.scale_task import make

    os.nice(int(payload.get("nice", 0)))
    torch.set_num_threads(1)  # as a stage task runs (1 CPU per trial)
    size = payload["size"]
    task = make(size)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    timings, teacher, finetuned, final = _stage_chain(task, epochs=int(payload.get("epochs", 1)))
    from stages.runtime import make_predictor

    accuracy = make_predictor(task, final.checkpoint).accuracy(task.test)
    hand_cpu, hand_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    peak_hand = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steps = _steps(task, teacher, finetuned, big=size == "50M")
    return {
        "size": size,
        "hand_cpu_s": hand_cpu,
        "hand_wall_s": hand_wall,
        "hand_stage_cpu_s": {name: round(cpu, 3) for name, cpu, _ in timings},
        "hand_accuracy": accuracy,
        "hand_peak_rss_bytes": peak_hand,
        "steps_cpu_s": steps,
    }


# -- the report ----------------------------------------------------------------------------


def _with_releases(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task lines of `instrument_worker`, each memory release's CPU added to the task it
    followed in the same worker (its `_released` wrapper runs it after the body)."""
    tasks: list[dict[str, Any]] = []
    last: dict[int, dict[str, Any]] = {}
    for line in lines:
        if line["kind"] == "release":
            if line["pid"] in last:
                last[line["pid"]]["cpu_s"] += line["cpu_s"]
            continue
        task = dict(line)
        tasks.append(task)
        if task["kind"] != "worker_start":
            last[task["pid"]] = task
    return tasks


def summarise(size: str, hand: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    """The figures of one size: stage compute, overhead and its share, memory, disk."""
    from bench.scale_task import params_of

    tasks = _with_releases(sweep["tasks"])  # each task's CPU, logged in its worker
    executed = [t for t in tasks if t["kind"] == "stage" and t["run_cpu_s"] is not None]
    compute = sum(t["run_cpu_s"] for t in executed)
    stage_overhead = sum(t["cpu_s"] - t["run_cpu_s"] for t in executed)
    measure_tasks = sum(t["cpu_s"] for t in tasks if t["kind"] == "measure")
    final_phase = sum(t["cpu_s"] for t in tasks if t["kind"] == "remeasure")
    starts = [t["cpu_s"] for t in tasks if t["kind"] == "worker_start"]
    measure = measure_tasks + final_phase
    overhead = stage_overhead + measure
    # the steps a sweep of this pipeline runs (export.runtime eager: no ONNX export)
    steps = {k: v for k, v in hand["steps_cpu_s"].items() if "zstd19" not in k and "onnx" not in k}
    slowest = max(steps, key=lambda k: steps[k])
    float_bytes = 4 * params_of(size)
    return {
        "size": size,
        "params": params_of(size),
        "float_bytes": float_bytes,
        "hand_cpu_s": round(hand["hand_cpu_s"], 2),
        "stages_executed": len(executed),
        "stage_compute_cpu_s": round(compute, 2),
        "stage_task_overhead_cpu_s": round(stage_overhead, 2),
        "measure_cpu_s": round(measure, 2),
        "measure_tasks_cpu_s": round(measure_tasks, 2),
        "final_phase_cpu_s": round(final_phase, 2),
        "measured_models": sum(t["kind"] == "measure" for t in tasks),
        "workers": len(starts),
        "worker_start_cpu_s": round(sum(starts), 2),
        "overhead_share": round(overhead / compute, 3) if compute else None,
        "sweep_wall_s": round(sweep["wall_s"], 1),
        "peak_worker_rss_bytes": sweep["peak_worker_rss_bytes"],
        "peak_tree_rss_bytes": sweep["peak_tree_rss_bytes"],
        "hand_peak_rss_bytes": hand["hand_peak_rss_bytes"],
        "object_store_peak_bytes": sweep["peak_object_store_bytes"],
        "disk_bytes": sweep["disk_bytes"],
        "spilled_bytes": sweep["spilled_bytes"],
        "slowest_step": slowest,
        "slowest_step_cpu_s": steps[slowest],
        "onnx_export_cpu_s": hand["steps_cpu_s"].get("student.onnx_export"),
        "rows_ok": sum(r["status"] == "ok" for r in sweep["rows"]),
        "rows": len(sweep["rows"]),
        "load_avg_max": sweep["load_avg_max"],
    }


def markdown(summaries: list[dict[str, Any]]) -> str:
    mb = 2**20  # MiB
    head = (
        "| params | stages run | stage compute (CPU s) | non-training overhead (CPU s) | share | "
        "worker start-up (CPU s) | hand loop (CPU s) | sweep wall (s) | peak worker RSS (MiB) | "
        "whole sweep RSS (MiB) | object store peak (MiB) | disk (MiB) | "
        "slowest non-training step (CPU s) | rows ok |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n"
    )
    lines = []
    for s in summaries:
        worker = s["peak_worker_rss_bytes"]
        lines.append(
            f"| {s['params'] / 1e6:.2f}M | {s['stages_executed']} | {s['stage_compute_cpu_s']} | "
            f"{s['stage_task_overhead_cpu_s'] + s['measure_cpu_s']:.2f} "
            f"({s['stage_task_overhead_cpu_s']} stage tasks + {s['measure_tasks_cpu_s']} "
            f"measuring {s['measured_models']} models + {s['final_phase_cpu_s']} final phase) | "
            f"{s['overhead_share']:.0%} | {s['worker_start_cpu_s']} ({s['workers']} workers) | "
            f"{s['hand_cpu_s']} | {s['sweep_wall_s']} | "
            f"{worker / mb:.0f} ({worker / s['float_bytes']:.1f}x float) | "
            f"{s['peak_tree_rss_bytes'] / mb:.0f} | {s['object_store_peak_bytes'] / mb:.0f} | "
            f"{s['disk_bytes'] / mb:.1f} | {s['slowest_step']} {s['slowest_step_cpu_s']} | "
            f"{s['rows_ok']}/{s['rows']} |"
        )
    return head + "\n".join(lines) + "\n"


def run(
    sizes: list[str], *, nice: int, epochs: int = 1, results_dir: Path | None = None
) -> dict[str, Any]:
    """Each size's hand loop and sweep; results in scale.json (the issue's setup, 1 epoch) or
    scale_epochs<N>.json."""
    name = "scale" if epochs == 1 else f"scale_epochs{epochs}"
    summaries, raw = [], []
    for size in sizes:
        storage = scratch_dir(f"scale-{size}") / "store"
        storage.parent.mkdir(parents=True, exist_ok=True)
        load_before = load_average()
        try:
            hand = run_child(
                "bench.scale:child_hand",
                {"size": size, "nice": nice, "epochs": epochs},
                quiet=False,
            )
            sweep = run_child(
                "bench.scale:child_sweep",
                {"size": size, "nice": nice, "storage": str(storage), "epochs": epochs},
                quiet=False,
                timeout_s=3600,
            )
        finally:
            shutil.rmtree(storage.parent, ignore_errors=True)
        summary = summarise(size, hand, sweep)
        summary["load_avg_before"] = load_before
        summary["epochs"] = epochs
        summaries.append(summary)
        raw.append({"hand": hand, "sweep": sweep})
        print(markdown([summary]), file=sys.stderr, flush=True)
        previous = {}
        with contextlib.suppress(Exception):
            previous = json.loads(
                ((results_dir or Path(__file__).parent / "results") / f"{name}.json").read_text()
            )
        # earlier sizes measured the same way (each task's own CPU, `instrument_worker`)
        done = {x["size"] for x in summaries}
        kept = [
            s
            for s in previous.get("summaries", [])
            if s["size"] not in done and "measure_tasks_cpu_s" in s
        ]
        kept_sizes = {s["size"] for s in kept}
        kept_raw = [r for r in previous.get("raw", []) if r["hand"]["size"] in kept_sizes]
        order = {s: i for i, s in enumerate(SIZES)}
        all_summaries = sorted(kept + summaries, key=lambda s: order[s["size"]])
        all_raw = sorted(kept_raw + raw, key=lambda r: order[r["hand"]["size"]])
        write_result(
            name,
            {"summaries": all_summaries, "raw": all_raw, "markdown": markdown(all_summaries)},
            results_dir=results_dir,
        )
    return {"summaries": summaries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sizes", default=",".join(SIZES), help=f"comma list of {', '.join(SIZES)}"
    )
    parser.add_argument("--nice", type=int, default=10, help="niceness of the children")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="distill and finetune epochs (1: the issue's setup, into scale.json; else "
        "scale_epochs<N>.json)",
    )
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {', '.join(unknown)}; accepted: {', '.join(SIZES)}")
    run(sizes, nice=args.nice, epochs=args.epochs, results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
