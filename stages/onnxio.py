"""ONNX: a torch model as ONNX bytes, and ONNX Runtime's int8 quantization of such bytes.

Used by stage `export` (`export.runtime=onnxruntime`) and stage `quantize`
(`quantize.mode=onnx_int8` / `onnx_static_int8`: the float model exported here, then
`ort_quantize_dynamic` / `ort_quantize_static`, weight-bearing ops only); the
bytes travel in `ModelCheckpoint.onnx` and run in `stages.runtime.OnnxPredictor`.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from stages.batches import (
    Inputs,
    LogitsOnly,
    batch_size,
    concat,
    input_names,
    logits_of,
    tensors,
)
from stages.errors import SqueezerayError
from stages.tracing import strict_trace

ONNX_INPUT = "x"
ONNX_OUTPUT = "logits"
BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"


@contextmanager
def quiet_logging() -> Iterator[None]:
    """Mute warnings and WARNING-level log lines (the ONNX exporter's 'torchvision is not
    installed', ORT's 'consider pre-processing') for the block; the previous state returns."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def onnx_input_names(count: int, *, model: nn.Module | None = None) -> list[str]:
    """The ONNX input names of a model called with `count` positional inputs.

    The names of `model.forward`'s first `count` positional parameters (`inspect.signature`)
    when it has that many; else "x" for one input, "x0", "x1", ... for several.
    """
    if model is not None:
        try:
            params = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):
            params = []
        positional = [
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != ONNX_OUTPUT
        ]
        if len(positional) >= count and len(set(positional[:count])) == count:
            return positional[:count]
    return [ONNX_INPUT] if count == 1 else [f"{ONNX_INPUT}{i}" for i in range(count)]


def model_input_names(example: Inputs, model: nn.Module | None) -> list[str]:
    """The model's input names as its card lists them and every written file takes them
    (ONNX graph inputs, TorchScript and torch.export arguments): a dict sample's keys in
    order (passed by keyword), else `onnx_input_names` of `model`'s forward."""
    keywords = input_names(example)
    return list(keywords) if keywords else onnx_input_names(len(tensors(example)), model=model)


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


# Whether the logits a model gave at another length are right: (the probe's inputs, its
# logits) -> bool. `varying_axes` without one takes any logits of the same shape.
LengthCheck = Callable[[tuple[torch.Tensor, ...], torch.Tensor], bool]


def _runs_at_other_length(
    model: nn.Module | torch.jit.ScriptModule,
    args: tuple[torch.Tensor, ...],
    members: list[int],
    axis: int,
    check: LengthCheck | None = None,
) -> bool:
    """Whether `model(*args)` still gives logits of the same shape when inputs `members`
    are cut by one along `axis` (or doubled there when their length is 1), and `check`
    accepts them."""
    probe = list(args)
    for i in members:
        t = args[i]
        probe[i] = (
            t.narrow(axis, 0, t.shape[axis] - 1) if t.shape[axis] > 1 else torch.cat([t, t], axis)
        )
    try:
        with torch.no_grad(), quiet_logging():
            expected = logits_of(model(*args))
            got = logits_of(model(*probe))
            return bool(got.shape == expected.shape) and (check is None or check(tuple(probe), got))
    except Exception:  # any failure at another length: the axis is fixed
        return False


def varying_axes(
    model: nn.Module | torch.jit.ScriptModule,
    args: tuple[torch.Tensor, ...],
    *,
    check: LengthCheck | None = None,
) -> list[list[int]]:
    """Per input, its non-batch axes left dynamic in the ONNX model (or, with `check`, those
    at which it gives logits `check` accepts: `stages.selfcheck.traced_axes`).

    Only integer inputs (token ids) can have one, and only where the eager model accepts
    another length: for each axis >= 1, the integer inputs of the same length there (ids and
    their attention mask) are cut by one together (doubled when the length is 1) and the
    model run again; the axis is dynamic for them when that works and the logits keep their
    shape. So a text model's sequence axis is dynamic, while categorical columns (an int64
    (B, 2) input indexed column by column, or flattened into a Linear) keep their width:
    another width fails or changes the output there. Float and bool inputs keep their shape.
    """
    axes: list[list[int]] = [[] for _ in args]
    ints = [i for i, t in enumerate(args) if _is_integer(t)]
    for axis in range(1, max((args[i].dim() for i in ints), default=1)):
        groups: dict[int, list[int]] = {}
        for i in ints:
            if args[i].dim() > axis:
                groups.setdefault(int(args[i].shape[axis]), []).append(i)
        for members in groups.values():
            if _runs_at_other_length(model, args, members, axis, check):
                for i in members:
                    axes[i].append(axis)
    return axes


