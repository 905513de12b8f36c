"""docs/architecture.md stays true: every module of the two packages has its line in the code
map (a module added without one fails here), and the map names no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = (ROOT / "docs" / "architecture.md").read_text()


def _modules() -> set[str]:
    found = set()
    for package in ("orchestrator", "stages"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "__init__.py":
                found.add(path.name)
    return found


def test_every_module_is_in_the_code_map() -> None:
    missing = sorted(name for name in _modules() if not re.search(rf"\b{re.escape(name)}\b", MAP))
    assert not missing, f"docs/architecture.md does not describe: {missing}"


def test_the_code_map_names_no_module_that_is_gone() -> None:
    block = MAP[MAP.index("```") : MAP.rindex("```")]
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", block))
    gone = sorted(named - _modules())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
