"""Shared benchmark plumbing: machine facts, spread statistics, JSON results, child processes.

Every measured configuration runs in a fresh child process (`run_child`), so each gets its own
embedded Ray with its own CPU count and nothing warm is carried from one configuration to the
next. A child is `python -c "...child_main()" TARGET PAYLOAD OUT`: it imports TARGET
("module:function"), calls it with the JSON payload and writes the JSON it returns to OUT.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stages.errors import SqueezerayError

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
VERSIONED = ("squeezeray", "torch", "ray", "optuna", "onnxruntime", "numpy", "pyarrow")


# -- machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except OSError:
        pass
    return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; 2.0 = both cores busy here)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "load_avg": load_average(),
        "gpu": None,  # no accelerator on this machine; none was lent to the benchmark task
    }


# -- statistics ----------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """median, min, max, mean, stdev and CV (stdev / mean) of repeated measurements."""
    if not values:
        raise SqueezerayError("spread() needs at least one value; got none")
    xs = [float(v) for v in values]
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "mean": mean,
        "stdev": sd,
        "cv": sd / mean if mean else float("nan"),
    }


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """`with timed() as t: ...` then t["wall_s"], t["cpu_s"] (this process's CPU time)."""
    out: dict[str, float] = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        out["wall_s"] = time.perf_counter() - wall0
        out["cpu_s"] = time.process_time() - cpu0


# -- results -------------------------------------------------------------------------------


def write_result(name: str, data: dict[str, Any], *, results_dir: Path | None = None) -> Path:
    """Write `<results_dir>/<name>.json` (machine info added) atomically; return its path."""
    directory = results_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **data}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def read_result(name: str, *, results_dir: Path | None = None) -> dict[str, Any] | None:
    path = (results_dir or RESULTS_DIR) / f"{name}.json"
    if not path.exists():
        return None
    return dict(json.loads(path.read_text()))


# -- child processes -----------------------------------------------------------------------


def run_child(
    target: str,
    payload: dict[str, Any],
    *,
    timeout_s: float = 1800,
    inprocess: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Run `target` ("module:function") in a fresh Python process; return its JSON result.

    The child's stdout/stderr go to a log that is quoted in the error if it fails.
    `inprocess=True` (smoke runs) calls it here instead, on this process's Ray if one runs:
    the same code path without a Ray start per configuration. `quiet` first waits (bounded)
    for the machine to go idle (`wait_for_quiet`).
    """
    if inprocess:
        module_name, _, func_name = target.partition(":")
        func = getattr(importlib.import_module(module_name), func_name)
        return dict(json.loads(json.dumps(func(payload), default=str)))
    waited_s, busy = wait_for_quiet() if quiet else (0.0, busy_cores(0.5))
    with tempfile.TemporaryDirectory(prefix="squeezeray-bench-") as tmp:
        payload_path = Path(tmp) / "payload.json"
        out_path = Path(tmp) / "out.json"
        log_path = Path(tmp) / "child.log"
        payload_path.write_text(json.dumps(payload, default=str))
        code = "import bench.common as c; c.child_main()"
        pythonpath = [str(ROOT), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)}
        with log_path.open("wb") as log:
            # Own process group: on a timeout the child's embedded Ray goes with it.
            proc = subprocess.Popen(
                [sys.executable, "-c", code, target, str(payload_path), str(out_path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop_group(proc)
                raise ChildTimeout(
                    f"benchmark child {target} still ran after {timeout_s:g} s; stopped"
                ) from None
        if proc.returncode != 0 or not out_path.exists():
            tail = log_path.read_text(errors="replace")[-4000:]
            raise SqueezerayError(
                f"benchmark child {target} exited with {proc.returncode}; its log ends:\n{tail}"
            )
        result = dict(json.loads(out_path.read_text()))
        result["quiet_wait"] = {"waited_s": waited_s, "busy_cores_at_start": busy}
        return result


def busy_cores(window_s: float = 3.0) -> float:
    """Cores busy (non-idle jiffies) over the next `window_s`, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(window_s)
    total1, idle1 = sample()
    if total1 == total0:
        return 0.0
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def wait_for_quiet(
    *, threshold: float | None = None, max_wait_s: float | None = None
) -> tuple[float, float]:
    """Wait (bounded) until fewer than `threshold` cores are busy over a 3 s window.

    Other developers share this 2-core machine; starting a timed run while their tests run
    would measure them. Returns (seconds waited, busy cores when the run started). Defaults
    from the environment: SQUEEZERAY_BENCH_QUIET_CORES (0.3) and SQUEEZERAY_BENCH_QUIET_WAIT_S
    (180).
    """
    env = os.environ.get
    limit = (
        threshold if threshold is not None else float(env("SQUEEZERAY_BENCH_QUIET_CORES", "0.3"))
    )
    budget = (
        max_wait_s if max_wait_s is not None else float(env("SQUEEZERAY_BENCH_QUIET_WAIT_S", "180"))
    )
    t0 = time.perf_counter()
    busy = busy_cores()
    while busy >= limit and time.perf_counter() - t0 < budget:
        busy = busy_cores()
    return time.perf_counter() - t0, busy


class ChildTimeout(SqueezerayError):
    """A benchmark child ran past its time limit (and was stopped with its Ray)."""


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child started with start_new_session=True, and everything in its group:
    SIGINT first (Tune and Ray shut down cleanly on Ctrl-C), SIGKILL after 15 s."""
    import signal

    for sig, wait_s in ((signal.SIGINT, 15.0), (signal.SIGKILL, 15.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (raylet, workers)


def child_main() -> None:
    target, payload_path, out_path = sys.argv[1:4]
    module_name, _, func_name = target.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(json.loads(Path(payload_path).read_text()))
    Path(out_path).write_text(json.dumps(result, default=str))


def scratch_dir(prefix: str) -> Path:
    """A fresh directory for one run's storage (removed by the caller or left in /tmp)."""
    return Path(tempfile.mkdtemp(prefix=f"squeezeray-bench-{prefix}-"))
