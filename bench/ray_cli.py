"""squeezeray against heads started with Ray's own CLI (`ray start --head`, Ray 2.60, token
authentication on), every scenario, in a sandbox.

    python -m bench.ray_cli [--out DIR]

One bash script runs the scenarios one after another in one sandbox: new PID, network and mount
namespaces (`unshare`), a private /tmp/ray (Ray's address file lives there) and a private HOME
(Ray's token, ~/.ray/auth_token). So `ray start` gets its default ports without meeting anyone
else's Ray, `ray stop` (which ends every Ray process it can see) ends only the sandbox's, and no
Ray outside is touched. Killing the sandbox's first process ends all of its processes.

Scenarios, in order (FULL): `readme` (docs/operations.md's one-machine cluster steps as written:
`ray start --head`, a `quick` sweep with `--address auto`, `ray stop`), `nohead` (no head at
the address: exit 2, one line), `head` (a second head, token authentication on), `badtoken` (a
token the head refuses: exit 2 naming the token's source), `token_join` (a tiny sweep joins with
`--address auto`, presenting the token Ray keeps), `live` (an embedded sweep beside the live
head, RAY_ADDRESS pointing at it), `kill` (the head SIGKILLed, its address file left behind),
`dead_auto` (`--address auto` names the dead head, exit 2), `stale` (an embedded sweep with the
stale address file there). A token-auth head is asked once per credential, not in ray.init's
~20 s retry loop. The test suite runs LITE (all but `readme` and `stale`: every path of
`init_ray` once, ~1 minute) with these checks in tests/orchestrator/test_ray_cli.py.

Writes `ray_cli.json` and `ray_cli.md` under `--out` (default bench/results): each scenario's
exit code, seconds and checks. Exits 1 when any check failed, so a run is a real check.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, machine_info, write_result

ROOT = Path(__file__).resolve().parents[1]
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

# Each scenario writes its command's output to <name>.log, echoes NAME_RC=<exit code> and a
# `[Ns] name` line (bash's SECONDS) to show where the time goes.
SCENARIO_SCRIPTS: dict[str, str] = {
    # The docs' steps, exactly as written (set -e: any failing step fails the scenario).
    "readme": """
( set -e
@README@
) > readme.log 2>&1
echo "README_RC=$?"
echo "TOKEN_AUTH_FILE=$(test -s "$HOME/.ray/auth_token" && echo yes)"
ray stop --force >/dev/null 2>&1  # the steps end with `ray stop`; this only matters if it failed
""",
    "nohead": """
squeezeray sweep tiny --address 127.0.0.1:6390 --storage r > nohead.log 2>&1
echo "NOHEAD_RC=$?"
""",
    "head": """
ray start --head --num-cpus 2 --resources='{"squeezeray_latency": 1}' > head.log 2>&1 \\
    || { echo "HEAD FAILED"; cat head.log; exit 1; }
echo "HEAD_RC=0"
""",
    "badtoken": """
RAY_AUTH_TOKEN=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \\
    squeezeray sweep tiny --address 127.0.0.1:6379 --storage r > badtoken.log 2>&1
echo "BADTOKEN_RC=$?"
""",
    "token_join": """
squeezeray sweep tiny --trials 1 --address auto --storage token_join > token_join.log 2>&1
echo "TOKEN_JOIN_RC=$?"
""",
    "live": """
RAY_ADDRESS=127.0.0.1:6379 squeezeray sweep tiny --trials @TRIALS@ --num-cpus 2 --storage live \\
    > live.log 2>&1
echo "LIVE_RC=$?"
""",
    # SIGKILL the head's processes (by id; the sandbox holds nothing else of Ray's): the address
    # file stays behind.
    "kill": """
for pid in $(ps -eo pid=,comm= | awk '/gcs_server|raylet/ {print $1}'); do kill -9 "$pid"; done
sleep 2
echo "ADDRESS_FILE=$(cat /tmp/ray/ray_current_cluster 2>/dev/null)"
""",
    "dead_auto": """
squeezeray sweep tiny --trials 1 --address auto --storage dead_auto > dead_auto.log 2>&1
echo "DEAD_AUTO_RC=$?"
""",
    "stale": """
squeezeray sweep tiny --trials @TRIALS@ --num-cpus 2 --storage stale > stale.log 2>&1
echo "STALE_RC=$?"
""",
}

FULL = (
    "readme", "nohead", "head", "badtoken", "token_join", "live", "kill", "dead_auto", "stale",
)  # fmt: skip
LITE = ("nohead", "head", "badtoken", "token_join", "live", "kill", "dead_auto")


def sandbox_unavailable() -> str | None:
    """Why the sandbox cannot be made here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create PID/network/mount namespaces here: {probe.stderr.strip()}"
    return None


def readme_steps() -> str:
    """docs/operations.md's one-machine cluster steps (the bash block)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"To try the cluster path on one machine.*?```bash\n(.*?)```", text, re.S)
    if not block:
        raise AssertionError("docs/operations.md lost its one-machine cluster steps")
    return block.group(1)


def script(scenarios: tuple[str, ...], *, trials: int) -> str:
    """The bash script of `scenarios`, in order, after the sandbox's prelude."""
    parts = [PRELUDE]
    for name in scenarios:
        body = SCENARIO_SCRIPTS[name].replace("@TRIALS@", str(trials))
        if name == "readme":
            body = body.replace("@README@", readme_steps().strip())
        parts.append(f'{body}echo "[${{SECONDS}}s] {name}"\n')
    parts.append("ray stop --force >/dev/null 2>&1\n")
    return "".join(parts)


def run_sandboxed(directory: Path, text: str, *, timeout: float = 900) -> str:
    """Run the bash script `text` in a sandbox rooted at `directory`; return its output (also
    written to `directory/script.out`)."""
    path = directory / "script.sh"
    path.write_text(textwrap.dedent(text))
    env = {**os.environ, "SANDBOX": str(directory), "BIN": str(BIN), "PYTHONPATH": str(ROOT)}
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
    (directory / "script.out").write_text(out)
    return out


# -- checks: each returns what failed (empty: the scenario behaved) ----------------------------


def log(directory: Path, name: str) -> str:
    path = directory / f"{name}.log"
    return path.read_text() if path.exists() else f"({name}.log was not written)"


def trial_rows(storage: Path) -> list[dict[str, Any]]:
    from orchestrator.store.results import load_results

    rows = load_results(str(storage), sweep="all").to_pylist()
    return [r for r in rows if not r["is_baseline"]]


def _rc(out: str, key: str, expected: int) -> list[str]:
    return [] if f"{key}_RC={expected}\n" in out else [f"{key}_RC is not {expected}"]


def _ok_trials(storage: Path, expected: int) -> list[str]:
    try:
        trials = trial_rows(storage)
    except Exception as exc:  # no results at all
        return [f"{storage.name}: no results ({exc})"]
    if len(trials) != expected:
        return [f"{storage.name}: {len(trials)} trial rows, expected {expected}"]
    bad = [r["error"] for r in trials if r["status"] != "ok"]
    return [f"{storage.name}: failed trials {bad}"] if bad else []


def _one_line_error(text: str, *fragments: str) -> list[str]:
    failed = [f"missing {f!r}" for f in fragments if f not in text]
    return failed + (["a Traceback"] if "Traceback" in text else [])


def _asked_once(text: str) -> list[str]:
    """A token-auth head is asked once per credential, not in ray.init's loop of a retry a
    second for ~20 s (each retry logs `Failed to get cluster ID`)."""
    retries = text.count("Failed to get cluster ID")
    return [f"{retries} refused connection attempts (ray.init's retry loop)"] if retries > 2 else []


def check_readme(directory: Path, out: str, trials: int) -> list[str]:
    steps = readme_steps()
    failed = [] if "ray start --head" in steps and "--address auto" in steps else ["steps"]
    failed += _rc(out, "README", 0)
    failed += [] if "TOKEN_AUTH_FILE=yes" in out else ["no ~/.ray/auth_token: auth was off"]
    storage = re.search(r"--storage (\S+)", steps)
    space = re.search(r"squeezeray sweep (\S+)", steps)
    if not storage or not space:
        return [*failed, "the steps name no space or storage"]
    from orchestrator.space.config import load_space

    expected = load_space(space.group(1)).search.trials
    failed += _asked_once(log(directory, "readme"))
    return failed + _ok_trials(directory / storage.group(1), expected)


def check_nohead(directory: Path, out: str, trials: int) -> list[str]:
    return _rc(out, "NOHEAD", 2) + _one_line_error(
        log(directory, "nohead"),
        "--address='127.0.0.1:6390': no Ray head answers at 127.0.0.1:6390",
    )


def check_head(directory: Path, out: str, trials: int) -> list[str]:
    on = "Token authentication is enabled" in log(directory, "head")
    return _rc(out, "HEAD", 0) + ([] if on else ["the head's token authentication is off"])


def check_badtoken(directory: Path, out: str, trials: int) -> list[str]:
    text = log(directory, "badtoken")
    return (
        _rc(out, "BADTOKEN", 2)
        + _one_line_error(
            text,
            "uses token authentication",
            "the token from RAY_AUTH_TOKEN was refused",
            "ray get-auth-token",
        )
        + _asked_once(text)
    )


def check_token_join(directory: Path, out: str, trials: int) -> list[str]:
    return (
        _rc(out, "TOKEN_JOIN", 0)
        + _ok_trials(directory / "token_join", 1)
        + _asked_once(log(directory, "token_join"))
    )


def check_live(directory: Path, out: str, trials: int) -> list[str]:
    return _rc(out, "LIVE", 0) + _ok_trials(directory / "live", trials)


def check_kill(directory: Path, out: str, trials: int) -> list[str]:
    # the killed head left its address file behind
    return [] if "ADDRESS_FILE=127.0.0.1:6379\n" in out else ["no stale address file"]


def check_dead_auto(directory: Path, out: str, trials: int) -> list[str]:
    return _rc(out, "DEAD_AUTO", 2) + _one_line_error(
        log(directory, "dead_auto"),
        "no Ray head answers at 127.0.0.1:6379 (from Ray's address file",
    )


def check_stale(directory: Path, out: str, trials: int) -> list[str]:
    return _rc(out, "STALE", 0) + _ok_trials(directory / "stale", trials)


CHECKS: dict[str, Callable[[Path, str, int], list[str]]] = {
    "readme": check_readme,
    "nohead": check_nohead,
    "head": check_head,
    "badtoken": check_badtoken,
    "token_join": check_token_join,
    "live": check_live,
    "kill": check_kill,
    "dead_auto": check_dead_auto,
    "stale": check_stale,
}


def run_scenarios(
    directory: Path, scenarios: tuple[str, ...], *, trials: int
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Run `scenarios` in one sandbox under `directory`; return the script's output and, per
    scenario, its seconds (from the `[Ns]` lines) and what failed."""
    out = run_sandboxed(directory, script(scenarios, trials=trials))
    marks = {m[2]: int(m[1]) for m in re.finditer(r"^\[(\d+)s\] (\w+)$", out, re.M)}
    results: dict[str, dict[str, Any]] = {}
    previous = 0
    for name in scenarios:
        end = marks.get(name)
        results[name] = {
            "seconds": None if end is None else end - previous,
            "failed": CHECKS[name](directory, out, trials),
        }
        previous = end if end is not None else previous
    return out, results


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        "# squeezeray against `ray start --head` (`python -m bench.ray_cli`)",
        "",
        f"{m['date']}, {m['cpu_model']}, {m['cores']} cores, ray {m['versions'].get('ray')}; "
        f"load average at start {payload['load_average']}; {payload['wall_s']} s in all.",
        "",
        "| scenario | s | result |",
        "|---|---:|---|",
    ]
    for name, r in payload["scenarios"].items():
        verdict = "ok" if not r["failed"] else "FAILED: " + "; ".join(r["failed"])[:200]
        lines.append(f"| {name} | {'' if r['seconds'] is None else r['seconds']} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ray_cli", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--trials", type=int, default=2, help="trials of the embedded sweeps")
    args = parser.parse_args(argv)
    reason = sandbox_unavailable()
    if reason:
        print(f"bench.ray_cli: {reason}", file=sys.stderr)
        return 1
    load = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="squeezeray-ray-cli-") as tmp:
        out, results = run_scenarios(Path(tmp), FULL, trials=args.trials)
    payload = {
        "load_average": load,
        "wall_s": round(time.perf_counter() - start, 1),
        "scenarios": results,
        "script_output": out,
    }
    path = write_result("ray_cli", payload, results_dir=args.out)
    payload["machine"] = machine_info()
    (args.out / "ray_cli.md").write_text(markdown(payload))
    failed = [name for name, r in results.items() if r["failed"]]
    print(f"wrote {path} and ray_cli.md in {payload['wall_s']} s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
