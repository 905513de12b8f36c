"""One `SweepOptions` for `squeezeray sweep`, `squeezeray nightly`, the Python API and --resume:
the same flags on both commands, validated once, stored in the manifest and refused on
--resume when they differ; nightly's --trial-timeout through a real local Ray."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.engine.manifest import manifest_path, write_manifest
from orchestrator.engine.sweep import prepare_sweep
from orchestrator.nightly.run import prepare_nightly
from orchestrator.space.options import FLAGS, SweepOptions
from orchestrator.store.lock import exclusive_use, storage_lock
from stages.errors import SqueezerayError

runner = CliRunner()


def _params(command: str) -> dict[str, object]:
    click_app = typer.main.get_command(app)
    ctx = typer.Context(click_app)  # type: ignore[arg-type]
    cmd = click_app.get_command(ctx, command)  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params}


def test_nightly_accepts_every_sweep_option() -> None:
    sweep, nightly = _params("sweep"), _params("nightly")
    # Every SweepOptions field is a flag of both commands (time fields: without "_s").
    fields = {f.name.removesuffix("_s") for f in dataclasses.fields(SweepOptions)}
    assert fields <= set(sweep) and fields <= set(nightly)
    assert {name: FLAGS[name] for name in FLAGS} == {
        f.name: "--" + f.name.removesuffix("_s").replace("_", "-")
        for f in dataclasses.fields(SweepOptions)
    }
    # Only sweep's own --top is not nightly's (nightly --resume finishes an interrupted night).
    assert set(sweep) - set(nightly) == {"top"}
    assert {"resume", "sweep_id"} <= set(nightly)
    for name in ("trial_timeout", "gpus_per_trial", "max_concurrent", "teacher_weights"):
        assert sweep[name].help == nightly[name].help  # type: ignore[attr-defined]


def test_options_are_validated_once_with_the_flag_named(tmp_path: Path) -> None:
    options = SweepOptions.build(storage=tmp_path, time_budget="2m", trial_timeout=30)
    assert options.time_budget_s == 120.0 and options.trial_timeout_s == 30.0
    assert options.storage == str(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.trials = 3  # type: ignore[misc]
    for bad, flag in [
        ({"cpus_per_trial": 0}, "--cpus-per-trial"),
        ({"gpus_per_trial": -1}, "--gpus-per-trial"),
        ({"max_concurrent": 0}, "--max-concurrent"),
        ({"trials": 0}, "--trials"),
        ({"num_cpus": 0}, "--num-cpus"),
        ({"time_budget": "soon"}, "--time-budget"),
        ({"trial_timeout": -5}, "--trial-timeout"),
        # a wrong type names the option and the value (was a bare TypeError; new user F5)
        ({"trials": "3"}, r"trials='3' \(--trials\) is not an integer; accepted: an integer"),
        ({"cpus_per_trial": "1"}, r"cpus_per_trial='1' .* accepted: a number"),
        ({"num_cpus": True}, r"num_cpus=True .* accepted: an integer"),
        ({"task": 3}, r"task=3 \(--task\) is not a string"),
        # an unknown keyword (was: unexpected keyword argument)
        ({"num_cpu": 2}, r"'num_cpu' is not a sweep option \(did you mean num_cpus\?\)"),
    ]:
        with pytest.raises(SqueezerayError, match=flag):
            SweepOptions.build(**bad)  # type: ignore[arg-type]
    # The CLI of both commands refuses a bad value before any Ray work, with exit code 2.
    for command in ("sweep", "nightly"):
        result = runner.invoke(
            app, [command, "tiny", "--storage", str(tmp_path), "--trial-timeout", "soon"]
        )
        assert result.exit_code == 2 and "--trial-timeout" in result.output, result.output
    # The keyword API and SweepOptions are one layer: both at once is refused.
    with pytest.raises(SqueezerayError, match="not both"):
        prepare_sweep("tiny", options, trials=2)


def test_nightly_keeps_every_option(tmp_path: Path) -> None:
    options = SweepOptions.build(
        storage=tmp_path, trials=3, trial_timeout="45s", gpus_per_trial=0.5, max_concurrent=2
    )
    prepared = prepare_nightly("tiny", options)
    assert prepared.options.trial_timeout_s == 45.0 and prepared.gpus_per_trial == 0.5
    assert prepared.max_concurrent == 2 and prepared.space.search.trials == 3
    assert prepared.space.name.startswith("nightly-")  # the nightly defaults fill the rest


def test_resume_runs_what_was_started_and_refuses_a_changed_option(tmp_path: Path) -> None:
    storage = tmp_path / "runs"
    first = prepare_sweep(
        "tiny", storage=storage, sweep_id="a", trials=3, trial_timeout="90s", cpus_per_trial=2
    )
    write_manifest(first.storage, first, status="interrupted")
    manifest = json.loads((storage / Path(*manifest_path("a"))).read_text())
    assert manifest["options"]["trial_timeout_s"] == 90.0
    assert manifest["options"]["cpus_per_trial"] == 2.0
    resumed = prepare_sweep(None, storage=storage, resume=True, sweep_id="a", num_cpus=4)
    assert resumed.options == dataclasses.replace(first.options, num_cpus=4)  # placement
    assert resumed.space.search.trials == 3
    # The same value again is fine; another value is refused, naming both and the way out.
    prepare_sweep(None, storage=storage, resume=True, sweep_id="a", trials=3)
    with pytest.raises(SqueezerayError) as err:
        prepare_sweep(None, storage=storage, resume=True, sweep_id="a", trial_timeout="10s")
    message = str(err.value)
    assert "--trial-timeout" in message and "90.0" in message and "10.0" in message
    assert "without --resume" in message
    result = runner.invoke(
        app, ["sweep", "--resume", "--sweep-id", "a", "--storage", str(storage), "--trials", "5"]
    )
    assert result.exit_code == 2 and "--trials" in result.output, result.output


def test_resume_compares_an_option_with_the_value_the_sweep_used(tmp_path: Path) -> None:
    """An option left out at the start took the space's value (tiny: 4 trials, seed 0): the
    same value again resumes, another is refused naming the value used, not None."""
    storage = tmp_path / "runs"
    first = prepare_sweep("tiny", storage=storage, sweep_id="b")
    write_manifest(first.storage, first, status="interrupted")
    resumed = prepare_sweep(None, storage=storage, resume=True, sweep_id="b", trials=4, seed=0)
    assert resumed.options == first.options and resumed.space.search.trials == 4
    with pytest.raises(SqueezerayError, match=r"--trials: sweep 'b' was started with 4, not 8"):
        prepare_sweep(None, storage=storage, resume=True, sweep_id="b", trials=8)
    with pytest.raises(SqueezerayError, match=r"--algorithm: .* started with 'random', not 'grid"):
        prepare_sweep(None, storage=storage, resume=True, sweep_id="b", algorithm="grid")


def test_a_grid_sweep_records_the_trials_it_runs(tmp_path: Path) -> None:
    """A grid runs its distinct points (`search.trials` does not apply): its manifest said 16
    (the default), so `--resume --trials 8` of an 8-point grid was refused as "started with
    16" (new user F13)."""
    storage = tmp_path / "runs"
    grid = {
        "task": "blobs",
        "pipeline": ["teacher", "distill", "quantize"],
        "params": {
            "distill.temperature": {"choice": [2.0, 4.0, 6.0, 8.0]},
            "quantize.mode": {"choice": ["none", "dynamic_int8"]},
        },
        "search": {"algorithm": "grid"},
    }
    first = prepare_sweep(grid, storage=storage, sweep_id="g")
    assert first.space.trial_count() == 8
    write_manifest(first.storage, first, status="interrupted")
    assert json.loads((storage / Path(*manifest_path("g"))).read_text())["trials"] == 8
    prepare_sweep(None, storage=storage, resume=True, sweep_id="g", trials=8)
    with pytest.raises(SqueezerayError, match=r"--trials: sweep 'g' was started with 8, not 5"):
        prepare_sweep(None, storage=storage, resume=True, sweep_id="g", trials=5)


