"""Interrupted sweeps and `squeezeray sweep --resume`.

The fault tests run the real CLI in a subprocess (its own embedded Ray, in its own session so
every process it starts can be found and cleaned up): SIGKILL of the driver, then a resume;
Ctrl-C (SIGINT) and SIGTERM, whose message is the resume command, which is then run as printed.
The resumes run the CLI in this process on the session's Ray (`_resume`): the interrupted
driver and its Ray are gone, so the resumed sweep has only the storage to go on, as in a new
process, without a second Ray start per test. The signal logic and the manifest round trip
are also tested in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.manifest import (
    latest_sweep_id,
    manifest_path,
    read_manifest,
    write_manifest,
)
from orchestrator.engine.signals import stop_signals
from orchestrator.engine.sweep import (
    SweepInterrupted,
    SweepSummary,
    prepare_sweep,
    resume_command,
)
from orchestrator.store.results import load_results, load_stages
from orchestrator.store.storage import open_storage
from stages.errors import SqueezerayError

from .test_sweep import REQUIRED

ROOT = Path(__file__).resolve().parents[2]

# 12 cheap trials, one at a time, so the driver can be stopped between trials (with 6, all of
# them could finish between seeing 2 rows and the kill: seen once in CI).
SPACE = """
name: crash
task: blobs
pipeline: [teacher, distill, prune, quantize]
params:
  teacher.epochs: 2
  distill.epochs: 2
  prune.ratio: {choice: [0.2, 0.4, 0.6]}
  quantize.mode: {choice: [none, dynamic_int8]}
