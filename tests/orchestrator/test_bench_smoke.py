"""The Pareto benchmark runs end to end at tiny sizes and writes its JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path

from bench.pareto_bench import main


def test_pareto_bench_smoke(tmp_path: Path) -> None:
    out, md = tmp_path / "pareto.json", tmp_path / "PARETO.md"
    report = main(
        ["--sizes", "500,3000", "--repeats", "2", "--out", str(out), "--markdown", str(md)]
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["machine"]["cores"] and saved["machine"]["versions"]["numpy"]
    cases = {(c["distribution"], c["n"]): c for c in saved["cases"]}
    assert set(cases) == {("uniform", 500), ("uniform", 3000), ("plane", 500), ("plane", 3000)}
    for case in cases.values():
        assert case["results"]["squeezeray"]["repeats"] == 2
        assert all(r["agrees"] for r in case["results"].values())
        assert {"squeezeray (Arrow)", "moocore"} <= set(case["results"])
    assert cases[("plane", 3000)]["front_size"] == 3000  # the hard case: all on the front
    assert cases[("uniform", 3000)]["front_size"] < 300
    text = md.read_text()
    assert "## uniform" in text and "## plane" in text and "| 3,000 |" in text
