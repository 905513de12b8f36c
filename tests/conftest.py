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

    init_ray(address=None, num_cpus=2)
    yield
    ray.shutdown()
