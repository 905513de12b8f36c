"""A model whose forward branches in Python on its inputs' values, through a real sweep on
Ray: the traced runtimes (torchscript, onnxruntime) are error rows that name the fault and
the fix, never `ok` rows for a model that kept one branch; eager stays ok (newuser-2 item 1)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from orchestrator.engine.sweep import execute_sweep, prepare_sweep
from orchestrator.space.config import load_space

TASK = """
import dataclasses

from torch import nn

from stages.tasks import make_blobs


class Branchy(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        self.b = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 3))

    def forward(self, x):
        if x[:, 0].mean() > 0:
            return self.a(x)
        return self.b(x)


def make():
    base = make_blobs()
    return dataclasses.replace(
        base, name="branchy", teacher=lambda: Branchy(16), student=lambda: Branchy(8)
    )
"""

SPACE = """
task: @TASK@
pipeline: [teacher, export]
params:
  teacher.epochs: 1
  export.runtime: {choice: [eager, torchscript, onnxruntime]}
search: {algorithm: grid}
latency: {warmup: 1, repeats: 3}
"""

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.mark.slow
def test_traced_runtimes_of_a_branching_model_are_error_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"branchy_{uuid.uuid4().hex[:8]}"  # reused Ray workers keep imported modules
    (tmp_path / f"{module}.py").write_text(TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE.replace("@TASK@", f"{module}:make"))
    prepared = prepare_sweep(load_space(space_file), storage=tmp_path / "results")
    outcome = execute_sweep(prepared)
    rows = {
        json.loads(r["params"])["export.runtime"]: r
        for r in outcome.table.to_pylist()
        if not r["is_baseline"]
    }
    assert rows["eager"]["status"] == "ok", rows["eager"]["error"]
    for runtime in ("torchscript", "onnxruntime"):
        row = rows[runtime]
        assert row["status"] == "error", f"{runtime}: a traced model kept one branch"
        assert row["error"].startswith("stage export: "), row["error"]
        assert "Python boolean" in row["error"] and "if x[:, 0].mean() > 0:" in row["error"]
        assert "torch.where" in row["error"] and "export.runtime: eager" in row["error"]
        assert row["test_accuracy"] is None
