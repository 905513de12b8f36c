"""Deprecated `torch.ao.quantization` lives in one module only (issue 23).

PyTorch 2.13 deprecates it (and slates it for deletion); squeezeray keeps its eager dynamic int8
(`quantize.mode=dynamic_int8`, the fastest eager CPU int8 measured here) behind
`stages/torch_ao.py`, and every other module uses torchao or PT2E. This test fails when another
module of the product imports it, directly or through `from torch.ao import quantization`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"stages/torch_ao.py"}


def _imports_ao_quantization(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name.startswith("torch.ao.quantization") for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("torch.ao.quantization"):
                return True
            if node.module == "torch.ao" and any(a.name == "quantization" for a in node.names):
                return True
        elif isinstance(node, ast.Attribute) and ast.unparse(node).startswith(
            "torch.ao.quantization"
        ):
            return True
    return False


def test_only_stages_torch_ao_imports_torch_ao_quantization() -> None:
    offenders = []
    for package in ("stages", "orchestrator", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative not in ALLOWED and _imports_ao_quantization(ast.parse(path.read_text())):
                offenders.append(relative)
    assert offenders == []
    assert _imports_ao_quantization(ast.parse((ROOT / "stages/torch_ao.py").read_text()))


def test_the_check_sees_each_import_form() -> None:
    for source in (
        "import torch.ao.quantization",
        "from torch.ao.quantization import quantize_dynamic",
        "from torch.ao.quantization.quantize_fx import prepare_fx",
        "from torch.ao import quantization",
        "torch.ao.quantization.quantize_dynamic(m)",
    ):
        assert _imports_ao_quantization(ast.parse(source)), source
    assert not _imports_ao_quantization(ast.parse("from torchao.quantization import quantize_"))
