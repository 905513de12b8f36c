"""Shared fixtures. Ray starts once per test session, only for tests that ask for it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """An embedded local Ray (2 CPUs, no dashboard) shared by every test that needs one."""
    import ray

    from orchestrator.runtime import init_ray

    # One logical GPU is declared (none exists): GPU sweeps then schedule here and their stages
    # fall back to CPU, which exercises the --gpus-per-trial path on a CPU-only machine.
    init_ray(address=None, num_cpus=2, num_gpus=1)
    yield
    ray.shutdown()