def axis_names(
    names: list[str], args: tuple[torch.Tensor, ...], dynamic: list[list[int]]
) -> list[dict[int, str]]:
    """Per input, a readable name for each of its dynamic axes: axis 0 is "batch"; inputs
    that vary together (same axis, same length: ids and their mask) share one name,
    "sequence" for axis 1 when only one such group varies there, else "<input>_dim<axis>"
    after the group's first input."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, axes in enumerate(dynamic):
        for axis in axes:
            groups.setdefault((axis, int(args[i].shape[axis])), []).append(i)
    on_axis_1 = sum(1 for axis, _ in groups if axis == 1)
    result: list[dict[int, str]] = [{0: BATCH_AXIS} for _ in args]
    for (axis, _), members in groups.items():
        name = SEQUENCE_AXIS if axis == 1 and on_axis_1 == 1 else f"{names[members[0]]}_dim{axis}"
        for i in members:
            result[i][axis] = name
    return result


def _rename_symbols(proto: Any, readable: list[dict[int, str]]) -> None:
    """Give the dynamo exporter's symbolic axes (`s50`, `Min(16, s50)`) their readable names
    (`axis_names`) in every shape annotation of the graph: inputs, outputs, value_info."""
    mapping: dict[str, str] = {}
    for graph_input, axes in zip(proto.graph.input, readable, strict=False):
        dims = graph_input.type.tensor_type.shape.dim
        for axis, name in axes.items():
            if axis < len(dims) and dims[axis].dim_param:
                mapping.setdefault(dims[axis].dim_param, name)
    if not mapping:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in mapping) + r")\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: mapping[m.group(1)], dim.dim_param)


def to_onnx_bytes(
    model: nn.Module,
    example_input: Inputs,
    *,
    what: str = "export.runtime=onnxruntime",
    fix: str = "keep export.runtime: eager",
) -> bytes:
    """Serialized ONNX model of `model` (eval mode): one input per model argument, and one
    output, the logits (a tuple or `.logits` output is reduced to them). Named inputs (a dict,
    e.g. input_ids, attention_mask) keep their names and order and reach `model` by keyword;
    positional ones are named as in `model.forward` (see `onnx_input_names`). Dtypes as given,
    so int64 ids stay int64. Every input has a dynamic batch axis named "batch". Integer
    inputs' other axes (a sequence length) are dynamic too where the eager model runs at
    another length (`varying_axes`), named "sequence" (`axis_names`): with the dynamo
    exporter they are `Dim.AUTO`, so a model that needs a fixed length (e.g. a learned
    position table added whole) keeps the example's length instead of failing; with the
    legacy exporter they are named dynamic axes.

    The dynamo exporter comes first (it folds BatchNorm into Conv and was the fastest in ONNX
    Runtime here); a model it cannot export goes through the legacy exporter. That one
    traces, so it runs under `stages.tracing.strict_trace`: a `forward` that branches in
    Python on its inputs' values (which the dynamo exporter refuses with a data-dependent
    guard error) raises `SqueezerayError` instead of exporting one branch. `what` names the
    export in error messages, `fix` the way out besides rewriting the model.
    """
    keywords = input_names(example_input)
    wrapped = LogitsOnly(model.eval(), keywords).eval()
    if batch_size(example_input) < 2:  # torch.export specializes a size-1 dim: use >= 2 rows
        example_input = concat([example_input, example_input])
    args = tensors(example_input)
    names = model_input_names(example_input, model)
    dynamic = varying_axes(wrapped, args)
    readable = axis_names(names, args, dynamic)
    try:
        batch = torch.export.Dim(BATCH_AXIS)
        # LogitsOnly.forward(*args): the specs of all inputs nest in one tuple, for `args`.
        dynamic_shapes = (
            tuple({0: batch, **{axis: torch.export.Dim.AUTO for axis in axes}} for axes in dynamic),
        )
        with quiet_logging():
            program = torch.onnx.export(
                wrapped,
                args,
                dynamo=True,
                input_names=names,
                output_names=[ONNX_OUTPUT],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
        if program is None:
            raise RuntimeError("the dynamo exporter returned no program")
        proto = program.model_proto
        _rename_symbols(proto, readable)
        return bytes(proto.SerializeToString())
    except Exception as dynamo_error:
        buf = io.BytesIO()
        try:
            with (
                quiet_logging(),
                strict_trace(f"{what} (legacy ONNX exporter)", inputs=len(args), fix=fix),
            ):
                torch.onnx.export(
                    wrapped,
                    args,
                    buf,  # type: ignore[arg-type]  # file-like works (legacy exporter)
                    dynamo=False,
                    input_names=names,
                    output_names=[ONNX_OUTPUT],
                    dynamic_axes={
                        **dict(zip(names, readable, strict=True)),
                        ONNX_OUTPUT: {0: BATCH_AXIS},
                    },
                )
        except SqueezerayError:
            raise
        except Exception as legacy_error:
            raise SqueezerayError(
                f"{what}: ONNX export failed with both exporters "
                f"(dynamo: {dynamo_error}; legacy: {legacy_error}); {fix}"
            ) from legacy_error
        return buf.getvalue()


def ort_quantize_dynamic(onnx_bytes: bytes) -> bytes:
    """ONNX Runtime dynamic quantization (per-tensor QInt8 weights) of an ONNX model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(onnx_bytes)
    # Intermediate shape annotations are hints, and some exporters leave stale ones after
    # structured pruning (torch 2.11's dynamo exporter kept a pruned Linear's old width, and
    # ORT's shape inference then refused the model): drop them, ORT infers them again.
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp, quiet_logging():
        out = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(model, out, weight_type=QuantType.QInt8)
        with open(out, "rb") as f:
            return f.read()


WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1}  # op type -> index of its weight input


def weight_nodes(graph: Any) -> list[str]:
    """Names of the nodes of ONNX `graph` that carry a weight: a MatMul/Gemm/Conv whose
    weight input (`WEIGHT_OPS`) is constant (an initializer, a Constant, or computed from
    constants only, e.g. a transposed initializer). Activation x activation MatMuls
    (attention's scores and its weighted sum) are not among them. Unnamed nodes get a name
    (`ort_quantize_static` selects nodes by name)."""
    constant = {t.name for t in graph.initializer}
    found = []
    for i, node in enumerate(graph.node):  # ONNX nodes are in topological order
        if not node.name:
            node.name = f"squeezeray_{node.op_type}_{i}"
        if node.op_type == "Constant" or (
            node.input and all(not name or name in constant for name in node.input)
        ):
            constant.update(node.output)
        weight = WEIGHT_OPS.get(node.op_type)
        if weight is not None and len(node.input) > weight and node.input[weight] in constant:
            found.append(node.name)
    return found


def ort_quantize_static(onnx_bytes: bytes, calibration: list[tuple[torch.Tensor, ...]]) -> bytes:
    """ONNX Runtime static quantization in QDQ format of an ONNX model.

    Source: `onnxruntime.quantization.quantize_static` (QuantFormat.QDQ: QuantizeLinear/
    DequantizeLinear pairs around each quantized op, which ORT's CPU provider fuses into int8
    kernels), int8 per-channel weights, uint8 activations whose ranges come from running the
    float model on `calibration` (batches of the model's positional inputs, e.g. train
    batches) with ORT's MinMax calibrator.

    Only the weight-bearing ops are quantized (`weight_nodes`: MatMul/Gemm/Conv with a
    constant weight), as `quantize_dynamic` does by default (`MatMulConstBOnly`). Left to its
    defaults, `quantize_static` puts Q/DQ on every op it supports, attention's
    `scores + mask` Add among them: a Hugging Face model's mask holds `finfo.min`, so that
    tensor's uint8 scale was about 1e36, every attention score rounded to one value and
    RoBERTa/BERT fell to chance accuracy (new user F1). A graph with no such op comes back
    unchanged (the quantize stage then reports that nothing is int8).
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load_from_string(onnx_bytes)
    del model.graph.value_info[:]  # stale shape hints after pruning (see ort_quantize_dynamic)
    names = [i.name for i in model.graph.input]
    nodes = weight_nodes(model.graph)
    if not nodes:
        return onnx_bytes

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        """Feeds the calibration batches to ORT's calibrator, one dict of inputs at a time."""

        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            return {
                name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in zip(names, batch, strict=True)
            }

    with tempfile.TemporaryDirectory() as tmp, quiet_logging():
        source = os.path.join(tmp, "float.onnx")
        onnx.save(model, source)
        out = os.path.join(tmp, "int8.onnx")
        quantize_static(
            source,
            out,
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(WEIGHT_OPS),
            nodes_to_quantize=nodes,
            extra_options={"MatMulConstBOnly": True},
        )
        with open(out, "rb") as f:
            return f.read()
