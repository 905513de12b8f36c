"""Quality checks moved out of the test suite (they prove how good a result is, not that a
capability works, and cost tens of seconds each): `python -m bench.quality_checks`.

    kd_beats_ce    default KD (T=4, alpha=0.5, 60 epochs) vs alpha=1 (plain CE), 3 seeds,
                   digits; was tests/stages/test_distill.py::test_kd_student_beats_plain_ce_student

Each check prints its numbers and what failed; the exit code is 1 when any check failed, so a
run is a real check. The suite keeps the capability tests (distillation through Ray, the KD
loss's wiring) and a smoke of this module's code path (tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

KD_SEEDS = (0, 1, 2)


def kd_beats_ce(
    *, seeds: Sequence[int] = KD_SEEDS, epochs: int | None = None, teacher_epochs: int | None = None
) -> dict[str, Any]:
    """Default KD vs plain CE, same seeds, same init, on the default digits teacher.

    Scored on val + test together (540 held-out images): val alone picks the best epoch, and
    on digits the gap is a few images, so the larger pool is the less noisy judge. `epochs`
    (None: the stage's default, 60) only for a smoke run."""
    import torch
    from torch.utils.data import ConcatDataset

    from stages.base import StageInput
    from stages.distill import DistillParams, distill
    from stages.rebuild import build_model
    from stages.tasks import load_task
    from stages.teacher import TeacherParams, train_teacher
    from stages.training import accuracy

    torch.set_num_threads(1)  # as the suite ran it: tiny models run fastest on one thread
    cpu = torch.device("cpu")
    digits = load_task("digits")
    teacher_params = (
        TeacherParams() if teacher_epochs is None else TeacherParams(epochs=teacher_epochs)
    )
    teacher = train_teacher(StageInput(task=digits, parent=None, seed=0), teacher_params)
    held_out: ConcatDataset[tuple[torch.Tensor, torch.Tensor]] = ConcatDataset(
        [digits.val, digits.test]
    )
    extra = {} if epochs is None else {"epochs": epochs}
    scores: dict[float, list[float]] = {1.0: [], 0.5: []}
    start = time.perf_counter()
    for alpha in scores:
        for seed in seeds:
            out = distill(
                StageInput(task=digits, parent=teacher.checkpoint, seed=seed),
                DistillParams(temperature=4.0, alpha=alpha, **extra),
            )
            model = build_model(digits, out.checkpoint)
            scores[alpha].append(accuracy(model, held_out, device=cpu))
    ce, kd = scores[1.0], scores[0.5]
    failed = []
    if statistics.mean(kd) < statistics.mean(ce):
        failed.append("KD's mean accuracy is below plain CE's")
    if min(kd) < 0.95:
        failed.append(f"a KD student below 0.95 ({min(kd):.4f})")
    return {
        "kd": kd,
        "ce": ce,
        "seeds": list(seeds),
        "seconds": time.perf_counter() - start,
        "failed": failed,
    }


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {"kd_beats_ce": kd_beats_ce}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks")
    args = parser.parse_args(argv)
    bad = 0
    for name in args.only.split(","):
        result = CHECKS[name]()
        print(f"{name}: {result}")
        bad += bool(result["failed"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
