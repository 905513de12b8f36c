"""The task fingerprint in stage keys, end to end: a user edits their task file and runs
`squeezeray sweep` again on the same storage, as users do (a new process each time, so the
edited module is imported afresh). The runs join the test session's Ray (`--address`) rather
than each starting its own: each run is a new Ray job, and Ray never lends one job's worker
processes to another, so the stages import the edited module afresh too.

Editing the teacher's width retrains the teacher (a new teacher row in the stages table);
running the unchanged task again loads every stage from the cache. That one training label
edited changes the data part of the fingerprint, and a changed data part every stage key, is
checked without a sweep (tests/stages/test_fingerprint.py, tests/orchestrator/test_keys.py):
a fourth CLI run of this test only repeated the path the width edit takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.store.results import load_stages

pytestmark = pytest.mark.slow

TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from stages.tasks import Task

WIDTH = 16


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, width), nn.ReLU())
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.body(x))


def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = torch.arange(120) % 3
    x[:, 0] += y.float() * 2
    return Task(name="fp", teacher=lambda: Net(WIDTH), student=lambda: Net(4),
                train=TensorDataset(x[:80], y[:80]), val=TensorDataset(x[80:100], y[80:100]),
                test=TensorDataset(x[100:], y[100:]), num_classes=3)
"""

SPACE = """
task: sq_fp_task:make
pipeline: [teacher, distill]
params:
  teacher.epochs: 1
  distill.epochs: 1
  distill.temperature: {choice: [2.0]}
search: {algorithm: random, trials: 1, seed: 0}
latency: {warmup: 1, repeats: 3}
"""


def _sweep(tmp_path: Path, sweep_id: str, address: str) -> dict[str, int]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",  # an edit of equal size in the same second: no stale pyc
    }
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "squeezeray"),
            "sweep",
            str(tmp_path / "space.yaml"),
            "--storage",
            str(tmp_path / "runs"),
            "--sweep-id",
            sweep_id,
            "--address",
            address,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    counts: dict[str, int] = {}
    try:
        stages = load_stages(str(tmp_path / "runs"), sweep=sweep_id).to_pylist()
    except Exception:  # no stage executed at all: no partition for this sweep
        stages = []
    for row in stages:
        counts[row["stage"]] = counts.get(row["stage"], 0) + 1
    return counts


@pytest.fixture
def address(ray_session: None) -> str:
    """The session Ray's GCS address, for CLI runs in other processes to join."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


def test_edited_model_retrains_the_teacher_unchanged_task_loads_it(
    tmp_path: Path, address: str
) -> None:
    module = tmp_path / "sq_fp_task.py"
    module.write_text(textwrap.dedent(TASK))
    (tmp_path / "space.yaml").write_text(SPACE)

    assert _sweep(tmp_path, "first", address) == {"teacher": 1, "distill": 1}
    assert _sweep(tmp_path, "unchanged", address) == {}  # everything loaded from the cache

    module.write_text(textwrap.dedent(TASK).replace("WIDTH = 16", "WIDTH = 17"))
    assert _sweep(tmp_path, "wider", address).get("teacher") == 1
