"""`squeezeray schedule`: cron validation, --print (crontab line + KubeRay YAML), --install
into a crontab (a fake `crontab` on PATH), and the in-process loop with an injected clock."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.nightly import schedule as sched
from stages.errors import SqueezerayError

runner = CliRunner()


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("0 2 * * *", "0 2 * * *"),
        ("  30  1 * *   mon-fri ", "30 1 * * mon-fri"),
        ("@daily", "@daily"),
    ],
)
def test_check_cron_accepts(given: str, normalised: str) -> None:
    assert sched.check_cron(given) == normalised


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("0 25 * * *", "out of range"),
        ("61 2 * * *", "out of range"),
        ("0 2 * *", "4 field"),
        ("0 0 2 * * *", "6 field"),
        ("every night", "2 field"),
        ("@reboot", "1 field"),
    ],
)
def test_check_cron_rejects_with_a_clear_message(bad: str, why: str) -> None:
    with pytest.raises(SqueezerayError) as info:
        sched.check_cron(bad)
    message = str(info.value)
    assert f"--cron={bad!r}" in message and why in message and "'0 2 * * *'" in message


def test_bad_cron_is_exit_code_2() -> None:
    result = runner.invoke(app, ["schedule", "--cron", "0 25 * * *", "--print", "--storage", "r"])
    assert result.exit_code == 2
    assert "--cron='0 25 * * *'" in result.output


def test_bad_nightly_arguments_are_caught_now() -> None:
    result = runner.invoke(app, ["schedule", "--cron", "0 2 * * *", "tiny", "--trails", "3"])
    assert result.exit_code == 2
    assert "--trails" in result.output and "squeezeray nightly --help" in result.output
    missing = runner.invoke(app, ["schedule", "--cron", "0 2 * * *", "tiny"])
    assert missing.exit_code == 2 and "--storage" in missing.output


def test_print_gives_a_crontab_line_and_kuberay_yaml(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["tiny", "--storage", "runs", "--trials", "8"]
    result = runner.invoke(app, ["schedule", "--cron", "0 2 * * *", "--print", *args])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    entry = next(line for line in lines if line.startswith("0 2 * * * "))
    exe = sched.squeezeray_executable()
    assert Path(exe).is_absolute() and Path(exe).is_file()
    assert f"cd {tmp_path} && {exe} nightly tiny --storage runs --trials 8" in entry
    assert entry.endswith(f">> {tmp_path / 'squeezeray-nightly.log'} 2>&1")
    marker = lines[lines.index(entry) - 1]
    assert marker.startswith(sched.MARKER)

    docs = list(yaml.safe_load_all(result.stdout[result.stdout.index("apiVersion:") :]))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["RayJob", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]
    rayjob, cronjob, configmap = docs[0], docs[5], docs[4]
    assert rayjob["spec"]["entrypoint"] == (
        "squeezeray nightly tiny --storage runs --trials 8 --address auto"
    )
    cluster = rayjob["spec"]["rayClusterSpec"]
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in cluster["workerGroupSpecs"]
    ]:
        # KubeRay passes the value to `ray start --resources=...`: a quoted JSON object.
        assert json.loads(json.loads(params["resources"])) == {"squeezeray_latency": 1}
    assert cronjob["spec"]["schedule"] == "0 2 * * *"
    assert yaml.safe_load(configmap["data"]["rayjob.yaml"]) == rayjob
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][:2] == ["kubectl", "create"]


def test_the_printed_line_really_runs(tmp_path: Path) -> None:
    """Run the crontab line's command as cron would (sh, from anywhere): it reaches nightly."""
    command = sched.nightly_command(
        ["--storage", "x", "--help"], storage="x", cwd=tmp_path, log=Path("night.log")
    )
    line = sched.crontab_entry("@daily", command)[1]
    shell = line.split(" ", 1)[1]
    subprocess.run(
        ["sh", "-c", shell], cwd="/", check=True, timeout=120, env={"PATH": "/usr/bin:/bin"}
    )
    assert "--regression-threshold" in (tmp_path / "night.log").read_text()


def test_percent_is_escaped_for_cron(tmp_path: Path) -> None:
    command = sched.nightly_command(
        ["--storage", "runs-%Y"], storage="runs-%Y", cwd=tmp_path, executable="/x/squeezeray"
    )
    line = sched.crontab_entry("0 2 * * *", command)[1]
    assert "runs-\\%Y" in line and "runs-%Y" not in line.replace("\\%", "")


FAKE_CRONTAB = """#!/bin/sh
# A stand-in for crontab(1): `-l` prints the table, `crontab FILE` replaces it.
table="$FAKE_CRONTAB_FILE"
if [ "$1" = "-l" ]; then
  if [ -f "$table" ]; then cat "$table"; exit 0; fi
  echo "no crontab for $(id -un)" >&2; exit 1
fi
cp "$1" "$table"
"""


