"""Render the `squeezeray` command line (the typer app) as a Markdown reference.

    python docs/gen_cli.py > docs/cli-reference.md

Everything comes from the app itself: each command's usage, its help text, and every argument
and option with its type, default and help, so the reference cannot drift from `--help`.
`render()` returns the text (a docs test compares it with the committed file).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEADER = (
    "# CLI reference\n\n"
    "Generated from the typer app by `python docs/gen_cli.py > docs/cli-reference.md`; do not "
    "edit by hand. Notes on using the CLI: [cli.md](cli.md).\n"
)


def _names(param: Any) -> str:
    """`--flag/--no-flag`, `-q, --quiet/--no-quiet` or an argument's NAME."""
    if getattr(param, "param_type_name", "") == "argument":
        return param.name.upper()
    names = ", ".join(param.opts)
    if getattr(param, "secondary_opts", None):
        names += " / " + ", ".join(param.secondary_opts)
    return names


def _type(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    shown = param.display_type(ctx) if hasattr(param, "display_type") else None
    return str(shown or "").strip("<>") or "text"


def _default(param: Any) -> str:
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        return shown
    value = param.default
    if value is None or value == () or callable(value):
        return ""
    if isinstance(value, bool):
        if getattr(param, "secondary_opts", None):
            return (param.opts if value else param.secondary_opts)[0]
        return "on" if value else "off"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.replace("\\[", "[").replace("|", "\\|").split())


def _table(params: list[Any], ctx: Any) -> list[str]:
    rows = ["| name | type | default | help |", "|---|---|---|---|"]
    for param in params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        help_text = getattr(param, "help", None) or ""
        rows.append(
            f"| `{_names(param)}` | {_type(param, ctx)} | {_cell(_default(param))} | "
            f"{_cell(help_text)} |"
        )
    return rows


def _command(group: Any, name: str, ctx: Any) -> list[str]:
    command = group.commands[name]
    sub = command.make_context(name, [], resilient_parsing=True, parent=ctx)
    usage = " ".join(command.collect_usage_pieces(sub))
    lines = [f"## squeezeray {name}", "", f"`squeezeray {name} {usage}`", ""]
    help_text = (command.help or "").strip()
    lines += [help_text.replace("\b\n", ""), ""]
    return [*lines, *_table(command.get_params(sub), sub), ""]


def render() -> str:
    """The whole reference: the global options, then every command in the app's order."""
    import typer

    from orchestrator.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("squeezeray", [], resilient_parsing=True)
    lines = [HEADER, "## Global options", "", "`squeezeray [OPTIONS] COMMAND [ARGS]...`", ""]
    lines += [*_table(group.get_params(ctx), ctx), ""]
    for name in group.commands:  # type: ignore[attr-defined]
        lines += _command(group, name, ctx)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
