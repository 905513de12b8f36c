"""A stage task holds a few copies of its model at most (issue 24), not one per serialisation,
load, object-store hop, self-check, optimizer or library call.

Counted as peak RSS over each task body's start, in copies of the teacher's float bytes, on a
16.8M-parameter MLP whose weights dwarf everything else (tests/stages/memory_child.py, a
fresh process; Linux: /proc/self/status and clear_refs). Never timed. Before issue 24's
memory work the same bodies held 4.3-7.2 copies at 50M parameters (bench/stage_memory.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Peak RSS a task body adds, in copies of the teacher's float bytes (measured: after, before)
LIMITS = {
    "teacher": 3.5,  # the model, its serialised bytes, the self-check's load (3.1; 4.3)
    "distill": 5.0,  # teacher, the copy the student is cut from, training state (3.9-4.6; 5.3)
    "prune": 3.5,  # the student, its pruning, the self-check's rebuild (2.5; 6.0)
    # teacher pages, student training, the self-check, and the starting weights kept as a
    # candidate for the best validation epoch (3.0 before that; 3.5-3.7 with it; 5.1)
    "finetune": 4.0,
    "measure_teacher": 2.0,  # the mapped checkpoint, run in place (1.3; 3.5)
}


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs"
)
def test_every_stage_task_holds_a_few_copies_of_the_model_at_most(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.stages.memory_child", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    copies = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(copies) == set(LIMITS)
    assert all(copies[stage] <= limit for stage, limit in LIMITS.items()), copies


def test_a_stored_checkpoint_loads_mapped_from_its_file(tmp_path: Path) -> None:
    """A local storage's handoff: the next task maps the file's tensors (no copy of them)."""
    import torch

    from orchestrator.engine.requests import StoredCheckpoint
    from orchestrator.engine.stage_tasks import _load_input
    from stages.checkpoint import ModelCheckpoint

    ckpt = ModelCheckpoint(task="t", state_dict={"w": torch.arange(4096.0)})
    path = tmp_path / "k.ckpt"
    path.write_bytes(bytes(ckpt.to_buffer()))
    stored = StoredCheckpoint(path=str(path), nbytes=path.stat().st_size, sha256="")
    loaded = _load_input(stored, str(path))
    assert torch.equal(loaded.state_dict["w"], ckpt.state_dict["w"])
    if Path("/proc/self/maps").exists():  # torch.load(mmap=True): the file's own pages
        ptr = loaded.state_dict["w"].data_ptr()
        spans = [
            [int(a, 16) for a in line.split()[0].split("-")]
            for line in Path("/proc/self/maps").read_text().splitlines()
            if line.endswith(str(path))
        ]
        assert any(lo <= ptr < hi for lo, hi in spans), spans


def test_a_stored_checkpoint_missing_on_this_node_names_the_storage_fix(tmp_path: Path) -> None:
    from orchestrator.engine.requests import StoredCheckpoint
    from orchestrator.engine.stage_tasks import _load_input
    from stages.errors import SqueezerayError

    gone = StoredCheckpoint(path=str(tmp_path / "gone.ckpt"), nbytes=10, sha256="")
    with pytest.raises(SqueezerayError, match=r"is missing on this node.*shared filesystem"):
        _load_input(gone, "the checkpoint")