search: {algorithm: optuna, trials: 12, seed: 0, max_concurrent: 1}
latency: {warmup: 2, repeats: 5}
"""
TRIALS = 12
# The SIGKILL test needs trials still to run when it sees 2 rows: prune.ratio drawn from a range
# gives every trial its own prune and quantize stages (with the 3 x 2 choices above most trials
# are stage-cache hits, and all 12 could end within ~1.5 s of each other under load).
KILL_SPACE = SPACE.replace("{choice: [0.2, 0.4, 0.6]}", "{uniform: [0.1, 0.9]}")


# --- helpers ---------------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", *args]


def _env(path: tuple[str, ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
    entries = [str(ROOT), *path, env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(entries).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"  # each line reaches the log file as printed: tests wait on them
    return env


class _Run:
    """A CLI subprocess in a new session (its Ray processes share the session id); `path`:
    directories to import from (a test's task module)."""

    def __init__(
        self, tmp_path: Path, name: str, args: list[str], *, path: tuple[str, ...] = ()
    ) -> None:
        self.log = tmp_path / f"{name}.log"
        self._sink = self.log.open("w")
        self.proc = subprocess.Popen(
            _cli(*args),
            cwd=ROOT,
            env=_env(path),
            stdout=self._sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._sink.close()

    @property
    def output(self) -> str:
        return self.log.read_text()


def _session_processes(sid: int) -> dict[int, str]:
    """Live (non-zombie) processes of session `sid`: pid -> name."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            found[int(stat.parent.name)] = name
    return found


def _reap_session(sid: int, *, grace_s: float) -> dict[int, str]:
    """Wait up to `grace_s` for a session's processes to exit, SIGKILL the rest (each by pid;
    they are all descendants of a process this test started); return those it had to kill."""
    deadline = time.monotonic() + grace_s
    left = _session_processes(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _session_processes(sid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _resume(tmp_path: Path, args: list[str]) -> tuple[int, str]:
    """The CLI (`args` after `squeezeray`) in this process, on the session's Ray: its exit code
    and output (also written to resume.log, to read after a failure)."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, args)
    output = result.output + (f"\n{result.exception!r}" if result.exception else "")
    (tmp_path / "resume.log").write_text(output)
    return result.exit_code, output


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Session ids to reap after the test, even when it fails."""
    sessions: list[int] = []
    yield sessions
    for sid in sessions:
        _reap_session(sid, grace_s=0)


def _trial_rows(storage: Path) -> list[dict[str, Any]]:
    try:
        table = load_results(str(storage), sweep="all")
    except SqueezerayError:
        return []
    return [r for r in table.to_pylist() if not r["is_baseline"]]


def _wait_for_trials(run: _Run, storage: Path, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(_trial_rows(storage)) < count:
        assert run.proc.poll() is None, f"the sweep ended early:\n{run.output}"
        assert time.monotonic() < deadline, f"no {count} trial rows in {timeout} s:\n{run.output}"
        time.sleep(0.3)


def _raw_trial_rows(storage: Path) -> int:
    """Trial rows as stored, before `load_results` keeps one per trial."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(str(storage / "results"), format="parquet").to_table(columns=["is_baseline"])
    return int(pc.sum(pc.invert(table.column("is_baseline"))).as_py() or 0)


def _tune_trials(storage: Path, experiment: str) -> dict[str, str]:
    """Trial id -> status in a Tune experiment (what Tune considers the sweep); none when it
    has no state (a rebuilt experiment left nothing to draw saves none)."""
    from ray.tune import ExperimentAnalysis

    if not list((storage / "tune" / experiment).glob("experiment_state-*.json")):
        return {}
    analysis = ExperimentAnalysis(str(storage / "tune" / experiment))
    return {t.trial_id: t.status for t in analysis.trials}


def _check_complete(storage: Path, sweep_id: str, trials: int = TRIALS) -> list[dict[str, Any]]:
    rows = _trial_rows(storage)
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert _raw_trial_rows(storage) == len(rows), "a trial row was written twice"
    for row in rows:
        assert row["status"] == "ok", row["error"]
        # latency_ms_final: only the front's rows are re-measured (null elsewhere, by design)
        for column in REQUIRED:
            if column not in (
                "error",
                "distill.temperature",
                "distill.alpha",
                "lora.rank",
                "latency_ms_final",
            ):
                assert row[column] is not None, (column, row)
    assert len(rows) == trials  # each trial once: none drawn again under a new id
    # The Tune experiment the manifest names (a rebuilt one when the state was not restored)
    # ran every trial but those it carried over as stored.
    manifest = read_manifest(open_storage(storage), sweep_id)
    tune_trials = _tune_trials(storage, manifest["tune_experiment"])
    carried = set(manifest["tune_carried"])
    assert len(tune_trials) + len(carried) == trials
    assert set(tune_trials.values()) <= {"TERMINATED"}
    assert set(tune_trials) | carried == set(ids)  # every trial of the sweep has its row
    return rows


# --- fault tests -------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkilled_driver_resumes_with_every_trial_once(
    tmp_path: Path, cleanup: list[int], ray_session: None
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(KILL_SPACE)
    storage = tmp_path / "results"
    run = _Run(tmp_path, "first", ["sweep", str(space), "--storage", str(storage)])
    cleanup.append(run.proc.pid)
    _wait_for_trials(run, storage, 2)
    run.proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    assert run.wait(timeout=30) == -signal.SIGKILL
    before = {r["trial_id"]: r for r in _trial_rows(storage)}
    stages_before = set(load_stages(str(storage), sweep="all").column("stage_key").to_pylist())
    assert len(before) >= 2 and stages_before

    # Ray's head processes share the driver's fate; workers and agents follow within seconds.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and {"raylet", "gcs_server"} & set(
        _session_processes(run.proc.pid).values()
    ):
        time.sleep(0.5)
    assert not {"raylet", "gcs_server"} & set(_session_processes(run.proc.pid).values())
    _reap_session(run.proc.pid, grace_s=5)

    sweep_id = latest_sweep_id(open_storage(storage))
    assert read_manifest(open_storage(storage), sweep_id)["status"] == "running"
    code, output = _resume(tmp_path, ["sweep", "--resume", "--storage", str(storage)])
    assert code == 0, output
    assert "(resumed)" in output

    rows = _check_complete(storage, sweep_id)
    after = {r["trial_id"]: r for r in rows}
    for trial_id, row in before.items():  # finished trials were kept, not re-run
        # (the final latency phase rewrites the front's rows, with a new finished_at; a re-run
        # trial would have started again and taken its own time)
        assert after[trial_id]["started_at"] == row["started_at"]
        assert after[trial_id]["wall_s"] == row["wall_s"]
    # Finished stages were loaded from their checkpoints, not run again: no stage key has a
    # second row, and the resumed sweep computed only stages it did not have.
    stage_keys = load_stages(str(storage), sweep="all").column("stage_key").to_pylist()
    assert len(stage_keys) == len(set(stage_keys))
    assert read_manifest(open_storage(storage), sweep_id)["status"] == "finished"
    summary_line = " ".join(output.split())
    if len(before) < TRIALS:
        # A trial was unfinished at the kill: the resumed sweep ran it, loading stages from
        # their checkpoints. (Cheap trials can all finish between the poll and the kill; then
        # there is nothing to load, and the checks above are the test.)
        assert re.search(r"\+[1-9]\d* loaded from cache", summary_line), output


