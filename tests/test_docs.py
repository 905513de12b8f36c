"""The docs say only what the CLI accepts: every `squeezeray ...` line in a shell block of the
README or docs/ parses with the real command line (its command, options and values), and every
Python block compiles. (Commands that need a running sweep are run end to end by the tests of
their commands; here the point is that the docs cannot drift from the CLI.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

try:  # typer >= 0.20 carries its own click
    from typer._click.exceptions import Exit as ClickExit
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import Exit as ClickExit
    from click.exceptions import UsageError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELL = {"bash", "sh", "shell", "console"}


def _blocks(lang: set[str]) -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in lang:
                line = text[: match.start()].count("\n") + 1
                found.append((path.relative_to(ROOT).as_posix(), line, match.group(2)))
    return found


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `squeezeray`) for each squeezeray invocation in a shell block."""
    commands = []
    for where, line, body in _blocks(SHELL):
        # Continuation lines joined; `$ ` prompts (console blocks) dropped.
        for offset, raw in enumerate(body.replace("\\\n", " ").splitlines()):
            text = raw.strip().removeprefix("$ ")
            for part in re.split(r"&&|&|;|\|", text):
                words = shlex.split(part, comments=True)
                if words and words[0] == "squeezeray":
                    commands.append((f"{where}:{line + 1 + offset}", words[1:]))
    return commands


def _parse(argv: list[str]) -> None:
    """Parse argv with the real click command, running nothing (click's resilient parsing off,
    so an unknown option or a bad value raises)."""
    from orchestrator.cli import app

    group: Any = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="squeezeray")
    if argv[0].startswith("-"):  # options of the group itself (--help, --version)
        group.parse_args(ctx, list(argv))
        return
    command = group.get_command(ctx, argv[0])
    assert command is not None, f"no command {argv[0]!r}"
    command.make_context(argv[0], list(argv[1:]), parent=ctx)


COMMANDS = _commands()


def test_the_docs_show_commands() -> None:
    # The scan finds what it should: the README's first sweep and the operations page's gc.
    argvs = [argv for _, argv in COMMANDS]
    assert ["validate", "search_spaces/quick.yaml"] in argvs
    assert any(argv[:1] == ["gc"] for argv in argvs)


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(where: str, argv: list[str]) -> None:
    try:
        _parse(argv)
    except (ClickExit, typer.Exit):
        pass  # --help, --version
    except UsageError as exc:
        pytest.fail(f"{where}: `squeezeray {shlex.join(argv)}` does not parse: {exc}")


PYTHON = _blocks({"python"})


@pytest.mark.parametrize(("where", "line", "body"), PYTHON, ids=[f"{w}:{n}" for w, n, _ in PYTHON])
def test_every_documented_python_block_compiles(where: str, line: int, body: str) -> None:
    compile(body, f"{where}:{line}", "exec")


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_every_relative_link_points_to_a_file() -> None:
    broken = []
    for path in DOCS:
        for match in LINK.finditer(path.read_text()):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken
