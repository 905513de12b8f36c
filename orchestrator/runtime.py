"""Starting or joining Ray, and the custom resources squeezeray schedules on.

On a laptop `init_ray(address=None)` starts an embedded local Ray (dashboard off); with an
address it connects to a running cluster. Each node offers one `squeezeray_latency` slot so
two latency measurements never overlap on a node (the embedded Ray declares it; cluster.yaml
declares it on every node).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from stages.errors import SqueezerayError

LATENCY_RESOURCE = "squeezeray_latency"


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
    quiet: bool = True,
) -> ClusterInfo:
    """Start an embedded Ray (address None) or connect to one; reuse a running session."""
    import ray

    started_here = False
    if not ray.is_initialized():
        # Keep Ray's own chatter (deprecation notices, autoscaler lines) out of the user's way.
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints nothing
        log_level = logging.ERROR if quiet else logging.INFO
        if address is None:
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                resources={LATENCY_RESOURCE: 1},
                logging_level=log_level,
                log_to_driver=not quiet,
            )
            started_here = True
        else:
            try:
                ray.init(address=address, logging_level=log_level, log_to_driver=not quiet)
            except ConnectionError as exc:
                raise SqueezerayError(
                    f"--address={address!r}: cannot connect to a Ray cluster ({exc}); start one "
                    "with `ray up cluster.yaml` or `ray start --head`, or drop --address to run "
                    "on an embedded local Ray"
                ) from exc
    return cluster_info(started_here=started_here)


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