def test_a_tune_state_older_than_the_rows_is_rebuilt_not_drawn_again(
    tmp_path: Path, ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed between two of Tune's snapshots, a sweep leaves rows that its Tune state does not
    list. Reproduced deterministically: Tune's experiment directory is copied as it stood when
    the second row was written (in the results writer's callback, between Tune's saves), put
    back after the sweep, and the manifest left `running` as a killed driver leaves it. Restored
    as it was, Tune's searcher drew the trials it did not know again under new ids (9 rows for
    6 trials); now the state is found older than the rows, and the sweep is rebuilt: every
    trial once, every finished row unchanged."""
    import shutil

    from orchestrator.engine.sweep import run_sweep

    trials = 6
    space = tmp_path / "space.yaml"
    space.write_text(KILL_SPACE.replace("trials: 12", f"trials: {trials}"))
    storage = tmp_path / "results"
    snapshot = tmp_path / "tune-snapshot"

    def progress(event: str, info: Any) -> None:
        counts = info.get("counts") if isinstance(info, dict) else None
        if event == "done" and counts and sum(counts.values()) == 2 and not snapshot.exists():
            shutil.copytree(storage / "tune" / sweep_id, snapshot)

    sweep_id = "stale"
    run_sweep(str(space), storage=str(storage), sweep_id=sweep_id, progress=progress)
    assert snapshot.exists()
    before = {r["trial_id"]: r for r in _trial_rows(storage)}
    assert len(before) == trials
    stale = _tune_trials_in(snapshot)
    assert set(before) - set(stale), "the snapshot knows every trial: nothing to test"
    shutil.rmtree(storage / "tune" / sweep_id)
    shutil.copytree(snapshot, storage / "tune" / sweep_id)
    path = storage.joinpath(*manifest_path(sweep_id))
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "running"}))

    code, output = _resume(tmp_path, ["sweep", "--resume", "--storage", str(storage)])
    assert code == 0, output
    rows = _check_complete(storage, sweep_id, trials)
    assert "Tune's last saved state does not list" in caplog.text
    for trial_id, row in before.items():
        assert {r["trial_id"]: r for r in rows}[trial_id]["started_at"] == row["started_at"]


def _tune_trials_in(experiment_dir: Path) -> dict[str, str]:
    """Trial id -> status in a Tune experiment state's newest file (read as JSON)."""
    state = json.loads(sorted(experiment_dir.glob("experiment_state-*.json"))[-1].read_text())
    trials = [json.loads(entry[0]) for entry in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_prints_the_resume_command_which_finishes_the_sweep_within_its_budget(
    tmp_path: Path, cleanup: list[int], sig: signal.Signals, request: pytest.FixtureRequest
) -> None:
    """A sweep with a time budget is interrupted; its message is the resume command, which
    runs as printed. The manifest keeps the budget spent so far; the resumed run gets what
    is left of it (from its own clock) and launches the trials still to run."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "results"
    args = ["sweep", str(space), "--storage", str(storage), "--sweep-id", "s1"]
    run = _Run(tmp_path, "first", [*args, "--time-budget", "900s"])
    cleanup.append(run.proc.pid)
    _wait_for_trials(run, storage, 1)
    run.proc.send_signal(sig)
    assert run.wait(timeout=120) == 2, run.output
    output = " ".join(run.output.split())  # undo the terminal's line wrapping
    match = re.search(
        r"To continue, run: (squeezeray sweep --resume --sweep-id \S+ --storage \S+)", output
    )
    assert match, output
    command = shlex.split(match.group(1))
    assert command[1:] == [
        "sweep", "--resume", "--sweep-id", "s1", "--storage", str(storage.resolve()),
    ]  # fmt: skip
    assert shlex.split(resume_command(open_storage(storage), "s1")) == command
    manifest = read_manifest(open_storage(storage), "s1")
    spent = manifest["budget_elapsed_s"]
    assert manifest["status"] == "interrupted" and 0 < spent < 900
    assert manifest["options"]["time_budget_s"] == 900.0
    assert len(_trial_rows(storage)) < TRIALS
    # The driver exited normally, so Ray's own shutdown stopped every process it started.
    assert _reap_session(run.proc.pid, grace_s=30) == {}
    if sig == signal.SIGTERM:
        return  # resuming is the same for both; run it once

    request.getfixturevalue("ray_session")  # the resume only
    code, output = _resume(tmp_path, command[1:])
    assert code == 0, output
    _check_complete(storage, "s1")
    manifest = read_manifest(open_storage(storage), "s1")
    assert manifest["status"] == "finished" and manifest["budget_elapsed_s"] > spent
    assert "all trials done" in " ".join(output.split()), output


# Two trials and a final latency phase held open by the test (HELD_TASK): cheap timing, since
# the phase's length no longer decides whether the signal lands in it.
FINAL_SPACE = """
name: final
task: @TASK@
pipeline: [teacher, quantize]
params:
  teacher.epochs: 1
  quantize.mode: {choice: [none, dynamic_int8]}
search: {algorithm: grid}
latency: {warmup: 1, repeats: 5, rounds: 2}
"""

# A blobs task whose teacher, called inside the final latency phase (`interleaved_latency`)
# while the `hold` file exists, touches `held` and waits until the file is gone: the test's
# Ctrl-C lands in the phase however fast the machine (timed off a progress line, 3 of 7 runs
# missed a short phase). Only the final phase is held: training, the in-sweep latency and the
# driver's task check call the model outside `interleaved_latency`.
HELD_TASK = """
import dataclasses
import pathlib
import sys
import time

from torch import nn

from stages.tasks import make_blobs

MARKERS = pathlib.Path("@MARKERS@")


def _in_final_phase():
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "interleaved_latency":
            return True
        frame = frame.f_back
    return False


class Held(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if (MARKERS / "hold").exists() and _in_final_phase():
            (MARKERS / "held").touch()
            while (MARKERS / "hold").exists():
                time.sleep(0.05)
        return self.inner(x)


def make():
    base = make_blobs()
    return dataclasses.replace(base, name="held", teacher=lambda: Held(base.teacher()))
"""


def _held_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """HELD_TASK as a module of its own under tmp_path: its `module:make` and the markers
    directory, `hold` already in it. A fresh module name per test: reused Ray workers keep
    modules they imported before."""
    module = f"held_{uuid.uuid4().hex[:8]}"
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "hold").touch()
    (tmp_path / f"{module}.py").write_text(HELD_TASK.replace("@MARKERS@", str(markers)))
    monkeypatch.syspath_prepend(str(tmp_path))  # the resume, in this process, imports it too
    return f"{module}:make", markers


@pytest.mark.slow
def test_ctrl_c_in_the_final_latency_phase_stops_it_and_resume_runs_only_that_phase(
    tmp_path: Path,
    cleanup: list[int],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C during the final latency phase was ignored until it ended, then the sweep was
    recorded `finished` and the process exited 130 (new user F15). Now the phase's task is
    cancelled, the sweep is recorded interrupted (exit 2) with every trial row and their
    in-sweep latency, and its resume command re-measures the front without running a trial."""
    task, markers = _held_task(tmp_path, monkeypatch)
    space = tmp_path / "space.yaml"
    space.write_text(FINAL_SPACE.replace("@TASK@", task))
    storage = tmp_path / "results"
    run = _Run(
        tmp_path,
        "first",
        ["sweep", str(space), "--storage", str(storage), "--sweep-id", "f1"],
        path=(str(tmp_path),),
    )
    cleanup.append(run.proc.pid)
    deadline = time.monotonic() + 240
    while not (markers / "held").exists():  # the final phase has begun, and waits for us
        assert run.proc.poll() is None, f"the sweep ended before its final phase:\n{run.output}"
        assert time.monotonic() < deadline, run.output
        time.sleep(0.2)
    os.killpg(run.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: Ray's processes get it too
    assert run.wait(timeout=120) == 2, run.output
    output = " ".join(run.output.split())
    assert "interrupted in its final latency phase: all 2 trials are saved" in output, output
    assert f"run: squeezeray sweep --resume --sweep-id f1 --storage {storage.resolve()}" in output
    assert "Pareto front" not in output
    assert read_manifest(open_storage(storage), "f1")["status"] == "interrupted"
    rows = load_results(str(storage), sweep="f1").to_pylist()
    assert sorted(r["is_baseline"] for r in rows) == [False, False, True]
    assert all(r["status"] == "ok" and r["latency_ms_sweep"] is not None for r in rows)
    assert all(r["latency_ms_final"] is None for r in rows), "the phase was not stopped"
    assert _reap_session(run.proc.pid, grace_s=30) == {}

    (markers / "hold").unlink()  # the resumed phase runs through
    request.getfixturevalue("ray_session")  # the resume only
    started = {r["trial_id"]: r["started_at"] for r in rows}
    code, resumed = _resume(
        tmp_path, ["sweep", "--resume", "--sweep-id", "f1", "--storage", str(storage)]
    )
    assert code == 0, resumed
    resumed = " ".join(resumed.split())
    assert "stage executions 0 (+0 loaded from cache)" in resumed, resumed
    assert "re-measured apart in 2 interleaved rounds" in resumed, resumed
    assert read_manifest(open_storage(storage), "f1")["status"] == "finished"
    after = load_results(str(storage), sweep="f1").to_pylist()
    assert {r["trial_id"]: r["started_at"] for r in after} == started  # no trial ran again
    assert any(r["latency_ms_final"] is not None for r in after if r["is_baseline"])


# --- in-process ---------------------------------------------------------------------------------


def test_stop_signals_hand_the_first_signal_to_tune_and_stop_on_the_second() -> None:
    calls: list[int] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    with stop_signals() as stop:
        assert signal.getsignal(signal.SIGINT) == stop.handle
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        with pytest.raises(KeyboardInterrupt):  # before fit: stop right away
            stop.handle(signal.SIGINT, None)
        stop.received = None
        stop.enter_fit()
        signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))  # as Tune does
        stop.handle(signal.SIGTERM, None)  # during fit: Tune stops gracefully
        assert calls == [signal.SIGTERM] and stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal: now
            stop.handle(signal.SIGINT, None)
    assert {s: signal.getsignal(s) for s in before} == before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_stop_signals_only_note_a_first_signal_while_held() -> None:
    """After the final phase, while the sweep writes its status (`hold`), a first signal is
    only noted (no KeyboardInterrupt to leave a half-recorded sweep); a second one stops."""
    with stop_signals() as stop:
        stop.hold()
        stop.handle(signal.SIGINT, None)
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)


