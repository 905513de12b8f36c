"""The one exception type squeezeray raises for user-facing problems."""

from __future__ import annotations


class SqueezerayError(Exception):
    """A problem the user can fix; the message names the key, the value and what is accepted.

    The CLI turns it into exit code 2 in one place (`orchestrator.cli.main`).
    """