def test_resume_refuses_another_space_and_says_a_finished_sweep_is_done(tmp_path: Path) -> None:
    """A space given with --resume must be the one the sweep started with (same content, any
    file): another one is refused before Ray, naming the file, the sweep, its task and the way
    out. A finished sweep is not run again: the CLI says so and exits 0, its manifest as it was."""
    from orchestrator.space.config import load_space

    storage = tmp_path / "runs"
    first = prepare_sweep("tiny", storage=storage, sweep_id="t")
    write_manifest(first.storage, first, status="interrupted")
    copy = tmp_path / "copy.yaml"  # the same content elsewhere resumes
    copy.write_text(Path(load_space("tiny").source).read_text() + "\n# a comment\n")
    assert prepare_sweep(str(copy), storage=storage, resume=True).sweep_id == "t"
    assert prepare_sweep("tiny", storage=storage, resume=True, sweep_id="t").sweep_id == "t"
    with pytest.raises(SqueezerayError) as err:
        prepare_sweep("quick", storage=storage, resume=True)  # the latest sweep is t
    message = str(err.value)
    assert "quick.yaml" in message and "'t'" in message and "task blobs" in message
    assert "leave the space out" in message and "--sweep-id" in message
    assert "without --resume" in message
    result = runner.invoke(app, ["sweep", "quick", "--resume", "--storage", str(storage)])
    assert result.exit_code == 2 and "another search space" in result.output, result.output

    write_manifest(first.storage, first, status="finished")
    manifest = (storage / Path(*manifest_path("t"))).read_text()
    result = runner.invoke(app, ["sweep", "--resume", "--storage", str(storage)])
    assert result.exit_code == 0, result.output
    assert "sweep t already finished" in result.output
    assert f"squeezeray pareto --storage {storage} --sweep t" in " ".join(result.output.split())
    assert (storage / Path(*manifest_path("t"))).read_text() == manifest  # Ray never ran
    # Its task is not even imported (a task gone since, or checks grown stricter, are moot).
    gone = json.loads(manifest)
    gone["options"]["task"] = "no_such_module_anywhere:make"
    (storage / Path(*manifest_path("t"))).write_text(json.dumps(gone))
    assert prepare_sweep(None, storage=storage, resume=True).finished