def test_sweep_command_stops_every_bad_space_before_ray(tmp_path: Path) -> None:
    """`sweep` (and `nightly`, through the same `prepare_sweep`) runs validate's checks first:
    exit 2 for each file of the bad battery, no storage created, ray never imported."""
    from tests.orchestrator.test_config import BAD_CASES, _write

    paths = [_write(tmp_path, content, f"{case}.yaml") for case, content, _ in BAD_CASES]
    storage = tmp_path / "never-created"
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from orchestrator.cli import app\n"
        "codes = [CliRunner().invoke(app, ['sweep', p, '--storage', sys.argv[1]]).exit_code\n"
        "         for p in sys.argv[2:]]\n"
        "print(json.dumps({'codes': codes, 'ray': 'ray' in sys.modules}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(storage), *map(str, paths)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"codes": [2] * len(BAD_CASES), "ray": False}
    assert not storage.exists()


def test_resume_reads_the_manifest_and_names_the_command(tmp_path: Path) -> None:
    storage = tmp_path / "my results"
    with pytest.raises(SqueezerayError, match="no sweep to resume"):
        prepare_sweep(None, storage=storage, resume=True)
    first = prepare_sweep("tiny", storage=storage, sweep_id="a", trial_timeout="90s", trials=3)
    write_manifest(first.storage, first, status="running")
    time.sleep(0.01)
    second = prepare_sweep("tiny", storage=storage, sweep_id="b")
    write_manifest(second.storage, second, status="interrupted")
    with pytest.raises(SqueezerayError, match="'zzz' has no manifest"):
        prepare_sweep(None, storage=storage, resume=True, sweep_id="zzz")
    with pytest.raises(SqueezerayError, match=r"'a' already exists .* --resume --sweep-id a"):
        prepare_sweep("tiny", storage=storage, sweep_id="a")  # a new sweep would mix with it
    with pytest.raises(SqueezerayError, match=r"'\.\./a' is not a valid sweep id"):
        prepare_sweep("tiny", storage=storage, sweep_id="../a")

    assert prepare_sweep(None, storage=storage, resume=True).sweep_id == "b"  # the latest
    resumed = prepare_sweep(None, storage=storage, resume=True, sweep_id="a")
    assert (resumed.sweep_id, resumed.resume) == ("a", True)
    assert resumed.space.search.trials == 3 and resumed.trial_timeout_s == 90.0
    command = resume_command(first.storage, "a")
    assert shlex.split(command) == [
        "squeezeray", "sweep", "--resume", "--sweep-id", "a", "--storage", str(storage.resolve()),
    ]  # fmt: skip
    assert read_manifest(first.storage, "a")["resume_command"] == command

    summary = SweepSummary(
        sweep_id="a", storage=str(storage), trials_ok=2, trials_failed=1, stages_executed=0,
        stages_loaded=0, stage_requests=0, corrupt_checkpoints=0, wall_s=1.0, interrupted=True,
        resume_command=command, trials_stopped=1,
    )  # fmt: skip
    message = str(SweepInterrupted(summary))
    assert "interrupted after 4 trials" in message  # ok, stopped early and failed
    assert message.endswith(f"To continue, run: {command}")


