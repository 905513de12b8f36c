"""The one exception type squeezeray raises for user-facing problems, and its one warning type."""

from __future__ import annotations


class SqueezerayError(Exception):
    """A problem the user can fix; the message names the key, the value and what is accepted.

    The CLI turns it into exit code 2 in one place (`orchestrator.cli.main`).
    """


class SqueezerayWarning(UserWarning):
    """A result that is not what the user asked for, though it runs (a structured prune that
    removed far less than its ratio). The CLI prints it as one `warning:` line."""
