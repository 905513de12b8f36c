"""Embedded means embedded, joining means joining: squeezeray against a head started with Ray's
own CLI (`ray start --head`, Ray 2.60, token authentication on), in the sandbox of
`bench.ray_cli` (private PID/network/mount namespaces, /tmp/ray and HOME: `ray start` and
`ray stop` never meet anyone else's Ray, nor the test session's).

The suite runs `bench.ray_cli.LITE` in one sandbox (module fixture): a join failure with no
head; one head; a token it refuses; a tiny sweep joining it with `--address auto` and the token
Ray keeps; an embedded sweep beside it (RAY_ADDRESS pointing at it); then the head SIGKILLed
and `--address auto` naming the dead head of its address file. `python -m bench.ray_cli` runs
these and, with the same checks, the docs' steps verbatim (a 1-minute `quick` sweep) and an
embedded sweep beside the stale address file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ray_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """(the sandbox directory, each scenario's failed checks) after LITE ran."""
    reason = ray_cli.sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("ray-cli")
    _, results = ray_cli.run_scenarios(directory, ray_cli.LITE, trials=1)
    return directory, {name: r["failed"] for name, r in results.items()}


def _explain(sandbox: tuple[Path, dict[str, list[str]]], *names: str) -> str:
    directory, _ = sandbox
    out = (directory / "script.out").read_text()
    return out + "".join(ray_cli.log(directory, n)[-3000:] for n in names)


def test_docs_cluster_steps_are_what_the_bench_runs() -> None:
    """The docs' one-machine steps start a head and join it with `--address auto` (the bench
    runs them verbatim; the suite runs the same path on a tiny sweep below)."""
    steps = ray_cli.readme_steps()
    assert "ray start --head" in steps and "--address auto" in steps and "ray stop" in steps
    assert '"squeezeray_latency": 1' in steps
    assert '"squeezeray_latency": 1' in ray_cli.SCENARIO_SCRIPTS["head"]  # the same head


def test_a_sweep_joins_a_token_auth_head_with_address_auto(
    sandbox: tuple[Path, dict[str, list[str]]],
) -> None:
    """`--address auto` finds the `ray start` head (authentication on) through its address file
    and presents the token Ray keeps (~/.ray/auth_token), asking the head once first rather
    than through ray.init's ~20 s retry loop."""
    _, failed = sandbox
    assert failed["head"] == [], (failed["head"], _explain(sandbox, "head"))
    assert (sandbox[0] / "home" / ".ray" / "auth_token").is_file()
    assert failed["token_join"] == [], (failed["token_join"], _explain(sandbox, "token_join"))


def test_embedded_sweep_beside_a_live_head_then_auto_names_the_killed_head(
    sandbox: tuple[Path, dict[str, list[str]]],
) -> None:
    """Without --address a sweep starts its own Ray beside a running `ray start` head, even
    with RAY_ADDRESS pointing at it. After the head was SIGKILLed (its address file left
    behind), `--address auto` names the dead head in one line, exit 2."""
    _, failed = sandbox
    assert failed["live"] == [], (failed["live"], _explain(sandbox, "live"))
    assert failed["kill"] == [], _explain(sandbox)
    assert failed["dead_auto"] == [], (failed["dead_auto"], _explain(sandbox, "dead_auto"))


def test_join_failures_are_one_line_errors_naming_address_and_cause(
    sandbox: tuple[Path, dict[str, list[str]]],
) -> None:
    """No head at the address; a head that refuses this client's token (RAY_AUTH_TOKEN): exit
    2, the address, the cause and how to give the token, no traceback, asked once."""
    _, failed = sandbox
    assert failed["nohead"] == [], (failed["nohead"], _explain(sandbox, "nohead"))
    assert failed["badtoken"] == [], (failed["badtoken"], _explain(sandbox, "badtoken"))
