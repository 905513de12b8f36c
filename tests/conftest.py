"""Shared fixtures. Ray starts once per test session, only for tests that ask for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """An embedded local Ray (2 CPUs, no dashboard) shared by every test that needs one."""
    import ray

    from orchestrator.engine.runtime import init_ray

    # One logical GPU is declared (none exists): GPU sweeps then schedule here and their stages
    # fall back to CPU, which exercises the --gpus-per-trial path on a CPU-only machine.
    init_ray(address=None, num_cpus=2, num_gpus=1)
    yield
    ray.shutdown()


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3-compatible server (moto's server mode) with one bucket, `squeeze`, and the
    environment an S3 client needs for it (as for MinIO: keys in the environment, the
    endpoint in the URI). Yields "HOST:PORT"; skips where moto is not installed."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in process-global state that every server shares: start empty,
    # so a test never sees another test's objects.
    _moto_reset(host, port)
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(
        Bucket="squeeze"
    )
    yield f"{host}:{port}"
    _moto_reset(host, port)
    server.stop()


def _moto_reset(host: str, port: int) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
