"""The store-scale benchmark runs end to end at smoke size: it builds the store one file per
row, compacts a copy to one file per sweep and table, and both copies answer alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_store_scale_smoke(tmp_path: Path) -> None:
    from bench.store_scale import main

    assert main(["--smoke", "--results-dir", str(tmp_path), "--workdir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "store_scale_smoke.json").read_text())
    assert data["rows"] == 3 * 5
    assert data["files_before"] == {"results": 15, "stages": 3 * 8}
    assert data["files_after"] == {"results": 3, "stages": 3}
    for kind in ("uncompacted", "compacted"):
        for name in ("pareto_all", "pareto_latest", "sweeps", "list_sweeps"):
            assert data["seconds"][kind][name]["n"] == 1
            assert data["seconds"][kind][name]["median"] > 0
    assert (
        data["command"] == "python -m bench.store_scale --sweeps 3 --trials 4 --repeats 1 --smoke"
    )
    assert data["machine"]["cores"] >= 1
    assert set(data["goal_met"]) == {"pareto_all", "pareto_latest", "sweeps"}
