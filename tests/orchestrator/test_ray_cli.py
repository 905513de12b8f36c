"""Embedded means embedded, joining means joining: squeezeray against heads started with Ray's
own CLI (`ray start --head`, Ray 2.60, token authentication on).

Each test runs a shell script in a sandbox of its own: new PID, network and mount namespaces
(`unshare`), a private /tmp/ray (Ray's address file lives there) and a private HOME (Ray's
token, ~/.ray/auth_token). So `ray start` gets its default ports without meeting anyone else's
Ray, `ray stop` (which ends every Ray process it can see) ends only the sandbox's, and the test
session's own Ray fixture is never touched. Killing the sandbox's first process ends all of
its processes, whatever the script was doing. Slow: each sandbox starts Ray two or three times.
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


def _trials(storage: Path) -> list[dict]:
    from orchestrator.store.results import load_results

    rows = load_results(str(storage)).to_pylist()
    return [r for r in rows if not r["is_baseline"]]


def test_readme_cluster_steps_as_written_join_a_ray_start_head(tmp_path: Path) -> None:
    """The README's one-machine cluster steps, exactly as written, with token auth on."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"To try the cluster path on one machine.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README lost its one-machine cluster steps"
    steps = block.group(1)
    assert "ray start --head" in steps and "--address auto" in steps
    out = run_sandboxed(
        tmp_path,
        "set -e\n"
        + steps
        + """
echo "TOKEN_AUTH_FILE=$(test -s "$HOME/.ray/auth_token" && echo yes)"
""",
    )
    assert "TOKEN_AUTH_FILE=yes" in out, out[-3000:]
    match = re.search(r"--storage (\S+)", steps)
    assert match
    trials = _trials(tmp_path / match.group(1))
    space = re.search(r"squeezeray sweep (\S+)", steps)
    assert space
    from orchestrator.space.config import load_space

    expected = load_space(space.group(1)).search.trials
    assert len(trials) == expected, out[-3000:]
    assert all(r["status"] == "ok" for r in trials), [r["error"] for r in trials]


def test_embedded_sweep_beside_a_live_head_and_after_it_was_killed(tmp_path: Path) -> None:
    """Without --address a sweep starts its own Ray: beside a running `ray start` head (even
    with RAY_ADDRESS pointing at it), and after that head was SIGKILLed, which leaves its
    address file behind. Then `--address auto` names the dead head in one line, exit 2."""
    out = run_sandboxed(
        tmp_path,
        """
ray start --head --num-cpus 1 >/dev/null 2>&1 || { echo "HEAD FAILED"; exit 1; }
RAY_ADDRESS=127.0.0.1:6379 squeezeray sweep tiny --trials 2 --num-cpus 2 --storage live \
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
""",
    )
    assert "LIVE_RC=0" in out, out + (tmp_path / "live.log").read_text()[-3000:]
    assert "ADDRESS_FILE=" in out and "ADDRESS_FILE=\n" not in out, out  # the stale file
    assert "STALE_RC=0" in out, out + (tmp_path / "stale.log").read_text()[-3000:]
    for storage in ("live", "stale"):
        trials = _trials(tmp_path / storage)
        assert len(trials) == 2 and all(r["status"] == "ok" for r in trials), storage
    assert "JOIN_RC=2" in out, out
    joined = (tmp_path / "joined.log").read_text()
    assert "no Ray head answers at 127.0.0.1:6379 (from Ray's address file" in joined, joined
    assert "Traceback" not in joined, joined


def test_join_failures_are_one_line_errors_naming_address_and_cause(tmp_path: Path) -> None:
    """No head at the address; a head whose token this client does not have."""
    out = run_sandboxed(
        tmp_path,
        """
squeezeray sweep tiny --address 127.0.0.1:6390 --storage r > nohead.log 2>&1
echo "NOHEAD_RC=$?"
ray start --head --num-cpus 1 >/dev/null 2>&1 || { echo "HEAD FAILED"; exit 1; }
RAY_AUTH_TOKEN=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
    squeezeray sweep tiny --address 127.0.0.1:6379 --storage r > badtoken.log 2>&1
echo "BADTOKEN_RC=$?"
ray stop --force >/dev/null 2>&1
""",
    )
    assert "NOHEAD_RC=2" in out and "BADTOKEN_RC=2" in out, out
    nohead = (tmp_path / "nohead.log").read_text()
    assert "--address='127.0.0.1:6390': no Ray head answers at 127.0.0.1:6390" in nohead, nohead
    badtoken = (tmp_path / "badtoken.log").read_text()
    assert "uses token authentication" in badtoken and "RAY_AUTH_TOKEN" in badtoken, badtoken
    assert "ray get-auth-token" in badtoken, badtoken
    for log in (nohead, badtoken):
        assert "Traceback" not in log, log
