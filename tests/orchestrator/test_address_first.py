"""A sweep whose --address names no running Ray head is refused before its task is loaded:
on a big model the pre-flight checks take minutes, and a typo must not cost them."""

from __future__ import annotations

import socket

import pytest

from orchestrator.engine.prepare import prepare_sweep
from stages.errors import SqueezerayError

LOADED: list[str] = []


def task() -> object:
    """A task factory that records that it was called (it never returns a usable task)."""
    LOADED.append("task")
    raise RuntimeError("the task was loaded")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("form", ["python", "env-auto"])
def test_an_address_with_no_head_is_refused_before_the_task_loads(
    form: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    LOADED.clear()
    target = f"127.0.0.1:{_closed_port()}"
    address = target
    if form == "env-auto":  # `--address auto` resolved through RAY_ADDRESS
        monkeypatch.setenv("RAY_ADDRESS", target)
        address = "auto"
    space = {"task": f"{__name__}:task", "pipeline": ["teacher", "quantize"]}
    with pytest.raises(SqueezerayError) as err:
        prepare_sweep(space, storage=str(tmp_path), address=address)
    message = str(err.value)
    assert f"--address={address!r}" in message and "no Ray head answers" in message
    assert target in message
    assert LOADED == []  # refused before the task was imported and called
