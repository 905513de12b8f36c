"""The sweep engine stays in small parts (issue 16 item 2), read from the source with `ast`.

No function over MAX_LINES lines (decorators, docstring and body included), no function or
class defined inside a function (a helper hidden in a long function is part of it), and every
module's docstring says its job. Packages join PACKAGES as they are split.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ORCHESTRATOR = Path(__file__).resolve().parents[2] / "orchestrator"
PACKAGES = ("engine", "store")
MAX_LINES = 60

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ORCHESTRATOR / package).rglob("*.py"))


def _functions(tree: ast.AST) -> list[Function]:
    return [n for n in ast.walk(tree) if isinstance(n, Function)]


def _length(f: Function) -> int:
    assert f.end_lineno is not None
    return f.end_lineno - f.lineno + 1


def _where(path: Path, node: ast.AST | None = None) -> str:
    line = f":{getattr(node, 'lineno', '')}" if node is not None else ""
    return f"{path.relative_to(ORCHESTRATOR.parent)}{line}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.stem)
def test_no_function_is_longer_than_the_limit(path: Path) -> None:
    long = [
        f"{_where(path, f)} {f.name}: {_length(f)} lines"
        for f in _functions(ast.parse(path.read_text()))
        if _length(f) > MAX_LINES
    ]
    assert not long, f"functions over {MAX_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.stem)
def test_no_function_hides_a_function_or_class(path: Path) -> None:
    nested = [
        f"{_where(path, inner)} {inner.name} inside {outer.name}"
        for outer in _functions(ast.parse(path.read_text()))
        for inner in ast.walk(outer)
        if inner is not outer and isinstance(inner, Function | ast.ClassDef)
    ]
    assert not nested, "lift these to module level:\n" + "\n".join(nested)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.stem)
def test_every_module_says_its_job(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 5, f"{_where(path)}: no docstring saying its job"


def test_the_checks_see_long_and_nested_functions() -> None:
    """The checks themselves, on a made-up module."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    tree = ast.parse(f"def long():\n{body}\n    def inner():\n        pass\n")
    (outer, inner) = _functions(tree)
    assert outer.name == "long" and _length(outer) > MAX_LINES
    assert inner.name == "inner"
