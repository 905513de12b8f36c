"""The orchestrator stays in small parts: no function (or method) of `orchestrator/` is longer
than `MAX_FUNCTION_LINES`, counted from its `def` line to its last line, docstring included
(issue 16: the sweep engine had grown a 248-line function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def long_functions(package: Path, limit: int) -> list[str]:
    """`path:line name (N lines)` for every function or method in `package` over `limit`
    (nested functions counted on their own as well as inside their parent)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    where = path.relative_to(package.parent)
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_orchestrator_function_over_the_limit() -> None:
    too_long = long_functions(ROOT / "orchestrator", MAX_FUNCTION_LINES)
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n"
        + "\n".join(too_long)
    )


def test_the_count_sees_nested_functions_and_methods(tmp_path: Path) -> None:
    """The check is not vacuous: a nested function and a method over the limit are found."""
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join("        x = 1" for _ in range(5))
    (package / "m.py").write_text(
        f"class C:\n    def method(self):\n{body}\n\n"
        f"def outer():\n    def inner():\n{body}\n    return inner\n"
    )
    names = sorted(entry.split()[1] for entry in long_functions(package, limit=4))
    assert names == ["inner", "method", "outer"]
