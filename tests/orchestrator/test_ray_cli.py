"""Embedded means embedded, joining means joining: squeezeray against heads started with Ray's
own CLI (`ray start --head`, Ray 2.60, token authentication on).

One shell script runs every scenario in one sandbox (module fixture), one after another; each
test then checks its scenario's exit codes and logs. The sandbox: new PID, network and mount
namespaces (`unshare`), a private /tmp/ray (Ray's address file lives there) and a private HOME
(Ray's token, ~/.ray/auth_token). So `ray start` gets its default ports without meeting anyone
else's Ray, `ray stop` (which ends every Ray process it can see) ends only the sandbox's, and
the test session's own Ray fixture is never touched. Killing the sandbox's first process ends
all of its processes, whatever the script was doing. Slow: the script starts two heads (the
README's, then one for the join failures and the embedded runs) and three embedded Rays.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UNSHARE = ("unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc")

# As on any machine where Ray has run before: its first local `ray.init()` writes the token
# `ray start --head` then turns authentication on with.
PRELUDE = """
set -u
ip link set lo up
mkdir -p /tmp/ray && mount -t tmpfs sandbox-ray /tmp/ray
export HOME="$SANDBOX/home" && mkdir -p "$HOME"
export PATH="$BIN:$PATH"
unset RAY_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
export RAY_USAGE_STATS_ENABLED=0
cd "$SANDBOX"
ray get-auth-token --generate >/dev/null 2>&1
"""


def _sandbox_available() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(
        [*UNSHARE, "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot create PID/network/mount namespaces here: {probe.stderr.strip()}"
    return None


def run_sandboxed(tmp_path: Path, script: str, timeout: float = 900) -> str:
    """Run `script` (bash) in the sandbox; return its output; fail with the output's tail."""
    reason = _sandbox_available()
    if reason:
        pytest.skip(reason)
    path = tmp_path / "script.sh"
    path.write_text(PRELUDE + textwrap.dedent(script))
    env = {**os.environ, "SANDBOX": str(tmp_path), "BIN": str(BIN), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*UNSHARE, "--kill-child", "bash", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()  # --kill-child: the sandbox's init, and with it every process in it, dies
            proc.communicate()
    return out


def _readme_steps() -> str:
    readme = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"To try the cluster path on one machine.*?```bash\n(.*?)```", readme, re.S)
    assert block, "docs/operations.md lost its one-machine cluster steps"
    return block.group(1)


# Every scenario, in order, in one sandbox. Each writes its command's output to its own log and
# echoes its exit code; `[Ns]` lines (bash's SECONDS) show where the time goes.
SCENARIOS = """
# 1. The docs' steps, exactly as written (set -e: any failing step fails the scenario).
( set -e
@README@
) > readme.log 2>&1
echo "README_RC=$?"
echo "TOKEN_AUTH_FILE=$(test -s "$HOME/.ray/auth_token" && echo yes)"
ray stop --force >/dev/null 2>&1  # the README ends with `ray stop`; this only matters if it failed
echo "[${SECONDS}s] readme done"

# 2. Join failures: no head at the address; then a head whose token this client does not have.
squeezeray sweep tiny --address 127.0.0.1:6390 --storage r > nohead.log 2>&1
echo "NOHEAD_RC=$?"
ray start --head --num-cpus 1 >/dev/null 2>&1 || { echo "HEAD FAILED"; exit 1; }
echo "[${SECONDS}s] head started"
RAY_AUTH_TOKEN=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \\
    squeezeray sweep tiny --address 127.0.0.1:6379 --storage r > badtoken.log 2>&1
echo "BADTOKEN_RC=$?"
echo "[${SECONDS}s] join failures done"

# 3. Embedded beside the live head (even with RAY_ADDRESS pointing at it), then after the head
#    was SIGKILLed, which leaves its address file behind; `--address auto` names the dead head.
RAY_ADDRESS=127.0.0.1:6379 squeezeray sweep tiny --trials 2 --num-cpus 2 --storage live \\
    > live.log 2>&1
echo "LIVE_RC=$?"
# SIGKILL the head's processes (by id; the sandbox holds nothing else of Ray's)
for pid in $(ps -eo pid=,comm= | awk '/gcs_server|raylet/ {print $1}'); do kill -9 "$pid"; done
sleep 2
echo "ADDRESS_FILE=$(cat /tmp/ray/ray_current_cluster 2>/dev/null)"
squeezeray sweep tiny --trials 2 --address auto --storage joined > joined.log 2>&1
echo "JOIN_RC=$?"
squeezeray sweep tiny --trials 2 --num-cpus 2 --storage stale > stale.log 2>&1
echo "STALE_RC=$?"
ray stop --force >/dev/null 2>&1
echo "[${SECONDS}s] embedded done"
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the sandbox directory, the script's output) after every scenario ran."""
    tmp_path = tmp_path_factory.mktemp("ray-cli")
    out = run_sandboxed(tmp_path, SCENARIOS.replace("@README@", _readme_steps().strip()))
    (tmp_path / "script.out").write_text(out)  # to read after a failure
    return tmp_path, out


