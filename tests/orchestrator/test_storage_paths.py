"""A relative local storage becomes absolute once, where the user gave it: every process
(Tune trials run in their own working directories) then writes to the same place."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.store.storage import open_storage


def test_relative_storage_is_resolved_against_the_callers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_storage("runs")
    assert store.uri == str(tmp_path / "runs") == store.root
    assert open_storage(f"file://{tmp_path}/x").uri == f"file://{tmp_path}/x"  # URIs stay
