"""squeezeray's Ray side: search spaces, the stage DAG and its cache, Tune search, results."""

from __future__ import annotations

from stages.errors import SqueezerayError

__all__ = ["SqueezerayError"]
