"""Benchmark: squeezeray's exact Pareto front next to optuna, pymoo and moocore, same run.

    python -m bench.pareto_bench [--sizes 10000,100000,1000000] [--repeats 5]
                                 [--out bench/results/pareto.json] [--markdown bench/PARETO.md]

Two distributions of 3 minimised objectives: `uniform` (points in the unit cube; the front is
~100 points at 1M) and `plane` (points on the simplex x + y + z = 1: every point is on the
front, the worst case for pruning tricks). Each method gets the same array; every answer is
checked against squeezeray's (boolean mask, duplicates kept) and the run stops if any differ.
Methods are interleaved within each repeat so that a busy machine slows all of them alike;
median, min and max of the repeats are recorded, with the machine, the date and the versions.

- squeezeray: `orchestrator.query.pareto.is_non_dominated` on the (n, 3) numpy array.
- squeezeray (Arrow): `orchestrator.query.pareto.pareto_front` end to end on a pyarrow Table with
  status/is_baseline columns (filtering, column conversion, the front rows taken out).
- optuna: `optuna.study._multi_objective._is_pareto_front`, what `study.best_trials` and
  `_fast_non_domination_rank(..., n_below=1)` run (O(n x front): skipped where the front is
  large and n is over 10,000).
- pymoo: `NonDominatedSorting().do(F, only_non_dominated_front=True)`.
- moocore: `moocore.is_nondominated(F, keep_weakly=True)`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

Method = Callable[[np.ndarray], np.ndarray]  # (n, 3) minimised -> (n,) bool front mask

OPTUNA_MAX_N_LARGE_FRONT = 10_000


def _squeezeray(points: np.ndarray) -> np.ndarray:
    from orchestrator.query.pareto import is_non_dominated

    return is_non_dominated(points, ["min", "min", "min"])


def _arrow_table(points: np.ndarray) -> Any:
    import pyarrow as pa

    n = points.shape[0]
    return pa.table(
        {
            "row": pa.array(np.arange(n)),
            "status": pa.repeat("ok", n),
            "is_baseline": pa.array(np.zeros(n, dtype=bool)),
            "val_accuracy": pa.array(1.0 - points[:, 0]),  # maximised
            "size_bytes": pa.array(points[:, 1] * 1e6),
            "latency_ms_sweep": pa.array(points[:, 2]),
        }
    )


def _squeezeray_arrow(table: Any) -> np.ndarray:
    from orchestrator.query.pareto import pareto_front

    front = pareto_front(
        table, {"val_accuracy": "max", "size_bytes": "min", "latency_ms_sweep": "min"}
    )
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[front.column("row").to_numpy()] = True
    return mask


def _optuna(points: np.ndarray) -> np.ndarray:
    from optuna.study._multi_objective import _is_pareto_front

    return np.asarray(_is_pareto_front(points, assume_unique_lexsorted=False), dtype=bool)


def _pymoo(points: np.ndarray) -> np.ndarray:
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    front = NonDominatedSorting().do(points, only_non_dominated_front=True)
    mask = np.zeros(points.shape[0], dtype=bool)
    mask[np.asarray(front, dtype=int)] = True
    return mask


def _moocore(points: np.ndarray) -> np.ndarray:
    import moocore

    return np.asarray(moocore.is_nondominated(points, keep_weakly=True), dtype=bool)


METHODS: dict[str, Method] = {
    "squeezeray": _squeezeray,
    "squeezeray (Arrow)": _squeezeray_arrow,  # gets a table, see _inputs
    "optuna": _optuna,
    "pymoo": _pymoo,
    "moocore": _moocore,
}


def make_points(distribution: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        return rng.random((n, 3))
    if distribution == "plane":
        return rng.dirichlet(np.ones(3), size=n)
    raise SystemExit(f"unknown distribution {distribution!r}; accepted: uniform, plane")


def _available(name: str) -> bool:
    module = {"optuna": "optuna", "pymoo": "pymoo", "moocore": "moocore"}.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for module in ("numpy", "pyarrow", "optuna", "pymoo", "moocore"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            versions[module] = "not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "versions": versions,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_case(
    distribution: str, n: int, repeats: int, methods: list[str], *, seed: int = 0
) -> dict[str, Any]:
    points = make_points(distribution, n, seed)
    table = _arrow_table(points)
    inputs = {name: table if name == "squeezeray (Arrow)" else points for name in methods}
    reference = _squeezeray(points)
    skipped: dict[str, str] = {}
    active = []
    for name in methods:
        large_front = reference.mean() > 0.01
        if name == "optuna" and large_front and n > OPTUNA_MAX_N_LARGE_FRONT:
            skipped[name] = (
                "its O(n x front) loop takes minutes to hours when every point is on the front"
            )
        elif not _available(name):
            skipped[name] = "not installed"
        else:
            active.append(name)
    times: dict[str, list[float]] = {name: [] for name in active}
    for _ in range(repeats):
        for name in active:
            if times[name] and sum(times[name]) > 60:
                continue  # slow method: its first repeats are enough
            start = time.perf_counter()
            mask = METHODS[name](inputs[name])  # type: ignore[arg-type]
            times[name].append(time.perf_counter() - start)
            if not np.array_equal(mask, reference):
                raise SystemExit(
                    f"{name} disagrees with squeezeray on {distribution} n={n}: "
                    f"{int(mask.sum())} vs {int(reference.sum())} front points, "
                    f"{int((mask != reference).sum())} rows differ"
                )
    results = {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "repeats": len(ts),
            "agrees": True,
        }
        for name, ts in times.items()
    }
    return {
        "distribution": distribution,
        "n": n,
        "objectives": 3,
        "front_size": int(reference.sum()),
        "results": results,
        "skipped": skipped,
    }


def _warm_up(methods: list[str]) -> None:
    """First calls pay for imports and caches; keep them out of the timings."""
    points = make_points("uniform", 3000, 1)
    table = _arrow_table(points)
    for name in methods:
        if _available(name):
            METHODS[name](table if name == "squeezeray (Arrow)" else points)  # type: ignore[arg-type]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Pareto front benchmark",
        "",
        "Exact non-dominated filtering (first front only, duplicates kept) of n points x 3",
        "minimised objectives; every method's answer equals squeezeray's bit for bit (checked",
        "on every repeat). Median of the repeats, [min - max] in brackets, seconds.",
        "Written by `python -m bench.pareto_bench`; numbers from one run on:",
        "",
        f"- {m['cpu_model']}, {m['cores']} cores, {m['platform']}",
        f"- load average at start: {m['load_average_at_start']} (a machine shared with other",
        "  jobs: methods are interleaved within each repeat so the noise hits all of them)",
        f"- {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- {m['date']}",
        "",
    ]
    methods = list(METHODS)
    for distribution in dict.fromkeys(c["distribution"] for c in report["cases"]):
        cases = [c for c in report["cases"] if c["distribution"] == distribution]
        about = {
            "uniform": "uniform random points in the unit cube (small front)",
            "plane": "points on the plane x + y + z = 1 (every point on the front)",
        }.get(distribution, distribution)
        lines += [f"## {distribution}: {about}", ""]
        lines.append("| n | front | " + " | ".join(methods) + " | squeezeray vs fastest other |")
        lines.append("|---:|---:|" + "---:|" * len(methods) + "---:|")
        for case in cases:
            cells = []
            for name in methods:
                r = case["results"].get(name)
                if r is None:
                    cells.append("skipped" if name in case["skipped"] else "-")
                else:
                    cells.append(f"{r['median_s']:.4f} [{r['min_s']:.4f} - {r['max_s']:.4f}]")
            others = [
                r["median_s"]
                for name, r in case["results"].items()
                if not name.startswith("squeezeray")
            ]
            ours = case["results"]["squeezeray"]["median_s"]
            ratio = f"{min(others) / ours:.1f}x faster" if others else "-"
            if others and min(others) < ours:
                ratio = f"{ours / min(others):.2f}x slower"
            lines.append(
                f"| {case['n']:,} | {case['front_size']:,} | " + " | ".join(cells) + f" | {ratio} |"
            )
        skipped = {name for case in cases for name in case["skipped"]}
        for name in sorted(skipped):
            sizes = [f"{c['n']:,}" for c in cases if name in c["skipped"]]
            why = next(c["skipped"][name] for c in cases if name in c["skipped"])
            lines += ["", f"{name} skipped at n = {', '.join(sizes)}: {why}."]
        lines.append("")
    lines += [
        "How squeezeray's front is computed (`orchestrator/query/pareto.py`): pivots (the point",
        "with the smallest normalised sum, then again among the survivors) drop every point",
        "they dominate while that pays; the survivors are sorted lexicographically, merged",
        "when equal, and swept exactly - a running minimum for 2 objectives, a vectorised",
        "divide and conquer over the sweep order for 3 (a radix sort and a running minimum",
        "per level, O(n log n) numpy work), blocks against the front so far for more. The",
        "pivots make the usual case (a small front) fast; on the plane, where nothing can be",
        "pruned, the numpy divide and conquer ran 1.1-1.6x slower than moocore's C sweep here.",
        "pymoo 0.6's `NonDominatedSorting` ranks every front with moocore's `pareto_rank`",
        "before returning the first, hence its time.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--distributions", default="uniform,plane")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="bench/results/pareto.json")
    parser.add_argument("--markdown", default="bench/PARETO.md")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; accepted: {', '.join(METHODS)}")
    report: dict[str, Any] = {"machine": machine(), "cases": []}
    _warm_up(methods)
    for distribution in args.distributions.split(","):
        for n in sizes:
            case = run_case(distribution, n, args.repeats, methods)
            report["cases"].append(case)
            summary = ", ".join(f"{k} {v['median_s']:.4f}s" for k, v in case["results"].items())
            print(
                f"{distribution} n={n:,} front={case['front_size']:,}: {summary}", file=sys.stderr
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
