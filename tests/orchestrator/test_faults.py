"""Faults inside a sweep, through a real local Ray (the session fixture): a Ray worker killed
mid-stage (retried), a stage that keeps killing its worker, a NaN loss, an allocation failure,
a hanging stage under a per-trial time limit, damaged and poisoned stage checkpoints, and the
safety of loading (weights-only checkpoints, user import paths, no dashboard)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.plan import user_sys_path
from orchestrator.engine.stage_tasks import CACHE_DIR, checkpoint_path
from orchestrator.engine.sweep import SweepOutcome, execute_sweep, prepare_sweep
from orchestrator.space.config import load_space
from orchestrator.store.results import load_stages
from stages.errors import SqueezerayError

# A blobs task whose student misbehaves on purpose. Faults fire only while training (or once
# quantized), so the driver's own task check (eval mode, no grad) never triggers them.
FAULTY_TASK = """
import dataclasses
import os
import pathlib
import time

import torch
from torch import nn

from stages.tasks import make_blobs

MARKERS = pathlib.Path("@MARKERS@")
FAULT = "@FAULT@"


def _quantized(model):
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())


class FaultyStudent(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        training = self.training and torch.is_grad_enabled()
        if FAULT == "die_once" and training and not (MARKERS / "died").exists():
            (MARKERS / "died").write_text(str(os.getpid()))
            os._exit(1)  # the Ray worker running the stage dies
        if FAULT == "die_when_quantized" and _quantized(self):
            (MARKERS / f"died-{os.getpid()}").write_text("")
            os._exit(1)
        if FAULT == "nan_or_oom" and training and not hasattr(self, "fault"):
            # the first student to train gets the NaN loss, the other one the allocation failure
            try:
                os.close(os.open(MARKERS / "nan", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                self.fault = "nan"
            except FileExistsError:
                self.fault = "oom"
        if getattr(self, "fault", None) == "nan" and training:
            return out * float("nan")
        if getattr(self, "fault", None) == "oom" and training:
            torch.empty(1 << 60, dtype=torch.uint8)  # 1 EiB: a real allocator failure
        if FAULT == "hang" and training:
            (MARKERS / "hung").write_text(str(os.getpid()))
            time.sleep(600)
        return out


def make():
    base = make_blobs()
    return dataclasses.replace(base, name="faulty", student=lambda: FaultyStudent(base.student()))
"""

SPACE = """
task: @TASK@
pipeline: @PIPELINE@
params:
  teacher.epochs: 1
  distill.epochs: 1
  @SEARCHED@
search: {algorithm: grid}
latency: {warmup: 1, repeats: 3}
"""

pytestmark = pytest.mark.usefixtures("ray_session")


def _faulty_sweep(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    *,
    pipeline: str = "[teacher, distill]",
    searched: str = "distill.temperature: {choice: [4.0]}",
    **options: Any,
) -> tuple[SweepOutcome, Path]:
    """Run a sweep of the faulty task; return its outcome and the markers directory."""
    # A fresh module name per test: reused Ray workers keep modules they imported before.
    module = f"faulty_{uuid.uuid4().hex[:8]}"
    markers = tmp_path / "markers"
    markers.mkdir()
    source = FAULTY_TASK.replace("@MARKERS@", str(markers)).replace("@FAULT@", fault)
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        SPACE.replace("@TASK@", f"{module}:make")
        .replace("@PIPELINE@", pipeline)
        .replace("@SEARCHED@", searched)
    )
    prepared = prepare_sweep(load_space(space_file), storage=tmp_path / "results", **options)
    return execute_sweep(prepared), markers


def _trials(outcome: SweepOutcome) -> list[dict[str, Any]]:
    return [r for r in outcome.table.to_pylist() if not r["is_baseline"]]


@pytest.mark.slow
def test_worker_killed_mid_stage_is_retried_and_the_trial_is_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, markers = _faulty_sweep(tmp_path, monkeypatch, "die_once")
    assert (markers / "died").exists(), "the fault never fired"
    (trial,) = _trials(outcome)
    assert trial["status"] == "ok", trial["error"]
    assert 0.0 <= trial["test_accuracy"] <= 1.0
    # The retry recomputed the stage in a new worker: one distill row, from the retry.
    stages = load_stages(str(tmp_path / "results"), sweep=outcome.summary.sweep_id).to_pylist()
    assert [r["stage"] for r in stages].count("distill") == 1


@pytest.mark.slow
def test_stage_that_keeps_killing_its_worker_is_an_error_row_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, markers = _faulty_sweep(
        tmp_path,
        monkeypatch,
        "die_when_quantized",
        pipeline="[teacher, distill, quantize]",
        searched="quantize.mode: {choice: [none, dynamic_int8]}",
    )
    rows = {r["quantize.mode"]: r for r in _trials(outcome)}
    assert rows["none"]["status"] == "ok", rows["none"]["error"]
    failed = rows["dynamic_int8"]
    assert failed["status"] == "error"
    assert failed["error"].startswith("stage quantize: WorkerCrashedError"), failed["error"]
    # The first run and its 3 retries (max_retries=3) each died in a different worker.
    assert len(list(markers.glob("died-*"))) == 4


@pytest.mark.slow
def test_nan_loss_and_out_of_memory_give_clear_error_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sweep, two students: the first to train gets a NaN loss, the other an allocation
    failure; each trial is an error row saying which, not a hang."""
    started = time.perf_counter()
    outcome, _ = _faulty_sweep(
        tmp_path, monkeypatch, "nan_or_oom", searched="distill.temperature: {choice: [2.0, 4.0]}"
    )
    trials = _trials(outcome)
    assert len(trials) == 2 and all(t["status"] == "error" for t in trials), trials
    errors = sorted(t["error"] for t in trials)
    assert errors[0].startswith("stage distill: RuntimeError: [enforce fail"), errors
    assert "can't allocate memory" in errors[0]
    assert errors[1].startswith("stage distill: SqueezerayError: training diverged: loss is nan")
    assert all(t["test_accuracy"] is None for t in trials)
    assert time.perf_counter() - started < 120  # error rows, not a hang


# A hung stage under --trial-timeout (its row, the cancel, the killed worker, the limit kept for
# a resume): test_options.py's nightly hang test, the suite's one hang of 15 s.


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


# --- damaged and poisoned stage checkpoints ---------------------------------------------------

BLOBS_SPACE = """
task: blobs
pipeline: [teacher, distill]
params:
  teacher.epochs: 1
  distill.epochs: 1
  distill.temperature: {choice: [4.0]}
search: {algorithm: grid}
latency: {warmup: 1, repeats: 3}
"""


class _RunsCode:
    """A pickle that would create a file when unpickled (what a poisoned checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def _poisoned_checkpoint(marker: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"format": 1, "state_dict": {}, "payload": _RunsCode(str(marker))}, buf)
    return buf.getvalue()


def _stage_keys(storage: Path, sweep_id: str, stage: str) -> list[str]:
    rows = load_stages(str(storage), sweep=sweep_id).to_pylist()
    return [r["stage_key"] for r in rows if r["stage"] == stage]


@pytest.mark.slow
def test_damaged_checkpoint_is_recomputed_and_poisoned_one_never_runs_code(
    tmp_path: Path,
) -> None:
    space_file = tmp_path / "space.yaml"
    space_file.write_text(BLOBS_SPACE)
    storage = tmp_path / "results"
    first = execute_sweep(prepare_sweep(str(space_file), storage=storage))
    (distill_key,) = _stage_keys(storage, first.summary.sweep_id, "distill")
    data_name, manifest_name = checkpoint_path(distill_key)
    data_file = storage / CACHE_DIR / data_name
    good = data_file.read_bytes()

    # 1. A truncated checkpoint fails its checksum: detected, recomputed, not loaded.
    data_file.write_bytes(good[: len(good) // 2])
    second = execute_sweep(prepare_sweep(str(space_file), storage=storage))
    assert second.summary.corrupt_checkpoints == 1
    assert _stage_keys(storage, second.summary.sweep_id, "distill") == [distill_key]
    assert _stage_keys(storage, second.summary.sweep_id, "teacher") == []  # loaded, intact
    (trial,) = [r for r in second.table.to_pylist() if not r["is_baseline"]]
    assert trial["status"] == "ok", trial["error"]
    manifest = json.loads((storage / CACHE_DIR / manifest_name).read_text())
    assert manifest["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()

    # 2. A poisoned checkpoint whose manifest matches (someone rewrote both) is loaded with
    # weights_only: the trial fails with a clear error and the pickle's code never runs.
    marker = tmp_path / "pwned"
    poisoned = _poisoned_checkpoint(marker)
    data_file.write_bytes(poisoned)
    manifest["sha256"] = hashlib.sha256(poisoned).hexdigest()
    (storage / CACHE_DIR / manifest_name).write_text(json.dumps(manifest))
    third = execute_sweep(prepare_sweep(str(space_file), storage=storage))
    (trial,) = [r for r in third.table.to_pylist() if not r["is_baseline"]]
    assert trial["status"] == "error"
    assert "not a loadable squeezeray checkpoint" in trial["error"], trial["error"]
    assert "the global `getattr`" in trial["error"], trial["error"]
    assert not marker.exists()


def test_from_bytes_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    from stages.checkpoint import ModelCheckpoint

    marker = tmp_path / "pwned"
    with pytest.raises(SqueezerayError, match="not a readable squeezeray checkpoint"):
        ModelCheckpoint.from_bytes(_poisoned_checkpoint(marker))
    assert not marker.exists()
    # The same bytes through a stage's input loading name the cache file to delete.
    from orchestrator.engine.stage_tasks import _cache_file, _load_input

    where = _cache_file(str(tmp_path), "abc123")
    with pytest.raises(SqueezerayError, match=r"abc123\.ckpt is not a loadable .* checkpoint"):
        _load_input(_poisoned_checkpoint(marker), where)
    assert not marker.exists()


def test_user_task_path_adds_only_the_named_module_root(tmp_path: Path) -> None:
    package = tmp_path / f"userpkg_{uuid.uuid4().hex[:8]}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("def make():\n    raise RuntimeError('not called')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert user_sys_path(f"{package.name}.mod:make") == (str(tmp_path.resolve()),)
    finally:
        sys.path.remove(str(tmp_path))
    assert user_sys_path("blobs") == ()  # built-in tasks add nothing


def test_embedded_ray_serves_no_dashboard() -> None:
    """include_dashboard=False: Ray still runs a headless dashboard process (usage stats), but
    with no web frontend and no URL."""
    from ray._private import worker

    node = worker._global_node
    assert node is not None
    assert not node.webui_url
    for info in node.all_processes.get("dashboard", []):
        with open(f"/proc/{info.process.pid}/cmdline") as f:
            argv = f.read().split("\0")
        assert "--disable-frontend" in argv and "--minimal" in argv, argv