def _log(sandbox: tuple[Path, str], name: str) -> str:
    path = sandbox[0] / f"{name}.log"
    return path.read_text() if path.exists() else f"({name}.log was not written)"


def _trials(storage: Path) -> list[dict]:
    from orchestrator.store.results import load_results

    rows = load_results(str(storage), sweep="all").to_pylist()
    return [r for r in rows if not r["is_baseline"]]


def test_readme_cluster_steps_as_written_join_a_ray_start_head(sandbox: tuple[Path, str]) -> None:
    """The one-machine cluster steps of docs/operations.md, as written, with token auth on."""
    tmp_path, out = sandbox
    steps = _readme_steps()
    assert "ray start --head" in steps and "--address auto" in steps
    readme_log = _log(sandbox, "readme")
    assert "README_RC=0" in out, out + readme_log[-3000:]
    assert "TOKEN_AUTH_FILE=yes" in out, out
    match = re.search(r"--storage (\S+)", steps)
    assert match
    trials = _trials(tmp_path / match.group(1))
    space = re.search(r"squeezeray sweep (\S+)", steps)
    assert space
    from orchestrator.space.config import load_space

    expected = load_space(space.group(1)).search.trials
    assert len(trials) == expected, readme_log[-3000:]
    assert all(r["status"] == "ok" for r in trials), [r["error"] for r in trials]


def test_embedded_sweep_beside_a_live_head_and_after_it_was_killed(
    sandbox: tuple[Path, str],
) -> None:
    """Without --address a sweep starts its own Ray: beside a running `ray start` head (even
    with RAY_ADDRESS pointing at it), and after that head was SIGKILLed, which leaves its
    address file behind. Then `--address auto` names the dead head in one line, exit 2."""
    tmp_path, out = sandbox
    assert "LIVE_RC=0" in out, out + _log(sandbox, "live")[-3000:]
    assert "ADDRESS_FILE=" in out and "ADDRESS_FILE=\n" not in out, out  # the stale file
    assert "STALE_RC=0" in out, out + _log(sandbox, "stale")[-3000:]
    for storage in ("live", "stale"):
        trials = _trials(tmp_path / storage)
        assert len(trials) == 2 and all(r["status"] == "ok" for r in trials), storage
    assert "JOIN_RC=2" in out, out
    joined = _log(sandbox, "joined")
    assert "no Ray head answers at 127.0.0.1:6379 (from Ray's address file" in joined, joined
    assert "Traceback" not in joined, joined


def test_join_failures_are_one_line_errors_naming_address_and_cause(
    sandbox: tuple[Path, str],
) -> None:
    """No head at the address; a head whose token this client does not have."""
    _, out = sandbox
    assert "NOHEAD_RC=2" in out and "BADTOKEN_RC=2" in out, out
    nohead = _log(sandbox, "nohead")
    assert "--address='127.0.0.1:6390': no Ray head answers at 127.0.0.1:6390" in nohead, nohead
    badtoken = _log(sandbox, "badtoken")
    assert "uses token authentication" in badtoken and "RAY_AUTH_TOKEN" in badtoken, badtoken
    assert "ray get-auth-token" in badtoken, badtoken
    for log in (nohead, badtoken):
        assert "Traceback" not in log, log
