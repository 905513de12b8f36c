"""Benchmark 4: search quality, Optuna multi-objective (TPE, the default, and the
Gaussian-process sampler) vs random search.

Per seed, an Optuna TPE sweep of 32 trials, an Optuna GP sweep of 32 trials and a random sweep
of 64 trials on the cheap `bench-quality` space, all on one storage (the teacher and KD stages
are computed once and loaded by every later run), each in a fresh child process with its own
2-CPU Ray. The hypervolume after the first N finished trials (ordered by `finished_at`) is
computed for N in {8, 16, 32} (and 64 for random) against one fixed reference point from the
baseline (the uncompressed teacher): its size, its latency (the median of every run's baseline
measurement, so one slow measurement cannot move the box), and its accuracy minus 5 points
(the baseline's own accuracy would leave almost no volume: students rarely beat their teacher).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, run_child, scratch_dir, spread, write_result

SPACE = str(ROOT / "search_spaces" / "bench-quality.yaml")
OBJECTIVES = {"val_accuracy": "max", "size_bytes": "min", "latency_ms_sweep": "min"}
ACCURACY_SIZE = {"val_accuracy": "max", "size_bytes": "min"}
ACCURACY_MARGIN = 0.05  # reference accuracy = baseline accuracy - 5 points


def child_sweep(payload: dict[str, Any]) -> dict[str, Any]:
    from orchestrator.engine.runtime import init_ray
    from orchestrator.engine.sweep import execute_sweep, prepare_sweep
    from orchestrator.space.options import SweepOptions

    space = payload["space"]
    if payload.get("sampler", "tpe") != "tpe":  # a copy of the space with another sampler
        import yaml

        doc = yaml.safe_load(Path(space).read_text())
        doc.setdefault("search", {})["sampler"] = payload["sampler"]
        space = str(Path(payload["storage"]).parent / f"space-{payload['sampler']}.yaml")
        Path(space).write_text(yaml.safe_dump(doc))
    sweep = prepare_sweep(
        space,
        SweepOptions.build(
            trials=payload["trials"],
            seed=payload["seed"],
            algorithm=payload["algorithm"],
            storage=payload["storage"],
            name=f"{payload.get('label', payload['algorithm'])}-{payload['seed']}",
            num_cpus=payload["num_cpus"],
        ),
    )
    init_ray(address=None, num_cpus=payload["num_cpus"])
    t0 = time.perf_counter()
    outcome = execute_sweep(sweep)
    return {
        "sweep_id": sweep.sweep_id,
        "sweep_s": time.perf_counter() - t0,
        "trials_ok": outcome.summary.trials_ok,
        "trials_stopped": outcome.summary.trials_stopped,
        "trials_failed": outcome.summary.trials_failed,
        "stages_executed": outcome.summary.stages_executed,
        "stages_loaded": outcome.summary.stages_loaded,
    }


def hv_prefixes(
    storage: str,
    sweep_id: str,
    sizes: list[int],
    reference: dict[str, float],
    objectives: dict[str, str] = OBJECTIVES,
) -> dict[str, float]:
    """Hypervolume of the first n finished trials, for each n in `sizes`."""
    import pyarrow.compute as pc

    from orchestrator.query.pareto import hypervolume
    from orchestrator.store.results import load_results

    table = load_results(storage, sweep=sweep_id)
    trials = table.filter(pc.invert(table.column("is_baseline"))).sort_by(
        [("finished_at", "ascending")]
    )
    return {
        str(n): hypervolume(trials.slice(0, n), objectives, {k: reference[k] for k in objectives})
        for n in sizes
        if n <= trials.num_rows
    }


def reference_point(storage: str, sweep_ids: list[str]) -> dict[str, float]:
    """Baseline size, median baseline latency over the runs, baseline accuracy - 5 points."""
    import statistics

    from orchestrator.store.results import load_results

    rows = load_results(storage, sweep="all").to_pylist()
    bases = [r for r in rows if r["is_baseline"] and r["sweep_id"] in sweep_ids]
    return {
        "val_accuracy": float(bases[0]["val_accuracy"]) - ACCURACY_MARGIN,
        "size_bytes": float(bases[0]["size_bytes"]),
        "latency_ms_sweep": statistics.median(float(r["latency_ms_sweep"]) for r in bases),
    }


SEARCHERS = {  # label -> (algorithm, Optuna sampler, trials)
    "optuna": ("optuna", "tpe", 32),
    "optuna_gp": ("optuna", "gp", 32),
    "random": ("random", "tpe", 64),
}


def run(*, smoke: bool = False, results_dir: Any = None) -> dict[str, Any]:
    """3 seeds x (Optuna TPE 32, Optuna GP 32, random 64); hypervolume per prefix; the JSON."""
    seeds = [0] if smoke else [0, 1, 2]
    # a smoke run: one trial per searcher (each sweep's code path; its numbers mean nothing)
    searchers = {k: (a, smp, 1) for k, (a, smp, _) in SEARCHERS.items()} if smoke else SEARCHERS
    sizes = {
        label: [1] if smoke else [n for n in (8, 16, 32, 64) if n <= trials]
        for label, (_, _, trials) in searchers.items()
    }
    space = str(ROOT / "search_spaces" / "tiny.yaml") if smoke else SPACE
    storage = str(scratch_dir("quality") / "store")
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for label, (algorithm, sampler, trials) in searchers.items():
            r = run_child(
                "bench.search_quality:child_sweep",
                {
                    "space": space,
                    "trials": trials,
                    "seed": seed,
                    "algorithm": algorithm,
                    "sampler": sampler if algorithm == "optuna" else "tpe",
                    "label": label,
                    "storage": storage,
                    "num_cpus": 2,
                },
                inprocess=smoke,
            )
            runs.append({"seed": seed, "algorithm": label, **r})
    reference = reference_point(storage, [r["sweep_id"] for r in runs])
    # HV as a fraction of the box between the reference and (baseline accuracy, 0 B, 0 ms):
    # 1.0 would be a model as accurate as the teacher with no size and no latency.
    box = ACCURACY_MARGIN * reference["size_bytes"] * reference["latency_ms_sweep"]
    hv: dict[str, dict[str, list[float]]] = {label: {} for label in searchers}
    hv2: dict[str, dict[str, list[float]]] = {label: {} for label in searchers}
    for r in runs:
        raw = hv_prefixes(storage, r["sweep_id"], sizes[r["algorithm"]], reference)
        r["hypervolume"] = {n: v / box for n, v in raw.items()}
        # accuracy x size only: both deterministic (latency is measured, and noisy here)
        raw2 = hv_prefixes(storage, r["sweep_id"], sizes[r["algorithm"]], reference, ACCURACY_SIZE)
        r["hypervolume_accuracy_size"] = {
            n: v / (ACCURACY_MARGIN * reference["size_bytes"]) for n, v in raw2.items()
        }
        for n, value in r["hypervolume"].items():
            hv[r["algorithm"]].setdefault(n, []).append(value)
        for n, value in r["hypervolume_accuracy_size"].items():
            hv2[r["algorithm"]].setdefault(n, []).append(value)
    table = {f"{alg}@{n}": spread(values) for alg, by_n in hv.items() for n, values in by_n.items()}
    table2 = {
        f"{alg}@{n}": spread(values) for alg, by_n in hv2.items() for n, values in by_n.items()
    }
    goal = None
    if not smoke:
        random64 = hv["random"]["64"]
        goal = {"random64_mean": sum(random64) / len(random64)}
        for label in ("optuna", "optuna_gp"):
            at32 = hv[label]["32"]
            goal[label] = {
                "at32_mean": sum(at32) / len(at32),
                "seeds_at32_ge_random64": sum(a >= b for a, b in zip(at32, random64, strict=True)),
                "met": sum(at32) / len(at32) >= goal["random64_mean"],
            }
    out = {
        "space": Path(space).name,
        "seeds": seeds,
        "objectives": OBJECTIVES,
        "reference": reference,
        "reference_rule": (
            "baseline size; median baseline latency of the runs; baseline accuracy - 0.05"
        ),
        "searchers": {
            k: {"algorithm": a, "sampler": smp, "trials": t} for k, (a, smp, t) in searchers.items()
        },
        "hypervolume_unit": "fraction of the box reference..(baseline accuracy, 0 B, 0 ms)",
        "hypervolume": table,
        "hypervolume_accuracy_size": table2,
        "goal": goal,
        "runs": runs,
        "command": "python -m bench --only search_quality",
    }
    name = "search_quality_smoke" if smoke else "search_quality"
    write_result(name, out, results_dir=results_dir)
    return out
