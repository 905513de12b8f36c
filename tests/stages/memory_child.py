"""The child process of test_stage_memory: stage task bodies on a 16.8M-parameter MLP, with
the peak RSS each one adds (VmHWM, reset before each; Linux), printed as JSON.

`python -m tests.stages.memory_child STORAGE` (run from the repository root).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.tasks import Task

WIDTH = 4096  # 2 -> 4096 -> 4096 -> 3: 16.8M float32 parameters, 67 MB


def make_task() -> Task:
    """A user task whose model dwarfs everything else in the process (the data is 2-D)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (192,), generator=g)
    x = torch.randn(192, 2, generator=g) + y[:, None].float()
    data = TensorDataset(x, y)
    return Task(
        name="memory-mlp",
        teacher=lambda: nn.Sequential(
            nn.Linear(2, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 3)
        ),
        student=None,
        train=data,
        val=data,
        test=data,
        num_classes=3,
    )


def _kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def _peak_of(fn: Any) -> tuple[Any, int]:
    """(fn(), the bytes of RSS it added at its peak over the RSS before it)."""
    from orchestrator.engine.stage_tasks import release_memory

    release_memory()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _kb("VmRSS")
    out = fn()
    return out, max(_kb("VmHWM"), _kb("VmRSS")) - before


def main(storage: str) -> dict[str, float]:
    from orchestrator.engine.requests import MeasureRequest, StageRequest
    from orchestrator.engine.stage_tasks import execute_measure, execute_stage

    name = "tests.stages.memory_child:make_task"
    float_bytes = sum(p.numel() * 4 for p in make_task().teacher().parameters())
    chain = [
        ("teacher", {"epochs": 0}),
        ("distill", {"epochs": 1, "student_ratio": 0.5}),
        ("prune", {"method": "l1_unstructured", "ratio": 0.6}),
        ("finetune", {"epochs": 1}),
    ]
    ratios: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    parent_key = None
    for stage, params in chain:
        request = StageRequest(
            stage=stage,
            params=params,
            key=f"{len(outputs)}-{stage}",
            parent_key=parent_key,
            teacher_key="0-teacher" if outputs else None,
            task=name,
            storage=storage,
        )
        parent = outputs[parent_key] if parent_key else None
        teacher = outputs.get("0-teacher")
        (data, _info), peak = _peak_of(
            lambda r=request, p=parent, t=teacher: execute_stage(r, p, t)
        )
        outputs[request.key] = data
        parent_key = request.key
        ratios[stage] = peak / float_bytes
    measure = MeasureRequest(task=name, key="0-teacher", warmup=2, repeats=5, time_cap_s=0.05)
    _, peak = _peak_of(lambda: execute_measure(measure, outputs["0-teacher"]))
    ratios["measure_teacher"] = peak / float_bytes
    return ratios


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
