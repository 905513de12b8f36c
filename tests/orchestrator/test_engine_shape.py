"""The orchestrator stays in named parts (issue 16 item 2), read from the source with `ast`.

Beside the length limit every orchestrator function keeps (tests/test_code_shape.py): no
function or class defined inside a function in PACKAGES (a helper hidden in a long function is
part of it, and a class defined in a function is pickled by value with Tune's state), and every
module's docstring says its job.
"""

from __future__ import annotations

import ast
from pathlib import Path

ORCHESTRATOR = Path(__file__).resolve().parents[2] / "orchestrator"
PACKAGES = ("space", "engine", "store", "query", "nightly")

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ORCHESTRATOR / package).rglob("*.py"))


def hidden_definitions(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(outer function, inner name, line) for every function or class defined in a function."""
    return [
        (outer.name, inner.name, inner.lineno)
        for outer in ast.walk(tree)
        if isinstance(outer, Function)
        for inner in ast.walk(outer)
        if inner is not outer and isinstance(inner, Function | ast.ClassDef)
    ]


def test_no_engine_function_hides_a_function_or_class() -> None:
    hidden = [
        f"{path.relative_to(ORCHESTRATOR.parent)}:{line} {inner} inside {outer}"
        for path in _modules()
        for outer, inner, line in hidden_definitions(ast.parse(path.read_text()))
    ]
    assert not hidden, "lift these to module level:\n" + "\n".join(hidden)


def test_every_engine_module_says_its_job() -> None:
    undocumented = [
        str(path.relative_to(ORCHESTRATOR.parent))
        for path in _modules()
        if len((ast.get_docstring(ast.parse(path.read_text())) or "").split()) < 5
    ]
    assert not undocumented, "modules without a docstring saying their job:\n" + "\n".join(
        undocumented
    )


def test_the_check_sees_nested_functions_and_classes() -> None:
    """The check is not vacuous: a nested function and a class in a method are found; a
    method of a module-level class is not."""
    tree = ast.parse(
        "def outer():\n    def inner():\n        pass\n\n"
        "class Fine:\n    def method(self):\n        class Local:\n            pass\n"
    )
    assert hidden_definitions(tree) == [("outer", "inner", 2), ("method", "Local", 7)]
