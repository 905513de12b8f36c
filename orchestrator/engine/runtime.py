"""Starting or joining Ray, and the custom resources squeezeray schedules on.

On a laptop `init_ray(address=None)` always starts an embedded local Ray (dashboard off),
whatever RAY_ADDRESS, a running `ray start` head or a stale address file say. With an address
it joins a running cluster: `auto` (RAY_ADDRESS, else the head Ray's address file names),
`HOST:PORT`, or a `ray://` client address. Ray 2.60 heads started by `ray start --head` use
token authentication when a token exists (`~/.ray/auth_token`); squeezeray presents the token
Ray keeps (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or `~/.ray/auth_token`) and says what failed
when it cannot join: no head at that address, or a token the head refused.

Each node offers one `squeezeray_latency` slot so two latency measurements never overlap on a
node (the embedded Ray declares it; cluster.yaml declares it on every node).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from stages.errors import SqueezerayError

LATENCY_RESOURCE = "squeezeray_latency"


@dataclass(frozen=True)
class RayDisplay:
    """What Ray shows while squeezeray runs: its worker processes' stdout/stderr and INFO
    logs (`verbose`, the CLI's `-v`), and its web dashboard on an embedded Ray (`dashboard`,
    the CLI's `--dashboard`; needs `ray[default]`). Both off by default: the progress bar and
    the results are the output."""

    verbose: bool = False
    dashboard: bool = False


_display = RayDisplay()


def set_ray_display(display: RayDisplay) -> None:
    """Use `display` for the next Ray this process starts or joins (the CLI sets it once per
    command from `-v/--verbose` and `--dashboard`)."""
    global _display
    _display = display


def ray_display() -> RayDisplay:
    """The RayDisplay in effect (`set_ray_display`)."""
    return _display


@dataclass(frozen=True)
class ClusterInfo:
    """What the connected Ray offers (totals over alive nodes)."""

    cpus: float
    gpus: float
    resources: dict[str, float]
    nodes: int
    started_here: bool


def init_ray(
    *,
    address: str | None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    quiet: bool | None = None,
) -> ClusterInfo:
    """Start an embedded Ray (address None) or connect to one; reuse a running session.

    `quiet` (default: not `ray_display().verbose`) keeps Ray's worker output and INFO logs
    away; the dashboard of an embedded Ray starts only with `ray_display().dashboard`."""
    import ray

    started_here = False
    if not ray.is_initialized():
        # Keep Ray's own chatter (deprecation notices, autoscaler lines) out of the user's way.
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints nothing
        display = ray_display()
        quiet = not display.verbose if quiet is None else quiet
        log_level = logging.ERROR if quiet else logging.INFO
        if address is None:
            # "local" always starts a new instance: a bare ray.init() would join RAY_ADDRESS, a
            # running `ray start` head or the address file a killed head left behind, and then
            # reject num_cpus/resources (DESIGN.md, Ray facts).
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=display.dashboard,
                resources={LATENCY_RESOURCE: 1},
                logging_level=log_level,
                log_to_driver=not quiet,
            )
            started_here = True
        else:
            join_ray(address, logging_level=log_level, log_to_driver=not quiet)
    return cluster_info(started_here=started_here)


CONNECT_CHECK_TIMEOUT_S = 5.0
AUTH_HELP = (
    "copy the head's token (`ray get-auth-token` on the head node) to ~/.ray/auth_token here, "
    "or set RAY_AUTH_TOKEN=<token> or RAY_AUTH_TOKEN_PATH=<file>"
)


def join_ray(address: str, *, logging_level: int, log_to_driver: bool) -> None:
    """`ray.init` on a running cluster, with the token Ray keeps, and one-line errors.

    Raises SqueezerayError naming the address and the cause: nothing found for `auto`, no head
    answering at HOST:PORT (checked with a plain TCP connect first, so a dead address fails in
    seconds instead of Ray's minutes of retries), or an authentication failure and how to
    provide the token.
    """
    import ray

    if "://" in address:  # a Ray Client address: Ray's own client handles it
        try:
            ray.init(address=address, logging_level=logging_level, log_to_driver=log_to_driver)
        except ConnectionError as exc:
            raise SqueezerayError(
                f"--address={address!r}: cannot connect to the Ray client server "
                f"({_one_line(exc)}); check the address, or drop --address to run on an "
                "embedded local Ray"
            ) from exc
        return
    target, origin = resolve_address(address)
    _check_listening(address, target, origin)
    # The token is presented only to a head that asks for it: a client in token mode joined a
    # head without authentication, but its actors were then cancelled before they ran (seen
    # with ~/.ray/auth_token left by an earlier `ray start --head` and a cluster started
    # without authentication). One quick request asks first: `ray.init` retries a refused
    # connection once a second for ~20 s before it reports it.
    token: str | None = None
    if _refuses_this_client(target):
        if os.environ.get("RAY_AUTH_MODE") is None:
            token = use_token_if_available()
        if token is None or _refuses_this_client(target):
            raise _auth_failure(address, target, token)
    try:
        try:
            ray.init(address=target, logging_level=logging_level, log_to_driver=log_to_driver)
        except Exception as first:
            if not _is_auth_error(first) or os.environ.get("RAY_AUTH_MODE") is not None:
                raise
            token = use_token_if_available()
            if token is None:
                raise
            ray.shutdown()
            ray.init(address=target, logging_level=logging_level, log_to_driver=log_to_driver)
    except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError from the GCS
        if _is_auth_error(exc):
            raise _auth_failure(address, target, token) from exc
        raise SqueezerayError(
            f"--address={address!r}: cannot join the Ray cluster at {target}{origin} "
            f"({_one_line(exc)}); check that its head is running (`ray status --address "
            f"{target}`), or drop --address to run on an embedded local Ray"
        ) from exc


def _refuses_this_client(target: str) -> bool:
    """Whether the GCS at `target` refuses this process's credentials (one request)."""
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        GcsClient(address=target)
    except Exception as exc:  # anything else is left to ray.init and its own messages
        return _is_auth_error(exc)
    return False


def _auth_failure(address: str, target: str, token: str | None) -> SqueezerayError:
    have = f"the token from {token} was refused" if token else "no token was found here"
    return SqueezerayError(
        f"--address={address!r}: the Ray head at {target} uses token authentication "
        f"and {have}; {AUTH_HELP}"
    )


def _is_auth_error(exc: BaseException) -> bool:
    text = _chain_text(exc)
    return any(m in text for m in ("AuthenticationError", "InvalidAuthToken", "UNAUTHENTICATED"))


def check_reachable(address: str | None) -> None:
    """Fail fast, before the sweep loads its task (minutes of pre-flight on a big model), when
    `address` (`--address`; None: an embedded Ray, nothing to check) names no running head:
    `auto` finds none, or nothing listens at HOST:PORT. A ray:// client address is left to
    `join_ray`. Raises SqueezerayError as `join_ray` does."""
    if address is None or "://" in address:
        return
    target, origin = resolve_address(address)
    _check_listening(address, target, origin)


def resolve_address(address: str) -> tuple[str, str]:
    """(HOST:PORT, where it came from) for `auto` or an explicit address; `auto` reads
    RAY_ADDRESS, else the address file of the last `ray start` head on this machine."""
    if address != "auto":
        return address, ""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, " (from RAY_ADDRESS)"
    try:
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment("auto", None)
    except ConnectionError as exc:
        raise SqueezerayError(
            "--address='auto': no running Ray cluster found on this machine (no RAY_ADDRESS, "
            "no `ray start` head); start one with `ray start --head` or `ray up cluster.yaml`, "
            "pass its HOST:PORT, or drop --address to run on an embedded local Ray"
        ) from exc
    if not found or found == "auto":
        raise SqueezerayError(
            "--address='auto': no running Ray cluster found on this machine; start one with "
            "`ray start --head`, pass its HOST:PORT, or drop --address to run on an embedded "
            "local Ray"
        )
    return str(found), " (from Ray's address file of the last `ray start` head)"


def _check_listening(address: str, target: str, origin: str) -> None:
    import socket

    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SqueezerayError(
            f"--address={address!r}: {target!r}{origin} is not an address; accepted: auto, "
            "HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_CHECK_TIMEOUT_S):
            pass
    except OSError as exc:
        stale = " (a head that is no longer running left it behind)" if origin else ""
        raise SqueezerayError(
            f"--address={address!r}: no Ray head answers at {target}{origin}{stale}: "
            f"{exc.strerror or exc}; start one with `ray start --head` (or `ray up "
            "cluster.yaml`), or drop --address to run on an embedded local Ray"
        ) from exc


def use_token_if_available() -> str | None:
    """Turn on Ray's token authentication for this process when a token is at hand and
    RAY_AUTH_MODE is not set; return where the token is (None: no token).

    A client in token mode still joins a head without authentication, so presenting the token
    is always safe. An explicit RAY_AUTH_MODE is respected.
    """
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "RAY_AUTH_TOKEN"
    elif (
        os.environ.get("RAY_AUTH_TOKEN_PATH")
        and Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser().is_file()
    ):
        where = f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    elif (Path.home() / ".ray" / "auth_token").is_file():
        where = "~/.ray/auth_token"
    else:
        return None
    if os.environ.get("RAY_AUTH_MODE") is None:
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config; refresh it so this process sees token mode
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
        except (ImportError, AttributeError):
            pass
    return where


def _chain_text(exc: BaseException) -> str:
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def cluster_info(*, started_here: bool = False) -> ClusterInfo:
    import ray

    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        cpus=float(total.get("CPU", 0.0)),
        gpus=float(total.get("GPU", 0.0)),
        resources={k: float(v) for k, v in total.items()},
        nodes=len(nodes),
        started_here=started_here,
    )


def latency_resources(info: ClusterInfo, requested: str | None) -> dict[str, float]:
    """The custom resources a latency task asks for.

    `requested` (from --latency-resource) must exist on the cluster; otherwise the
    node-exclusive slot is used when the cluster offers it (a cluster started without it still
    works, but measurements may overlap with each other).
    """
    if requested:
        if info.resources.get(requested, 0.0) <= 0:
            offered = sorted(k for k in info.resources if k not in ("CPU", "GPU", "memory"))
            raise SqueezerayError(
                f"--latency-resource={requested!r}: no node offers this Ray resource; offered: "
                f"{', '.join(offered) or 'none'}. Start the deployment nodes with "
                f"`ray start --resources='{{\"{requested}\": 1}}'`"
            )
        if requested == LATENCY_RESOURCE:
            return {LATENCY_RESOURCE: 1.0}
        # A sliver of the marker resource pins the task to those nodes; the node's latency
        # slot (when offered) keeps measurements there from overlapping.
        out = {requested: 0.001}
        if info.resources.get(LATENCY_RESOURCE, 0.0) > 0:
            out[LATENCY_RESOURCE] = 1.0
        return out
    if info.resources.get(LATENCY_RESOURCE, 0.0) > 0:
        return {LATENCY_RESOURCE: 1.0}
    return {}
