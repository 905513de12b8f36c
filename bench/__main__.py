"""squeezeray's benchmarks: `python -m bench [--smoke] [--only NAME,...] [--repeats N]`.

Writes `bench/results/<name>.json` per benchmark (`<name>_smoke.json` under --smoke, which runs
every benchmark at tiny sizes in this process to check that the code still works; its numbers
mean nothing). `bench/RESULTS.md` is the written summary of the full results.

    sweep_vs_naive   squeezeray vs a plain Ray Tune sweep, digits and digits-cnn
    parallel         the same sweep on 1 and 2 CPUs
    concurrency      with the proposed fixes: 2, 4 or 8 trials at once on 2 CPUs
    latency_noise    latency CV alone and beside a sweep
    search_quality   hypervolume, Optuna vs random search, 3 seeds
    compression      size/latency ratios of the default sweeps' fronts, KD vs CE
    pareto           Pareto-front scale (bench/pareto_bench.py, another developer's)
    store_scale      query times on 200 sweeps x 50 trials, before and after compaction

Apart: `python -m bench.quality_checks` (quality checks moved out of the test suite: KD beats
plain CE), `python -m bench.ray_cli` (heads started with Ray's own CLI), `python -m bench.scale`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCHMARKS = (
    "sweep_vs_naive",
    "parallel",
    "concurrency",
    "latency_noise",
    "search_quality",
    "compression",
    "pareto",
    "store_scale",
)


def _runner(name: str, *, smoke: bool, repeats: int, results_dir: Path | None) -> Callable[[], Any]:
    if name == "sweep_vs_naive":
        from bench import sweep_vs_naive

        return lambda: sweep_vs_naive.run(smoke=smoke, repeats=repeats, results_dir=results_dir)
    if name == "parallel":
        from bench import parallel

        return lambda: parallel.run(smoke=smoke, repeats=repeats, results_dir=results_dir)
    if name == "concurrency":
        from bench import parallel

        return lambda: parallel.run_concurrency(
            smoke=smoke, repeats=repeats, results_dir=results_dir
        )
    if name == "latency_noise":
        from bench import latency_noise

        return lambda: latency_noise.run(smoke=smoke, results_dir=results_dir)
    if name == "search_quality":
        from bench import search_quality

        return lambda: search_quality.run(smoke=smoke, results_dir=results_dir)
    if name == "compression":
        from bench import compression

        return lambda: compression.run(smoke=smoke, results_dir=results_dir)
    if name == "store_scale":
        from bench import store_scale

        if smoke:
            return lambda: store_scale.run(
                sweeps=3, trials=4, repeats=1, smoke=True, results_dir=results_dir
            )
        return lambda: store_scale.run(repeats=repeats, results_dir=results_dir)
    from bench import pareto_bench
    from bench.common import RESULTS_DIR

    if smoke:
        out = str((results_dir or RESULTS_DIR) / "pareto_smoke.json")
        argv = ["--sizes", "1000", "--repeats", "1", "--out", out, "--markdown", ""]
    else:
        argv = []
    return lambda: pareto_bench.main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, in-process: a check")
    parser.add_argument("--only", default="", help=f"comma list of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of timed comparisons")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"--only: unknown benchmark(s) {', '.join(unknown)}; accepted: {', '.join(BENCHMARKS)}"
        )
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    for name in names:
        t0 = time.perf_counter()
        run = _runner(name, smoke=args.smoke, repeats=args.repeats, results_dir=args.results_dir)
        run()
        print(f"{name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