def _plan(storage: Path) -> Any:
    from orchestrator.engine.pipeline import SweepPlan
    from orchestrator.engine.plan import stage_defaults

    pipeline = ("teacher", "distill")
    return SweepPlan(
        sweep_id="s", task="blobs", pipeline=pipeline, defaults=stage_defaults(pipeline),
        fixed={}, code_version="v", storage=str(storage), objectives=(("val_accuracy", "max"),),
    )  # fmt: skip


def test_resumed_trial_with_a_stored_row_reports_it_instead_of_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    from orchestrator.engine.pipeline import trial_function

    reports: list[dict[str, Any]] = []
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(
        tune, "get_context", lambda: type("Ctx", (), {"get_trial_id": lambda self: "t1"})()
    )
    plan = _plan(tmp_path)
    config = {"distill.temperature": 2.0}
    keys = [r.key for r in plan.requests(config, trial_id="t1")]
    stored = {"status": "ok", "stage_keys": keys, "val_accuracy": 0.9}
    # cache=None: running the pipeline would fail, so a replayed trial must not touch it.
    trial_function(config, plan=plan, cache=None, replay={"t1": stored})
    assert reports == [{**stored, "final": True, "replayed": True}]

    # Another configuration under the same id (not the stored trial): it runs.
    reports.clear()
    other = {"t1": {**stored, "stage_keys": ["something", "else"]}}
    trial_function(config, plan=plan, cache=None, replay=other)
    assert reports[-1]["final"] is True and "replayed" not in reports[-1]
    assert reports[-1]["status"] == "error"  # it tried the (missing) cache


