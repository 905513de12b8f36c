"""The packaged search spaces: `squeezeray sweep NAME` reads `search_spaces/NAME.yaml`."""

from __future__ import annotations

from pathlib import Path


def names() -> list[str]:
    """The packaged spaces' names (the YAML files here, without `.yaml`), sorted: what every
    help and error that lists them shows."""
    return sorted(p.stem for p in Path(__file__).parent.glob("*.yaml"))
