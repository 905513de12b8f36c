"""The `squeezeray` command line. It only parses and prints: every command calls importable,
tested functions. Heavy imports (torch, ray, pyarrow) happen inside commands so `--help` is
instant. `SqueezerayError` becomes exit code 2 here, in one place (`main`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from stages.errors import SqueezerayError

console = Console(stderr=True)
out = Console()


class _SqueezerayGroup(TyperGroup):
    """Turns SqueezerayError into a one-line message and exit code 2 - the one place it happens."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SqueezerayError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc


app = typer.Typer(
    cls=_SqueezerayGroup,
    name="squeezeray",
    help="Find the best small version of a neural network: compression sweeps on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Commands are grouped by owner module; each body is a thin call into that module.

# --- sweep (orchestrator.sweep) ------------------------------------------------------------

# --- validate (orchestrator.config) --------------------------------------------------------

# --- pareto / sweeps (orchestrator.pareto, orchestrator.results) ---------------------------

# --- nightly / schedule (orchestrator.nightly, orchestrator.schedule) ----------------------


def main() -> None:
    """Console-script entry point."""
    app()


_ = (Path, Annotated, Optional, sys)  # used by the command sections above
