"""Store scale: query times on a store of N sweeps x M trials, before and after compaction.

    python -m bench.store_scale [--sweeps 200] [--trials 50] [--repeats 3] [--smoke]

Builds the store the way sweeps write it (`append_results` once per trial and baseline,
`append_stage_rows` once per executed stage, a checkpoint pair per stage under `cache/`),
copies it, compacts the copy (`squeezeray compact`, timed), then times the user-facing
commands on both, alternating uncompacted and compacted in every round so that both see the
same machine load (this machine is shared): `squeezeray pareto --storage STORE --sweep all`,
`squeezeray pareto --storage STORE` (latest), `squeezeray sweeps --storage STORE`, each a
fresh process, as a user runs them, plus `squeezeray --help` (the process start-up alone)
and the library calls
in this process (`load_results`, `list_sweeps`; first round only). Wall and CPU seconds
(user + sys) are both recorded: on a shared machine the wall time mostly measures the queue
for a core, the CPU time what the command costs. Both stores must answer the same.

Writes bench/results/store_scale.json (store_scale_smoke.json under --smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT, spread, write_result

T0 = datetime(2025, 12, 1, 2, 0, tzinfo=timezone.utc)
STAGES_PER_SWEEP = 8  # teacher, a few KD settings, prune/finetune variants the cache ran
COMMANDS: dict[str, list[str]] = {
    "help": ["--help"],
    "pareto_all": ["pareto", "--storage", "{store}", "--sweep", "all"],
    "pareto_latest": ["pareto", "--storage", "{store}"],
    "sweeps": ["sweeps", "--storage", "{store}"],
}


def _trial_row(sweep_id: str, day: int, trial: int, rng: random.Random) -> dict[str, Any]:
    start = T0 + timedelta(days=day, seconds=30 * trial)
    ratio = rng.uniform(0, 0.9)
    mode = rng.choice(["none", "dynamic_int8"])
    ok = rng.random() > 0.04
    acc = 0.97 - 0.1 * ratio**3 + rng.gauss(0, 0.004)
    return {
        "sweep_id": sweep_id,
        "sweep_name": "nightly",
        "trial_id": f"trial_{trial:05d}",
        "started_at": start,
        "finished_at": start + timedelta(seconds=25),
        "task": "digits",
        "status": "ok" if ok else "error",
        "error": None if ok else "RuntimeError: stage prune failed (synthetic)",
        "is_baseline": False,
        "feasible": ok,
        "runtime": "onnxruntime",
        "distill.temperature": rng.choice([2.0, 4.0, 8.0]),
        "distill.alpha": 0.5,
        "prune.ratio": ratio,
        "prune.method": "global",
        "lora.rank": 0,
        "quantize.mode": mode,
        "params": json.dumps({"prune.ratio": ratio, "quantize.mode": mode}),
        "test_accuracy": acc if ok else None,
        "val_accuracy": acc + rng.gauss(0, 0.003) if ok else None,
        "size_bytes": int(25_000 * (1 - ratio) * (0.3 if mode != "none" else 1)) if ok else None,
        "params_total": 11_000,
        "params_nonzero": int(11_000 * (1 - ratio)),
        "latency_ms_sweep": 0.006 + rng.random() * 0.004 if ok else None,
        "latency_ms_sweep_p90": 0.011 if ok else None,
        "wall_s": 20.0 + rng.random(),
        "stage_keys": [f"{sweep_id}-k{i}" for i in range(5)],
        "code_version": "bench",
    }


def build_store(store: Path, sweeps: int, trials: int, *, seed: int = 0) -> dict[str, Any]:
    """Write `sweeps` sweeps of `trials` trials (plus a baseline each) one file per row."""
    from orchestrator.store.results import append_results, append_stage_rows
    from orchestrator.store.schema import RESULTS_SCHEMA, STAGES_SCHEMA

    rng = random.Random(seed)
    t0 = time.perf_counter()
    cache = store / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    known = set(RESULTS_SCHEMA.names)
    for s in range(sweeps):
        sweep_id = f"nightly-{(T0 + timedelta(days=s)):%Y%m%d}-020000-{s:04x}"
        baseline = {
            **_trial_row(sweep_id, s, 0, rng),
            "trial_id": "baseline",
            "is_baseline": True,
            "status": "ok",
            "error": None,
            "test_accuracy": 0.972,
            "val_accuracy": 0.97,
            "size_bytes": 189_700,
            "latency_ms_sweep": 0.026,
            "runtime": "eager",
        }
        rows = [baseline] + [_trial_row(sweep_id, s, t, rng) for t in range(1, trials + 1)]
        for row in rows:  # one file per trial: what a sweep's results writer leaves
            append_results(store, [{k: v for k, v in row.items() if k in known}])
        for i in range(STAGES_PER_SWEEP):
            key = f"{sweep_id}-k{i}"
            stage = {
                "stage_key": key,
                "stage": "distill",
                "params": "{}",
                "sweep_id": sweep_id,
                "trial_id": "trial_00001",
                "wall_s": 1.0,
                "cpu_s": 1.0,
                "finished_at": T0 + timedelta(days=s),
            }
            append_stage_rows(store, [{k: v for k, v in stage.items() if k in STAGES_SCHEMA.names}])
            (cache / f"{key}.ckpt").write_bytes(os.urandom(2048))
            (cache / f"{key}.json").write_text('{"sha256": "synthetic"}')
    return {"build_s": time.perf_counter() - t0, "files": _count_files(store)}


def _count_files(store: Path) -> dict[str, int]:
    return {
        table: sum(1 for p in (store / table).rglob("*.parquet") if not p.name.startswith("."))
        for table in ("results", "stages")
    }


def _cli(args: list[str], store: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one `squeezeray ARGS` process. The CPU time is
    what the command costs on an idle machine (it has no I/O waits to speak of here)."""
    argv = [a.format(store=store) for a in args]
    code = "from orchestrator.cli import main; main()"
    env = {**os.environ, "COLUMNS": "200"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"squeezeray {' '.join(argv)} failed: {err.decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def _library(store: Path) -> dict[str, float]:
    from orchestrator.store.results import list_sweeps, load_results

    out = {}
    for name, call in (
        ("load_results_all", lambda: load_results(store, sweep="all")),
        ("load_results_latest", lambda: load_results(store, sweep="latest")),
        ("list_sweeps", lambda: list_sweeps(store)),
    ):
        t0 = time.perf_counter()
        call()
        out[name] = time.perf_counter() - t0
    return out


def run(
    *,
    sweeps: int = 200,
    trials: int = 50,
    repeats: int = 3,
    smoke: bool = False,
    results_dir: Path | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    from orchestrator.store.results import list_sweeps, load_results

    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="squeezeray-store-", dir=workdir) as tmp:
        plain = Path(tmp) / "uncompacted"
        compacted = Path(tmp) / "compacted"
        built = build_store(plain, sweeps, trials)
        shutil.copytree(plain, compacted)
        compact_s, compact_cpu_s = _cli(["compact", "--storage", "{store}"], compacted)
        files_after = _count_files(compacted)

        # Both stores answer the same before anything is timed.
        for sweep in ("all", "latest"):
            assert load_results(plain, sweep=sweep).equals(load_results(compacted, sweep=sweep))
        assert list_sweeps(plain).equals(list_sweeps(compacted))

        library = ["load_results_all", "load_results_latest", "list_sweeps"]
        times: dict[str, dict[str, list[float]]] = {
            kind: {name: [] for name in [*COMMANDS, *library]}
            for kind in ("uncompacted", "compacted")
        }
        cpu: dict[str, dict[str, list[float]]] = {
            kind: {name: [] for name in COMMANDS} for kind in ("uncompacted", "compacted")
        }
        for r in range(repeats):
            order = [("uncompacted", plain), ("compacted", compacted)]
            if r % 2:
                order.reverse()
            for name, args in COMMANDS.items():
                for kind, store in order:
                    wall, cpu_s = _cli(args, store)
                    times[kind][name].append(wall)
                    cpu[kind][name].append(cpu_s)
            if r == 0:  # one sample: on the uncompacted store these take minutes
                for kind, store in order:
                    for name, value in _library(store).items():
                        times[kind][name].append(value)

    summary = {kind: {n: spread(v) for n, v in by.items()} for kind, by in times.items()}
    cpu_summary = {kind: {n: spread(v) for n, v in by.items()} for kind, by in cpu.items()}
    ratios = {
        name: statistics.median(
            u / c for u, c in zip(times["uncompacted"][name], times["compacted"][name], strict=True)
        )
        for name in times["compacted"]
    }
    cpu_ratios = {
        name: statistics.median(
            u / c for u, c in zip(cpu["uncompacted"][name], cpu["compacted"][name], strict=True)
        )
        for name in cpu["compacted"]
    }
    data = {
        "command": " ".join(
            [
                "python -m bench.store_scale",
                f"--sweeps {sweeps}",
                f"--trials {trials}",
                f"--repeats {repeats}",
                *(["--smoke"] if smoke else []),
            ]
        ),
        "sweeps": sweeps,
        "trials": trials,
        "rows": sweeps * (trials + 1),
        "repeats": repeats,
        "build_s": built["build_s"],
        "files_before": built["files"],
        "files_after": files_after,
        "compact_s": compact_s,
        "compact_cpu_s": compact_cpu_s,
        "raw": times,
        "raw_cpu": cpu,
        "seconds": summary,
        "cpu_seconds": cpu_summary,
        "speedup_uncompacted_over_compacted": ratios,
        "cpu_speedup_uncompacted_over_compacted": cpu_ratios,
        "goal_s": 2.0,
        "goal_met": {
            name: summary["compacted"][name]["median"] < 2.0
            for name in ("pareto_all", "pareto_latest", "sweeps")
        },
        "goal_met_cpu": {
            name: cpu_summary["compacted"][name]["median"] < 2.0
            for name in ("pareto_all", "pareto_latest", "sweeps")
        },
        "load_avg_before": load_before,
    }
    name = "store_scale_smoke" if smoke else "store_scale"
    write_result(name, data, results_dir=results_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_scale", description=__doc__)
    parser.add_argument("--sweeps", type=int, default=200)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="3 sweeps x 4 trials, 1 repeat")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores are built")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sweeps, args.trials, args.repeats = 3, 4, 1
    for flag in ("sweeps", "trials", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}={getattr(args, flag)} must be >= 1")
    data = run(
        sweeps=args.sweeps,
        trials=args.trials,
        repeats=args.repeats,
        smoke=args.smoke,
        results_dir=args.results_dir,
        workdir=args.workdir,
    )
    for kind in ("uncompacted", "compacted"):
        cells = ", ".join(
            f"{n} {data['seconds'][kind][n]['median']:.2f} s" for n in data["seconds"][kind]
        )
        cpu = ", ".join(
            f"{n} {data['cpu_seconds'][kind][n]['median']:.2f} s" for n in data["cpu_seconds"][kind]
        )
        print(f"{kind}: wall {cells}; cpu {cpu}", file=sys.stderr)
    print(f"compact: {data['compact_s']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