@pytest.fixture
def fake_crontab(tmp_path: Path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "crontab"
    script.write_text(FAKE_CRONTAB)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    table = tmp_path / "crontab.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CRONTAB_FILE", str(table))
    monkeypatch.chdir(tmp_path)
    return table


def _install(*args: str) -> str:
    result = runner.invoke(app, ["schedule", "--install", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_install_is_idempotent_and_keeps_other_entries(fake_crontab: Path) -> None:
    assert "crontab: added" in _install("--cron", "0 2 * * *", "tiny", "--storage", "runs")
    first = fake_crontab.read_text()
    assert first.count(sched.MARKER) == 1 and "nightly tiny --storage runs" in first

    assert "crontab: unchanged" in _install("--cron", "0 2 * * *", "tiny", "--storage", "runs")
    assert fake_crontab.read_text() == first

    # The user's own lines survive; a new time for the same storage replaces the entry.
    fake_crontab.write_text("MAILTO=me@example.com\n" + first + "5 * * * * echo mine\n")
    assert "crontab: replaced" in _install("--cron", "30 3 * * *", "tiny", "--storage", "runs")
    text = fake_crontab.read_text()
    assert text.count(sched.MARKER) == 1 and "\n30 3 * * * cd " in text and "0 2 * * *" not in text
    assert text.startswith("MAILTO=me@example.com\n") and "5 * * * * echo mine\n" in text

    # Another storage is another entry.
    assert "crontab: added" in _install("--cron", "0 4 * * *", "quick", "--storage", "other")
    assert fake_crontab.read_text().count(sched.MARKER) == 2


def test_install_reports_a_broken_crontab(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "crontab"
    script.write_text("#!/bin/sh\necho 'crontab: permission denied' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = runner.invoke(
        app, ["schedule", "--install", "--cron", "@daily", "tiny", "--storage", str(tmp_path)]
    )
    assert result.exit_code == 2 and "permission denied" in result.output


def test_print_install_foreground_exclude_each_other() -> None:
    result = runner.invoke(
        app, ["schedule", "--cron", "@daily", "--print", "--install", "--storage", "r"]
    )
    assert result.exit_code == 2 and "exclude each other" in result.output


class FakeClock:
    """A clock that only moves when the scheduler sleeps (or a run takes time)."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += timedelta(seconds=seconds)


def test_foreground_loop_runs_on_time_and_survives_failures() -> None:
    clock = FakeClock(datetime(2026, 1, 5, 1, 59, 30))
    started: list[datetime] = []
    outcomes: Iterator[Exception | int] = iter([RuntimeError("Ray died"), 3, 0])
    log: list[str] = []

    def run() -> int:
        started.append(clock.now())
        clock.t += timedelta(minutes=20)  # a run takes a while
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    runs = sched.run_forever(
        "0 2 * * *", run, log=log.append, now=clock.now, sleep=clock.sleep, max_runs=3
    )
    assert runs == 3
    assert started == [datetime(2026, 1, d, 2, 0) for d in (5, 6, 7)]
    assert max(clock.slept) <= sched.MAX_SLEEP_S  # it re-reads the clock at least every minute
    text = "\n".join(log)
    assert "run 1 failed: RuntimeError('Ray died'); the schedule goes on" in text
    assert "run 2 finished: regression (exit code 3)" in text
    assert "run 3 finished: ok" in text
    assert "next nightly run at 2026-01-06 02:00" in text


def test_a_run_longer_than_the_interval_skips_instead_of_piling_up() -> None:
    clock = FakeClock(datetime(2026, 1, 5, 0, 0, 30))
    started: list[datetime] = []

    def run() -> int:
        started.append(clock.now())
        clock.t += timedelta(minutes=150)
        return 0

    sched.run_forever(
        "0 * * * *", run, log=lambda _: None, now=clock.now, sleep=clock.sleep, max_runs=2
    )
    assert started == [datetime(2026, 1, 5, 1, 0), datetime(2026, 1, 5, 4, 0)]


def test_subprocess_runner_returns_the_exit_code(tmp_path: Path) -> None:
    fake = tmp_path / "squeezeray"
    script = "import sys\nopen('ran', 'w').write(' '.join(sys.argv[1:]))\nsys.exit(3)\n"
    fake.write_text(f"#!{sys.executable}\n{script}")
    fake.chmod(0o755)
    command = sched.nightly_command(
        ["--storage", "s"], storage="s", cwd=tmp_path, executable=str(fake)
    )
    assert sched.subprocess_runner(command)() == 3
    assert (tmp_path / "ran").read_text() == "nightly --storage s"