def test_results_writer_does_not_write_a_replayed_trial_twice(tmp_path: Path) -> None:
    from orchestrator.engine.tune_callbacks import ResultsWriter

    events: list[tuple[str, dict[str, Any]]] = []
    writer = ResultsWriter(
        storage=str(tmp_path), sweep_id="s", sweep_name="s", task="blobs", code_version="v",
        constraints=(), total=3, progress=lambda e, d: events.append((e, dict(d))),
        done={"ok": 1, "failed": 0},
    )  # fmt: skip

    def trial(trial_id: str, result: dict[str, Any]) -> Any:
        return type("T", (), {"trial_id": trial_id, "last_result": result})()

    writer.on_trial_complete(0, [], trial("old", {"final": True, "replayed": True, "status": "ok"}))
    assert not (tmp_path / "results").exists()
    assert events[-1][1]["counts"]["ok"] == 1  # counted once, in `done`
    writer.on_trial_complete(
        0, [], trial("new", {"final": True, "status": "ok", "val_accuracy": 0.5})
    )
    rows = load_results(str(tmp_path), sweep="all").to_pylist()
    assert [r["trial_id"] for r in rows] == ["new"]
    assert events[-1][1]["counts"]["ok"] == 2


def test_a_restored_search_reads_this_process_deadline() -> None:
    """Tune pickles the search (deadline included) with its experiment; the copy restored by
    --resume must stop at the resuming process's deadline, not at the dead one's."""
    import cloudpickle

    from orchestrator.engine.search import DEADLINES, make_search
    from orchestrator.space.config import load_space

    space = load_space("tiny").with_overrides(time_budget_s=60.0)
    key = "deadline-test"
    try:
        alg, _, _ = make_search(space, constraints=(), deadline_key=key)
        restored = cloudpickle.loads(cloudpickle.dumps(alg))
        DEADLINES[key] = time.monotonic() - 1  # this process: the budget is spent
        assert restored.is_finished() and restored.next_trial() is None
        DEADLINES[key] = time.monotonic() + 60  # this process: a minute left
        assert not restored.is_finished()
    finally:
        DEADLINES.pop(key, None)
