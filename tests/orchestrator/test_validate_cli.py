"""`squeezeray validate`: a summary and exit 0 on a good space; exit 2 naming the key and the
value on every bad one, quickly and without importing ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.test_config import BAD_CASES, _with, _write

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

# Run the CLI in a fresh interpreter and report, at exit, whether ray was ever imported.
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('RAY_IMPORTED=' + str('ray' in sys.modules), file=sys.stderr))\n"
    "from orchestrator.cli import main\n"
    "main()\n"
)


def _run_cli_subprocess(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, time.perf_counter() - start


def test_validate_good_space_prints_summary(tmp_path: Path) -> None:
    path = _write(tmp_path, _with())
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    for part in (
        "task:",
        "blobs",
        "teacher -> distill -> prune",
        "prune.ratio",
        "uniform [0.0, 0.9]",
        "choice [2.0, 4.0]",
        "teacher.epochs",
        "4 trials",
        "stop at +-2%",
        "final phase 7 rounds",
        "is valid",
    ):
        assert part in result.stdout, part
    # precision 0 is no early stop (not "+-0%"), rounds 0 no final phase
    off = _write(tmp_path, _with(latency={"precision": 0, "rounds": 0}))
    result = runner.invoke(app, ["validate", str(off)])
    assert result.exit_code == 0, result.output
    assert "no early stop" in result.stdout and "no final phase" in result.stdout


@pytest.mark.parametrize("name", ["default", "quick", "tiny", "digits-cnn"])
def test_validate_packaged_space(name: str) -> None:
    result = runner.invoke(app, ["validate", name])
    assert result.exit_code == 0, result.output
    assert "searched (" in result.stdout


def test_validate_task_override() -> None:
    result = runner.invoke(app, ["validate", "tiny", "--task", "digits"])
    assert result.exit_code == 0, result.output
    assert "task:         digits" in result.stdout
    bad = runner.invoke(app, ["validate", "tiny", "--task", "digitz"])
    assert bad.exit_code == 2
    assert "--task" in bad.output and "'digitz'" in bad.output


@pytest.mark.parametrize(("case", "content", "parts"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_validate_bad_space_exits_2(
    tmp_path: Path, case: str, content: dict[str, Any] | str, parts: list[str]
) -> None:
    path = _write(tmp_path, content)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # the message is one line, whatever the width
    assert "error:" in output
    assert str(path) in output
    for part in parts:
        assert " ".join(part.split()) in output, f"{part!r} not in {output!r}"


def test_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output and "no such file" in result.output


def test_validate_subprocess_fails_fast_without_ray(tmp_path: Path) -> None:
    bad = _write(tmp_path, _with(params__prune__ratio={"uniform": [0.0, 1.2]}), "bad.yaml")
    proc, _ = _run_cli_subprocess("validate", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "params.prune.ratio" in proc.stderr and "1.2" in proc.stderr
    # Fast because Ray is never imported (what this asserts); no wall-clock limit here: the
    # machines are shared and noisy (speed targets live in bench/).
    assert "RAY_IMPORTED=False" in proc.stderr

    good = _write(tmp_path, _with(), "good.yaml")
    proc, _ = _run_cli_subprocess("validate", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout
    assert "RAY_IMPORTED=False" in proc.stderr


def test_whole_bad_battery_in_fresh_process_never_imports_ray(tmp_path: Path) -> None:
    # One interpreter runs `validate` on every bad file (CliRunner), then reports each exit
    # code and whether ray was ever imported.
    paths = [_write(tmp_path, content, f"{case}.yaml") for case, content, _ in BAD_CASES]
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from orchestrator.cli import app\n"
        "codes = [CliRunner().invoke(app, ['validate', p]).exit_code for p in sys.argv[1:]]\n"
        "print(json.dumps({'codes': codes, 'ray': 'ray' in sys.modules}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [2] * len(BAD_CASES)
    assert report["ray"] is False


def test_load_space_subprocess_imports_no_ray() -> None:
    code = (
        "import sys\n"
        "from orchestrator.space.config import load_space\n"
        "for name in ('default', 'quick', 'tiny', 'digits-cnn'):\n"
        "    load_space(name)\n"
        "print('ray' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_validate_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    """Six mistakes in four sections: one run lists all six (file, key, value, accepted),
    not one per run; a stage's bad key does not hide its other keys' bad values."""
    data = _with(
        params__prune__ratoi={"uniform": [0.0, 0.5]},  # typo in a param name
        params__prune__method={"choice": ["l1", "structured"]},  # same stage: a bad value
        params__distill__alpha={"choice": [0.5, 1.5]},  # out of range
        search={"algorithm": "optuna", "trails": 4},  # typo in a search key
        objectives={"val_accuracy": "up", "size_bytes": "min"},  # bad direction
        colour="blue",  # unknown top-level key
    )
    path = _write(tmp_path, data)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert "6 problems:" in text
    for key, value in (
        ("params.prune.ratoi", "did you mean prune.ratio"),
        ("params.distill.alpha", "1.5"),
        ("params.prune.method", "prune.method='l1' is not accepted"),
        ("search.trails", "did you mean search.trials"),
        ("objectives.val_accuracy", "'up' is not a direction"),
        ("colour", "is not a known key"),
    ):
        assert f"{path}: {key}: " in text and value in text, key
    from orchestrator.space.checks import SpaceErrors
    from orchestrator.space.config import load_space

    with pytest.raises(SpaceErrors) as caught:
        load_space(path)
    assert len(caught.value.errors) == 6
    assert all(e.startswith(f"{path}: ") for e in caught.value.errors)


def test_every_unknown_metric_name_of_a_user_task_is_reported_together(tmp_path: Path) -> None:
    """Names that are not built-in metrics wait for the user's task (its own metric may be
    `val_<name>`); then every one refused is listed, not one a run (new user F1)."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "task: tests.zoo:tabular\npipeline: [teacher, distill]\n"
        "objectives: {val_acuracy: max, size_bytes: min}\n"
        'constraints: {val_acc: ">= 0.5"}\nsearch: {trials: 2}\n'
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert "2 problems:" in text
    assert (
        "objectives.val_acuracy: 'val_acuracy' is not a metric (did you mean val_accuracy?)" in text
    )
    assert "constraints.val_acc: 'val_acc' is not a metric" in text


def test_validate_reports_every_tier_of_problem_in_one_run(tmp_path: Path) -> None:
    """Eight mistakes that used to surface over four runs (4, then 1, then 2, then 1): a
    misspelled top-level key, a key of a stage missing from the pipeline (whose values are
    still checked), a misspelled stage param, bad choices, a bad fixed value beside a bad
    searched one, a misspelled search key beside a bad search value, and an unknown metric
    (checked with the rest for a built-in task)."""
    path = tmp_path / "typos.yaml"
    path.write_text(
        "name: typos\n"
        "task: digits\n"
        "pipelin: [teacher, prune]\n"
        "pipeline: [teacher, distill, prune, finetune]\n"
        "objectives: {val_acuracy: max}\n"
        "params:\n"
        "  prune.ration: 0.5\n"
        "  prune.method: {choice: [l1, structured]}\n"
        "  quantize.mode: {choice: [none, int8]}\n"
        "  distill.alpha: 1.5\n"
        "  distill.temperature: {choice: [2.0, 0.0]}\n"
        "search: {algoritm: optuna, trials: 0}\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    expected = (
        ("pipelin", "did you mean pipeline"),
        ("params.quantize.mode", "stage 'quantize' is not in the pipeline"),
        ("params.quantize.mode", "quantize.mode='int8' is not accepted"),
        ("params.prune.ration", "did you mean prune.ratio"),
        ("params.prune.method", "prune.method='l1' is not accepted"),
        ("params.distill.alpha", "1.5"),
        ("params.distill.temperature", "0.0"),
        ("search.algoritm", "did you mean search.algorithm"),
        ("search.trials", "0 is out of range"),
        ("objectives.val_acuracy", "did you mean val_accuracy"),
    )
    assert f"{len(expected)} problems:" in text
    for key, value in expected:
        assert any(
            f"{path}: {key}: " in line and value in line for line in result.stderr.splitlines()
        ), (key, value)


def test_a_misordered_pipeline_still_has_its_params_checked(tmp_path: Path) -> None:
    path = tmp_path / "order.yaml"
    path.write_text(
        "task: digits\npipeline: [teacher, prune, distill]\nparams:\n  prune.ratoi: 0.5\n"
        "latency: {warmup: -1, repeat: 3}\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    text = " ".join(result.stderr.split())
    assert "4 problems:" in text
    for part in ("puts 'distill' after 'prune'", "did you mean prune.ratio",
                 "latency.repeat", "latency.warmup: -1"):  # fmt: skip
        assert part in text, part


@pytest.mark.parametrize("command", ["sweep", "nightly", "validate"])
def test_help_lists_every_packaged_space(command: str) -> None:
    """The names come from the package (search_spaces/*.yaml), not a hand-kept list."""
    import search_spaces

    names = search_spaces.names()
    assert {"default", "quick", "tiny", "digits-cnn"} <= set(names)
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert f"({', '.join(names)})" in " ".join(result.stdout.split())


def test_validate_shows_a_slow_pre_flight_step_as_a_sweep_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New user 6: `validate` printed nothing for minutes while it pruned a big model to check
    it; now its pre-flight steps reach stderr as a sweep's do (plain lines off a terminal)."""
    import orchestrator.engine.prepare as prepare
    import orchestrator.engine.progress as progress

    check = prepare.check_stages_apply_to_task
    # A step is announced once it has run `step_after_s` (2 s), seen by a tick (every 1 s):
    # both shorter here, so the slow step need not take seconds.
    monkeypatch.setitem(progress.SweepProgress.__init__.__kwdefaults__, "step_after_s", 0.2)
    monkeypatch.setattr(progress, "TICK_S", 0.05)

    def slow_check(space: Any) -> None:
        time.sleep(0.6)  # past the step_after_s above, and a tick
        check(space)

    monkeypatch.setattr(prepare, "check_stages_apply_to_task", slow_check)
    task = "tests.stages.test_pruned_widths:scaled_parameter"
    result = runner.invoke(app, ["validate", "tiny", "--task", task])
    assert result.exit_code == 0, result.output
    assert "pre-flight: checking that each stage applies to the task's model ..." in result.stderr
    assert "ok: " in result.stdout and "pre-flight" not in result.stdout
