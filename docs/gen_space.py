"""Render the search-space reference (every `stage.param` a space may set) as Markdown.

    python docs/gen_space.py > docs/space-reference.md

Read from the stages themselves, so it cannot drift: each stage's params dataclass gives the
names, types and defaults; the comment beside a field its meaning; the `check_range`,
`check_int` and `check_choice` calls of its `__post_init__` the accepted values. `render()`
returns the text (a docs test compares it with the committed file).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEADER = (
    "# Search-space reference\n\n"
    "Generated from the stages' params dataclasses by `python docs/gen_space.py > "
    "docs/space-reference.md`; do not edit by hand. Every key is `stage.param` under `params:` "
    "of a search space (a plain value fixes it; `{choice: [...]}`, `{uniform: [lo, hi]}`, "
    "`{loguniform: [lo, hi]}` or `{int: [lo, hi], step: k}` searches it). Stages run in this "
    "order; a space's `pipeline` lists the ones it uses.\n"
)


def _comments(cls: type) -> dict[str, str]:
    """{field: the comment on its line} from the class source."""
    out: dict[str, str] = {}
    source = textwrap.dedent(inspect.getsource(cls))
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            out[match.group(1)] = match.group(2).strip()
    return out


def _interval(keywords: dict[str, Any]) -> str:
    low, high = keywords.get("low"), keywords.get("high")
    parts = []
    if low is not None:
        parts.append(f"{'>=' if keywords.get('low_inclusive', True) else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if keywords.get('high_inclusive', True) else '<'} {high:g}")
    return " and ".join(parts)


def _accepted(cls: type, module: Any) -> dict[str, str]:
    """{param: accepted values} from the check calls of `cls.__post_init__`."""
    post = getattr(cls, "__post_init__", None)
    if post is None:
        return {}
    out: dict[str, str] = {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(post)))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        param = str(node.args[0].value).rpartition(".")[2]
        try:
            keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            continue
        if node.func.id == "check_range":
            out[param] = _interval(keywords)
        elif node.func.id == "check_int":
            out[param] = "integer " + _interval(keywords)
        elif node.func.id == "check_choice" and len(node.args) > 2:
            # the choices are a name (or tuple) of the stage's own module: look it up there
            expression = compile(ast.Expression(node.args[2]), "<choices>", "eval")
            choices = eval(expression, vars(module))
            out[param] = ", ".join(f"`{c}`" for c in choices)
    return out


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint)).replace("typing.", "")


def _stage(name: str, spec: Any) -> list[str]:
    cls = spec.params
    module = importlib.import_module(cls.__module__)
    doc = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
    hints = typing.get_type_hints(cls)
    comments, accepted = _comments(cls), _accepted(cls, module)
    lines = [f"## {name}", "", doc, "", "| key | type | default | accepted | meaning |",
             "|---|---|---|---|---|"]  # fmt: skip
    for field in dataclasses.fields(cls):
        default = "" if field.default is dataclasses.MISSING else repr(field.default)
        lines.append(
            f"| `{name}.{field.name}` | {_type_name(hints.get(field.name))} | `{default}` | "
            f"{accepted.get(field.name, '')} | {comments.get(field.name, '')} |".replace("||", "|")
        )
    return [*lines, ""]


def render() -> str:
    """Every stage, in pipeline order, with every parameter."""
    from stages import stage_registry

    lines = [HEADER]
    for name, spec in stage_registry().items():
        lines += _stage(name, spec)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
