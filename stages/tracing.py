"""Tracing that refuses data-dependent Python control flow.

`torch.jit.trace` and the legacy (TorchScript-based) ONNX exporter record the ops one example
input runs. A `forward` that turns a tensor computed from its inputs into a Python bool
(`if x[:, 0].mean() > 0: return self.a(x)`) records only the branch the example took; the
traced model then computes another function on inputs that would take the other branch, with
no error (torch only warns: `TracerWarning: Converting a tensor to a Python boolean might cause
the trace to be incorrect`). The same holds for a Python int/float taken from the inputs'
values (`x.abs().max().item()` is recorded as the example's constant). `strict_trace` turns
those cases into a `SqueezerayError`.

A value that depends only on shapes (`int(x.size(1))`, `if x.shape[-1] != 13: raise ...`) or on
the weights (`if self.scale.sum() > 0`) is left alone: the tracer warns about it too, but it is
the same for every input of the traced shape. The rule is read from the trace graph at the
moment of the warning: the converted value's producers are followed back; reaching an input
tensor other than through `aten::size` makes it data-dependent.
"""

from __future__ import annotations

import linecache
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import torch

from stages.errors import SqueezerayError

_CONVERSION_WARNING = re.compile(r"Converting a tensor to a Python (boolean|integer|number|index)")


def _last_node(nodes: Any) -> torch._C.Node | None:
    """The node recorded last, inside nested blocks (the legacy ONNX exporter traces a
    wrapper, so the model's ops sit in a `prim::TracedModuleForward` block)."""
    found = list(nodes)
    while found:
        last = found[-1]
        blocks = list(last.blocks())
        inner = list(blocks[-1].nodes()) if blocks else []
        if not inner:
            return last
        found = inner
    return None


def _depends_on_inputs(graph: torch._C.Graph, node: torch._C.Node, inputs: int) -> bool:
    """Whether a trace-graph node's value is computed from the values of the model's first
    `inputs` tensor arguments: the graph's leading tensor inputs (the legacy ONNX exporter
    passes the weights as further graph inputs; `torch.jit.trace` reads them by attribute)."""
    tensor_inputs = [
        v.unique() for v in graph.inputs() if isinstance(v.type(), torch._C.TensorType)
    ]
    data = set(tensor_inputs[:inputs])
    seen: set[torch._C.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen or n.kind() in ("aten::size", "prim::GetAttr"):
            continue
        seen.add(n)
        for value in n.inputs():
            producer = value.node()
            if producer.kind() != "prim::Param":
                stack.append(producer)
            elif isinstance(value.type(), torch._C.TensorType) and (
                producer != graph.param_node() or value.unique() in data
            ):
                return True
    return False


@contextmanager
def strict_trace(
    what: str, *, inputs: int, fix: str = "keep export.runtime: eager"
) -> Iterator[None]:
    """Run a tracing block (`torch.jit.trace`, `torch.onnx.export(dynamo=False)`) and raise
    `SqueezerayError` after it when the traced `forward` branched in Python on a value computed
    from its inputs (see the module docstring). `what` names the export in the message, e.g.
    "export.runtime='torchscript'"; `inputs` is the number of tensor arguments the model is
    traced with; `fix` is the message's way out besides rewriting the model.
    Other warnings keep whatever filters the caller set.
    """
    found: list[str] = []
    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        kind = _CONVERSION_WARNING.search(str(message))
        if not (issubclass(category, torch.jit.TracerWarning) and kind):
            previous(message, category, filename, lineno, file, line)
            return
        state = torch._C._get_tracing_state()
        if state is None or found:
            return
        graph = state.graph()
        node = _last_node(graph.nodes())
        if node is not None and _depends_on_inputs(graph, node, inputs):
            code = linecache.getline(filename, lineno).strip()
            where = f"{filename}:{lineno}" + (f" `{code}`" if code else "")
            found.append(f"a tensor converted to a Python {kind.group(1)} at {where}")

    with warnings.catch_warnings():
        # Inserted last, so it wins over an outer "ignore"; only this warning reaches `show`.
        warnings.filterwarnings(
            "always", message=_CONVERSION_WARNING.pattern, category=torch.jit.TracerWarning
        )
        warnings.showwarning = show
        yield
    if found:
        raise SqueezerayError(
            f"{what}: the model's forward uses a value computed from its inputs as a Python "
            f"value ({found[0]}), e.g. to branch with `if`; tracing records only what the "
            "example input did (one branch, one constant), so the exported model would "
            "silently compute something else for other inputs. Write it as tensor ops (e.g. "
            f"torch.where(cond, a(x), b(x)) instead of if/else), or {fix}"
        )
