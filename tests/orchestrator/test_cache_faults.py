"""The stage cache under faults, through a real local Ray (the session fixture): the cache actor
killed during a sweep (restarted: every trial ok), killed for good (running trials `lost`, the
driver ends with its summary, `--resume` runs the lost trials and not the failed ones), and two
sweeps on one storage at once (a second sweep started as its own process: each stage key is
computed once). The claim and fault-kind logic without Ray is in test_claims.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.stage_tasks import cache_actor_name
from orchestrator.engine.sweep import SweepOutcome, execute_sweep, prepare_sweep
from orchestrator.space.config import load_space
from orchestrator.store.results import load_results, load_stages

ROOT = Path(__file__).resolve().parents[2]

# A blobs task whose models wait or fail on the test's command, through marker files. Faults
# fire only while training, so the driver's own task check (eval mode, no grad) never does.
# - `block` present and `go` absent: a training forward writes `blocked-<pid>` and waits for `go`
#   (in the student, or in the teacher when WHO is "teacher")
# - `fail` present: the first training forward that renames it to `failed` raises (once)
TASK = """
import dataclasses
import os
import pathlib
import time

import torch
from torch import nn

from stages.tasks import make_blobs

MARKERS = pathlib.Path("@MARKERS@")
WHO = "@WHO@"


