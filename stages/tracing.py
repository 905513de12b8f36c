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
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

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


_TORCH_DIR = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep


def _in_torch(filename: str) -> bool:
    """Whether `filename` is torch's own source (site-packages/torch/...)."""
    return os.path.realpath(filename).startswith(_TORCH_DIR)


@dataclass(frozen=True)
class _Conversion:
    """A data-dependent conversion met while tracing: `kind` (boolean, integer, ...), `where`
    (file:line `code`), and when that line is torch's own code, `owner` (the torch module or
    function it is in, e.g. "module torch.ao.nn.quantized.dynamic.modules.rnn.LSTM"), whether
    that code was handed a PackedSequence, and the first line outside torch that called it."""

    kind: str
    where: str
    owner: str | None = None
    packed: bool = False
    caller: str | None = None


def _torch_site(filename: str, lineno: int) -> tuple[str, bool, str | None]:
    """(owner, packed, caller) of a conversion at torch's `filename:lineno`, read from the
    Python stack at the warning: the frame running that line (its `self` when a module's),
    whether it holds a PackedSequence, and the innermost frame outside torch and this file."""
    frame: FrameType | None = sys._getframe(1)
    site = None
    while frame is not None and site is None:
        code = frame.f_code
        if code.co_filename == filename and frame.f_lineno == lineno:
            site = frame
        frame = frame.f_back
    if site is None:
        return "code", False, None
    owner = site.f_locals.get("self")
    if isinstance(owner, nn.Module):
        name = f"module {type(owner).__module__}.{type(owner).__qualname__}"
    else:
        name = f"function {site.f_globals.get('__name__', '?')}.{site.f_code.co_qualname}"
    packed = any(isinstance(v, PackedSequence) for v in site.f_locals.values())
    caller: FrameType | None = site
    while caller is not None and (
        _in_torch(caller.f_code.co_filename) or caller.f_code.co_filename == __file__
    ):
        caller = caller.f_back
    at = f"{caller.f_code.co_filename}:{caller.f_lineno}" if caller is not None else None
    return name, packed, at


def _message(what: str, found: _Conversion, fix: str) -> str:
    """The error of a data-dependent conversion: the user's forward to rewrite, or torch's own
    module that cannot be traced and what deploys it instead."""
    if found.owner is None:
        return (
            f"{what}: the model's forward uses a value computed from its inputs as a Python "
            f"value (a tensor converted to a Python {found.kind} at {found.where}), e.g. to "
            "branch with `if`; tracing records only what the example input did (one branch, "
            "one constant), so the exported model would silently compute something else for "
            "other inputs. Write it as tensor ops (e.g. torch.where(cond, a(x), b(x)) instead "
            f"of if/else), or {fix}"
        )
    packed = " given a PackedSequence" if found.packed else ""
    caller = f", called from {found.caller}" if found.caller else ""
    ways = [fix]
    if ".quantized." in found.owner:  # a torch.ao int8 module: ONNX Runtime's int8 instead
        ways.append(
            "quantize.mode: onnx_int8 (int8 in ONNX Runtime, which quantizes the exported "
            "float graph)"
        )
    if found.packed:
        ways.append("pass it a padded tensor instead of a PackedSequence")
    return (
        f"{what}: torch's own {found.owner}{packed} cannot be traced: its code converts a "
        f"tensor computed from the inputs to a Python {found.kind} (at {found.where}{caller}), "
        "so the trace would keep the example's value and the exported model would silently "
        "compute something else for other inputs. The line is torch's, not your forward's: "
        + "; or ".join(ways)
    )


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
    found: list[_Conversion] = []
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
            if _in_torch(filename):
                owner, packed, caller = _torch_site(filename, lineno)
                found.append(_Conversion(kind.group(1), where, owner, packed, caller))
            else:
                found.append(_Conversion(kind.group(1), where))

    with warnings.catch_warnings():
        # Inserted last, so it wins over an outer "ignore"; only this warning reaches `show`.
        warnings.filterwarnings(
            "always", message=_CONVERSION_WARNING.pattern, category=torch.jit.TracerWarning
        )
        warnings.showwarning = show
        yield
    if found:
        raise SqueezerayError(_message(what, found[0], fix))
