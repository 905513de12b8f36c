"""Through Ray: a stage that trains for a while says where it is in the sweep's heartbeat
lines ("running 1: teacher (epoch 1/1, batch 0/2)"), as its task tells the cache actor
(newuser8 F-PROG-1: a 30M teacher trained 10 minutes with only "running 3: teacher")."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app

SLOW_TASK = """
import dataclasses
import time

from torch import nn

from stages.tasks import make_blobs


class SlowWhenTraining(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if self.training:
            time.sleep(1.5)  # a big model's batch, without the CPU
        return self.inner(x)


def make():
    base = make_blobs(n_per_class=40)
    return dataclasses.replace(base, name="slow", teacher=lambda: SlowWhenTraining(base.teacher()))
"""

SPACE = """
task: @TASK@
pipeline: [teacher, quantize]
params:
  teacher.epochs: 1
  teacher.batch_size: 64
  quantize.mode: {choice: [none]}
search: {algorithm: grid}
latency: {warmup: 1, repeats: 3, time_cap: 0.05}
"""


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_training_stage_says_its_epoch_and_batch_in_the_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"slow_{uuid.uuid4().hex[:8]}"  # fresh: Ray workers keep modules they imported
    (tmp_path / f"{module}.py").write_text(SLOW_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "space.yaml").write_text(SPACE.replace("@TASK@", f"{module}:make"))
    monkeypatch.setenv("SQUEEZERAY_HEARTBEAT_S", "1")
    result = CliRunner().invoke(
        app, ["sweep", str(tmp_path / "space.yaml"), "--storage", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    # one trial: the baseline waiting on the same teacher does not make it "shared"
    said = re.findall(r"running 1: teacher \(epoch 1/1, batch (\d)/(\d)\);", result.stderr)
    assert said, result.stderr
    assert {total for _, total in said} == {"2"}  # 84 training samples, batches of 64