HANG_SPACE = """
task: @TASK@
pipeline: [teacher, distill]
params:
  teacher.epochs: 1
  distill.epochs: 1
  distill.temperature: {choice: [4.0]}
search: {algorithm: random, trials: 1}
latency: {warmup: 1, repeats: 3}
"""


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_nightly_trial_timeout_records_timeout_and_releases_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage that hangs under `squeezeray nightly --trial-timeout`: the row says `timeout`,
    the hung stage is cancelled and its worker killed, the night ends, and the storage lock is
    free for the next night at once. (The suite's one hang: test_faults ran the same hung
    stage again through execute_sweep for the timeout's row, cancel and resume checks.)"""
    import time

    import orchestrator.nightly.run as nightly_run
    from orchestrator.store.results import load_results
    from tests.orchestrator.test_faults import FAULTY_TASK, _alive

    module = f"hang_{uuid.uuid4().hex[:8]}"  # fresh: Ray workers keep modules they imported
    markers = tmp_path / "markers"
    markers.mkdir()
    source = FAULTY_TASK.replace("@MARKERS@", str(markers)).replace("@FAULT@", "hang")
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    space = tmp_path / "space.yaml"
    space.write_text(HANG_SPACE.replace("@TASK@", f"{module}:make"))
    storage = tmp_path / "runs"
    monkeypatch.setenv("SQUEEZERAY_HEARTBEAT_S", "1")
    outcomes: list[Any] = []
    execute = nightly_run.execute_sweep

    def recorded(*args: Any, **kwargs: Any) -> Any:
        outcomes.append(execute(*args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(nightly_run, "execute_sweep", recorded)
    started = time.perf_counter()
    result = runner.invoke(
        app,
        ["nightly", str(space), "--storage", str(storage), "--trial-timeout", "15s", "--no-wait"],
    )
    assert (markers / "hung").exists(), result.output  # the distill stage did start
    # No terminal: heartbeat lines name the stage running (asked of the cache actor), and the
    # trial's own line says how it ended.
    heartbeat = r"trials 0/1 done \(ok 0, failed 0\), running 1: distill"
    assert re.search(heartbeat, result.stderr), result.stderr
    assert re.search(r"trial \S+ timeout \(1/1 done\)", result.stderr), result.stderr
    rows = [r for r in load_results(str(storage), sweep="all").to_pylist() if not r["is_baseline"]]
    assert [r["status"] for r in rows] == ["timeout"], result.output
    assert "time limit of 15 s" in rows[0]["error"]
    assert result.exit_code == 4, result.output  # no trial succeeded
    (outcome,) = outcomes
    assert outcome.summary.stages_cancelled == 1
    assert time.perf_counter() - started < 120  # far below the stage's 600 s sleep
    # force-cancelling killed the worker stuck in the stage, so its CPU is free again.
    pid = int((markers / "hung").read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.5)
    assert not _alive(pid)
    with storage_lock(storage, wait=False), exclusive_use(storage):
        pass  # both locks are free again
    # The manifest keeps the limit, so a resumed sweep uses it too.
    resumed = prepare_sweep(None, storage=storage, resume=True, sweep_id=outcome.summary.sweep_id)
    assert resumed.trial_timeout_s == 15.0


def test_editing_the_yaml_after_the_start_does_not_change_a_resumed_sweep(
    tmp_path: Path,
) -> None:
    from orchestrator.space.config import load_space

    space_file = tmp_path / "space.yaml"
    text = Path(load_space("tiny").source).read_text()
    space_file.write_text(text)
    storage = tmp_path / "runs"
    first = prepare_sweep(str(space_file), storage=storage, sweep_id="s")
    write_manifest(first.storage, first, status="interrupted")
    manifest = json.loads((storage / Path(*manifest_path("s"))).read_text())
    assert manifest["space_yaml"] == text
    # Edited after the start: other trials, other prune ratios; then deleted altogether.
    space_file.write_text(text.replace("trials: 4", "trials: 9").replace("[0.3, 0.6]", "[0.9]"))
    assert load_space(space_file).search.trials == 9
    resumed = prepare_sweep(None, storage=storage, resume=True, sweep_id="s")
    assert resumed.space == first.space and resumed.space_text == text
    space_file.unlink()
    again = prepare_sweep(None, storage=storage, resume=True, sweep_id="s")
    assert again.space == first.space
    # A space built in Python (no file reads as it) keeps no text; the resume reads the file.
    edited = dataclasses.replace(load_space("tiny"), name="mine")
    assert prepare_sweep(edited, storage=storage).space_text is not None  # name is an option
    other = edited.with_overrides(trials=2)
    assert prepare_sweep(other, storage=storage).space_text is None