class Gate(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            _gate()
        return self.inner(x)


def _gate():
    if (MARKERS / "fail").exists():
        try:
            os.rename(MARKERS / "fail", MARKERS / "failed")
        except OSError:
            pass
        else:
            raise ValueError("the model failed on purpose")
    if (MARKERS / "block").exists() and not (MARKERS / "go").exists():
        (MARKERS / f"blocked-{os.getpid()}").write_text("")
        while not (MARKERS / "go").exists():
            time.sleep(0.1)


def make():
    base = make_blobs()
    if WHO == "teacher":
        return dataclasses.replace(base, name="gated", teacher=lambda: Gate(base.teacher()))
    return dataclasses.replace(base, name="gated", student=lambda: Gate(base.student()))
"""

SPACE = """
task: @TASK@
pipeline: [teacher, distill]
params:
  teacher.epochs: 1
  distill.epochs: 1
  distill.temperature: {choice: [2.0, 4.0]}
search: {algorithm: grid@CONCURRENCY@}
latency: {warmup: 1, repeats: 3, rounds: 0}
"""

pytestmark = pytest.mark.usefixtures("ray_session")


def _write_task(tmp_path: Path, *, who: str = "student", concurrency: str = "") -> Path:
    """The gated task as a fresh module (reused Ray workers keep modules imported before) and
    its space file; returns the space file. Markers go under tmp_path/markers."""
    module = f"gated_{uuid.uuid4().hex[:8]}"
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    source = TASK.replace("@MARKERS@", str(markers)).replace("@WHO@", who)
    (tmp_path / f"{module}.py").write_text(source)
    space = tmp_path / "space.yaml"
    space.write_text(
        SPACE.replace("@TASK@", f"{module}:make").replace("@CONCURRENCY@", concurrency)
    )
    return space


def _when(condition: Callable[[], bool], action: Callable[[], None], *, timeout: float) -> Any:
    """Run `action` in a thread as soon as `condition` holds (or after `timeout`)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _blocked(markers: Path) -> Callable[[], bool]:
    return lambda: any(markers.glob("blocked-*"))


def _kill_cache(sweep_id: str, *, restart: bool) -> None:
    import ray

    ray.kill(ray.get_actor(cache_actor_name(sweep_id)), no_restart=not restart)


def _trials(outcome: SweepOutcome) -> dict[float, dict[str, Any]]:
    rows = [r for r in outcome.table.to_pylist() if not r["is_baseline"]]
    return {r["distill.temperature"]: r for r in rows}


@pytest.mark.slow
def test_cache_actor_killed_mid_sweep_restarts_and_every_trial_is_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = _write_task(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    markers = tmp_path / "markers"
    (markers / "block").write_text("")

    def kill_then_go() -> None:
        _kill_cache("killed", restart=True)
        time.sleep(1.0)
        (markers / "go").write_text("")

    _when(_blocked(markers), kill_then_go, timeout=180)
    prepared = prepare_sweep(load_space(space), storage=tmp_path / "store", sweep_id="killed")
    outcome = execute_sweep(prepared)

    assert any(markers.glob("blocked-*")), "no stage was running when the actor was killed"
    trials = _trials(outcome)
    assert sorted(trials) == [2.0, 4.0]
    assert all(r["status"] == "ok" for r in trials.values()), [r["error"] for r in trials.values()]
    assert outcome.summary.cache_restarted
    # Both actors' executions are counted: one per stage row (the teacher, run before the kill,
    # and whatever the restarted actor ran).
    executed = load_stages(str(tmp_path / "store"), sweep="killed").to_pylist()
    assert executed[0]["stage"] == "teacher"
    assert outcome.summary.stages_executed == len(executed)
    assert outcome.summary.exit_code == 0
    baseline = [r for r in outcome.table.to_pylist() if r["is_baseline"]]
    assert baseline and baseline[-1]["status"] == "ok", baseline[-1]["error"]


@pytest.mark.slow
def test_a_lost_trial_is_rerun_by_resume_and_a_failed_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = _write_task(tmp_path, concurrency=", max_concurrent: 1")
    monkeypatch.syspath_prepend(str(tmp_path))
    markers = tmp_path / "markers"
    storage = tmp_path / "store"
    for name in ("fail", "block"):
        (markers / name).write_text("")
    # The first trial's model fails (it takes `fail`); the second blocks in its distillation,
    # and the cache actor is then killed for good: that trial is lost to the infrastructure.
    _when(_blocked(markers), lambda: _kill_cache("lost", restart=False), timeout=180)
    prepared = prepare_sweep(load_space(space), storage=storage, sweep_id="lost")
    first = execute_sweep(prepared)  # no raw ActorDiedError: the sweep ends with its summary

    trials = _trials(first)
    assert trials[2.0]["status"] == "error", trials[2.0]["error"]
    assert "the model failed on purpose" in trials[2.0]["error"]
    lost = trials[4.0]
    assert lost["status"] == "lost", lost["error"]
    assert "--resume" in lost["error"] and "infrastructure" in lost["error"]
    assert first.summary.exit_code == 4  # no trial succeeded (the documented exit code)
    assert first.summary.trials_lost == 1
    assert "lost to infrastructure failures" in first.summary.ended

    (markers / "go").write_text("")
    resumed = execute_sweep(prepare_sweep(None, storage=storage, resume=True, sweep_id="lost"))
    again = _trials(resumed)
    assert again[4.0]["status"] == "ok", again[4.0]["error"]
    assert again[4.0]["trial_id"] == lost["trial_id"]
    # The failed trial was not run again: had it been, its model would now succeed (`fail`
    # was used up) and its row would be a new, ok one.
    assert again[2.0]["status"] == "error"
    assert again[2.0]["finished_at"] == trials[2.0]["finished_at"]
    assert resumed.summary.exit_code == 0
    stored = load_results(str(storage), sweep="lost").to_pylist()
    assert sum(not r["is_baseline"] for r in stored) == 2


# --- two sweeps on one storage at once --------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
    paths = [str(ROOT), str(tmp_path), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


@contextlib.contextmanager
def _second_sweep(tmp_path: Path, space: Path, storage: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`squeezeray sweep` as its own process (and its own Ray), in its own session so every
    process it starts can be ended with it."""
    log = (tmp_path / "second.log").open("wb")
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
    args = ["sweep", str(space), "--storage", str(storage), "--sweep-id", "second"]
    proc = subprocess.Popen(
        [*command, *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def _running(storage: Path, sweep_id: str) -> bool:
    manifest = storage / "sweeps" / f"{sweep_id}.json"
    return manifest.exists() and '"running"' in manifest.read_text()


@pytest.mark.slow
def test_two_sweeps_on_one_storage_compute_each_stage_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = _write_task(tmp_path, who="teacher")
    monkeypatch.syspath_prepend(str(tmp_path))
    markers = tmp_path / "markers"
    storage = tmp_path / "store"
    (markers / "block").write_text("")
    # The teacher (every trial's and both baselines' first stage) waits, once one sweep computes
    # it, until both sweeps are running and the other has had time to ask for it. Without
    # shared claims both compute it (the count below fails).
    since: list[float] = []

    def both_asked() -> bool:
        blocked = len(list(markers.glob("blocked-*")))
        if blocked > 1:
            return True
        if not since and blocked and _running(storage, "first") and _running(storage, "second"):
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] > 5.0

    with _second_sweep(tmp_path, space, storage) as second:
        _when(both_asked, lambda: (markers / "go").write_text(""), timeout=240)
        prepared = prepare_sweep(load_space(space), storage=storage, sweep_id="first")
        first = execute_sweep(prepared)
        rc = second.wait(timeout=300)
    assert rc == 0, (tmp_path / "second.log").read_text()[-3000:]

    assert all(r["status"] == "ok" for r in _trials(first).values())
    second_rows = load_results(str(storage), sweep="second").to_pylist()
    assert [r["status"] for r in second_rows if not r["is_baseline"]] == ["ok", "ok"]
    # Each stage key computed once over both sweeps (a stage row per execution).
    computed = Counter(r["stage_key"] for r in load_stages(str(storage), sweep="all").to_pylist())
    assert len(computed) == 3  # the teacher and two distillations
    assert set(computed.values()) == {1}, computed
    assert len(list(markers.glob("blocked-*"))) == 1
    # Neither sweep's claims are left behind.
    assert not list((storage / "cache" / ".claims").glob("*.claim"))
