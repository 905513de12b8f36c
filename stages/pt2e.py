"""Static int8 and QAT through PT2E: `torch.export`, torchao's X86 Inductor quantizer, convert.

Source: torchao's PT2E flow (`torchao.quantization.pt2e.quantize_pt2e.prepare_pt2e` /
`prepare_qat_pt2e` / `convert_pt2e` with `X86InductorQuantizer`), the replacement PyTorch 2.13
names for the deprecated FX graph mode (`prepare_fx`/`convert_fx`). `torch.export` captures the
model's whole forward (Hugging Face models, shape-dependent Python and keyword inputs included),
so no FX symbolic tracing is needed.

The converted model is a `torch.fx.GraphModule` whose Linear/Conv weights are int8 constants
(`_frozen_param<i>`, per-channel `_scale_<i>`/`_zero_point_<i>` buffers) dequantized on the fly,
and whose activations pass through quantize/dequantize pairs (per-tensor uint8). Eager, this
graph is slower than float (it dequantizes in Python ops); `torch.compile` (Inductor) fuses the
pairs into int8 kernels, which is the deployment path torchao intends for CPU (runtime
`compiled`, `stages.runtime`).

Checkpoints: weights and weight scales are in the state_dict; activation scales and zero points
are literal arguments of graph nodes, not tensors, so they travel in the recipe as
`activation_qparams` ([[node name, scale, zero point], ...], JSON-safe).
`rebuild_pt2e` exports and prepares the fresh float model the same way, converts it, then sets
those node arguments (`apply_activation_qparams`) and the state_dict loads over it.

A model of positional inputs is exported wrapped in `_Logits` (its output reduced to the logits
tensor: a user's output dataclass needs no pytree registration; state_dict keys then start with
`model.`); a model of named inputs (a Hugging Face model) is exported itself, called by
keyword. Before export, attention becomes
`stages.attention.LinearAttention` and Transformer encoder layers take their regular path
(`restore_slow_path`), so the quantizer sees their Linears.
"""

from __future__ import annotations

import copy
import types
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from stages.attention import convert_attention
from stages.batches import Inputs, call, input_names, logits_of, named_logits, tensors
from stages.errors import SqueezerayError
from stages.hfheads import no_cache
from stages.layers import restore_slow_path
from stages.onnxio import model_input_names

_QDQ_TARGETS = ("quantize_per_tensor.default", "dequantize_per_tensor.default")


def _call(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) of the model call on `example` (a tensor, a tuple, or a dict of named
    inputs)."""
    if isinstance(example, Mapping):
        return (), dict(example)
    return tensors(example), {}


class _Logits(nn.Module):
    """`model` called with positional inputs, returning only its logits tensor: what
    torch.export captures for a model of positional inputs. Its one child is `model`, so
    state_dict keys start with `model.`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(*args))


def _dynamic_shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`dynamic_shapes` with every tensor input's batch axis (0) dynamic, and for named inputs
    (a Hugging Face model's input_ids, attention_mask, ...) the sequence axis (1) too, so the
    int8 model runs at any length as the float and ONNX exports do. `Dim.AUTO`: an axis the
    model needs fixed (a ViT's channels, a model of one length) specializes instead of
    failing."""
    if kwargs:  # the user's forward itself is exported: specs by its parameter names
        return {k: _axes(v, named=True) for k, v in kwargs.items()}
    return (tuple(_axes(a, named=False) for a in args),)  # _Logits.forward(*args): one each


def _axes(value: Any, *, named: bool) -> Any:
    """One input's dynamic axes: batch (0), and sequence (1) for a named input."""
    if not isinstance(value, torch.Tensor):
        return None
    auto = torch.export.Dim.AUTO
    return {0: auto, 1: auto} if named and value.dim() >= 2 else {0: auto}


# What a process must import before it loads a PT2E model's model.pt2 (torch.export.load) or
# model.pt (torch.jit.load): the module that registers the `quantized_decomposed` ops the int8
# graph calls (torchao's PT2E package imports torch's op library).
LOAD_IMPORT = "import torchao.quantization.pt2e"


def program_bytes(model: nn.Module, example: Inputs) -> bytes:
    """A converted PT2E model (`convert`, `rebuild_pt2e`) as the bytes of a `model.pt2` file
    (`torch.export.save` of it re-exported): positional tensor inputs (named inputs in
    `example`'s key order), logits out, the batch axis dynamic and, for named inputs, the
    sequence axis too. Unlike a TorchScript trace of the graph, which fixes the example's
    sizes, it runs at any size the model accepts. Loading needs `LOAD_IMPORT` first (the
    int8 ops are torchao's); then `torch.export.load(path).module()(*tensors)`.
    Raises SqueezerayError when torch.export cannot capture the graph again."""
    import io

    names = input_names(example)
    args = tensors(example)
    # the program's inputs named as the card names them (`model.forward`'s, a dict's keys)
    wrapped = named_logits(model.eval(), names, model_input_names(example, model)).eval()
    axes = tuple(_axes(a, named=bool(names)) for a in args)
    shapes = axes if wrapped.arguments else (axes,)  # one per parameter, or all in `*args`
    try:
        program = torch.export.export(wrapped, args, dynamic_shapes=shapes)
    except Exception as exc:  # said with the files that do deploy the row
        raise SqueezerayError(
            f"model.pt2: torch.export could not capture the int8 graph again "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "deploy the row with checkpoint.pt (build_model) or export.runtime=compiled"
        ) from exc
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def program_shapes(data: bytes) -> list[list[int | str]]:
    """The shape of each user input of a `model.pt2` file (`program_bytes`), as the program
    accepts it: an axis torch.export kept dynamic is "batch" (axis 0) or "sequence" (any
    other), a specialised one its size (`Dim.AUTO` keeps a ViT's 3 channels fixed, so a
    named image input is ["batch", 3, 32, 32], a text input ["batch", "sequence"])."""
    import io

    program = torch.export.load(io.BytesIO(data))
    user = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [
        [
            int(d) if isinstance(d, int) else ("batch" if axis == 0 else "sequence")
            for axis, d in enumerate(placeholders[name].meta["val"].shape)
        ]
        for name in user
    ]


def _quantizer(*, qat: bool) -> Any:
    """torchao's X86InductorQuantizer with its default static (or QAT) config, its `annotate`
    followed by `drop_non_float_annotations`."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    class _FloatOnly(xiq.X86InductorQuantizer):  # type: ignore[misc]
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            super().annotate(model)
            drop_non_float_annotations(model)
            return model

    quantizer = _FloatOnly()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=qat))
    return quantizer


_ANNOTATION = "quantization_annotation"  # torchao's node.meta key (Q_ANNOTATION_KEY)


def _floating(node: Any) -> bool:
    """Whether every tensor `node` gives (its `meta["val"]`) is floating point; a node
    without tensor metadata counts as floating (nothing says otherwise)."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    values = val if isinstance(val, (list, tuple)) else (val,)
    return all(v.is_floating_point() for v in values if isinstance(v, torch.Tensor))


def drop_non_float_annotations(gm: torch.fx.GraphModule) -> list[str]:
    """Remove the quantization annotation of each node of annotated `gm` that would observe a
    tensor that is not floating point (an annotated input, or its output when that is
    annotated); return those nodes' names.

    The X86 quantizer annotates every same-shape `aten.mul.Tensor` whatever its dtype:
    RoBERTa (XLM-R, CamemBERT, ...) builds position ids from `input_ids` with int32
    arithmetic (`(cumsum(mask) + past) * mask`), and the HistogramObserver put on that mul
    failed calibration (`"histogram_cpu" not implemented for 'Int'`); QAT's fake quantizer
    cannot quantize integers either. Integer ops stay integer ops. The whole annotation goes
    (not just the integer edge): the quantizer's shared specs refer to edges of the same node,
    so no other node's annotation points at what is removed.
    """
    dropped = []
    for node in gm.graph.nodes:
        annotation = node.meta.get(_ANNOTATION)
        if annotation is None:
            continue
        observed = list(annotation.input_qspec_map)
        if annotation.output_qspec is not None:
            observed.append(node)
        if not all(_floating(n) for n in observed):
            del node.meta[_ANNOTATION]
            dropped.append(node.name)
    return dropped


def export_for_quantization(model: nn.Module, example: Inputs, *, qat: bool, what: str) -> Any:
    """The model's forward captured by `torch.export` (train mode for QAT), as a GraphModule.

    `example`: a batch of at least 2 rows (a batch of 1 would specialize the batch axis).
    Raises SqueezerayError naming `what` when the model does not export.
    """
    model = copy.deepcopy(model)
    args, kwargs = _call(example)
    if not kwargs:  # logits out: a user's output class needs no pytree registration
        model = _Logits(model)
    convert_attention(model)  # attention projections as Linears, which the quantizer annotates
    restore_slow_path(model)  # the encoder fast path is one opaque op the quantizer cannot see
    model.train(qat)
    try:
        # GPT-2 returns its key/value cache (a DynamicCache, no pytree) unless use_cache is off
        with no_cache(model):
            program = torch.export.export(
                model, args, kwargs, dynamic_shapes=_dynamic_shapes(args, kwargs)
            )
    except Exception as exc:  # any export failure is this model's limit, said with the fix
        raise SqueezerayError(
            f"{what}: torch.export could not capture the model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); use quantize.mode=dynamic_int8, "
            "int8_weight_only or onnx_int8 for this model"
        ) from exc
    exported = program.module()
    _one_partition_per_activation_call(exported)
    return exported


_SINGLE_NODE_ACTIVATIONS = ("ReLU", "ReLU6", "Hardtanh", "LeakyReLU", "GELU", "SiLU")


def _one_partition_per_activation_call(gm: torch.fx.GraphModule) -> None:
    """Give each call of a reused activation module (ResNet's one `self.relu` after the conv
    and after the residual add) its own module path.

    The quantizer groups nodes into source partitions by the innermost entry of each node's
    `nn_module_stack` (module path, class); the two calls of one module share the path, so
    their partition has two outputs, which X86InductorQuantizer's conv-add-relu annotation
    refuses ('Input partition has more than one output node'). torch.export already tells the
    calls apart in the entry's key (`...relu@1`); that suffix is copied into the path. An
    activation module's call is a single node, so nothing else changes.
    """
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (path, cls) = list(stack.items())[-1]
        call = key.rpartition("@")[2] if "@" in key else ""
        name = cls.rpartition(".")[2] if isinstance(cls, str) else getattr(cls, "__name__", "")
        if call.isdigit() and name in _SINGLE_NODE_ACTIVATIONS:
            stack = dict(stack)
            stack[key] = (f"{path}@{call}", cls)
            node.meta["nn_module_stack"] = stack


_PATTERNS: dict[Any, torch.fx.GraphModule] = {}
_MEMO_INSTALLED: list[bool] = []


def _pattern_key(pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: Any) -> Any:
    """What decides the graph torchao exports for a replacement pattern (a function in its
    `WrapperModule`): the function's code and the values it closes over (the conv function,
    its flags), the example inputs' shapes and dtypes (their random values are not in the
    graph) and the non-tensor arguments. None: a pattern this does not recognise (another
    module, an unhashable closure), exported afresh."""
    from torchao.quantization.pt2e.export_utils import WrapperModule

    if type(pattern) is not WrapperModule or isinstance(pattern.fn, nn.Module):
        return None
    fn: Any = pattern.fn
    if not hasattr(fn, "__code__"):
        return None

    def sig(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), str(value.dtype))
        return value

    try:
        key = (
            fn.__code__,
            tuple(cell.cell_contents for cell in fn.__closure__ or ()),
            fn.__defaults__,
            tuple(sig(x) for x in example_inputs),
            is_cuda,
            tuple(sorted((k, sig(v)) for k, v in kwargs.items())),
        )
        hash(key)
    except (TypeError, ValueError):
        return None
    return key


def _memoize_pattern_exports() -> None:
    """torchao rewrites PT2E graphs by matching small patterns, each `torch.export`ed anew on
    every call (~0.3 s each): QAT's Conv+BatchNorm fuse and fold trace ~130 of them per
    prepare/convert of any model with a BatchNorm (~40 s on 2 cores), and every train/eval
    switch of an exported graph 6 more. The graphs depend only on the pattern and the example
    shapes, so this process exports each once and hands out copies (callers edit them)."""
    if _MEMO_INSTALLED:
        return
    from torchao.quantization.pt2e import qat_utils, utils

    original = utils._get_aten_graph_module_for_pattern

    def memoized(
        pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any
    ) -> torch.fx.GraphModule:
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return original(pattern, example_inputs, is_cuda, **kwargs)  # type: ignore[no-any-return]
        if key not in _PATTERNS:
            _PATTERNS[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_PATTERNS[key])

    utils._get_aten_graph_module_for_pattern = memoized
    qat_utils._get_aten_graph_module_for_pattern = memoized  # bound at its import
    _skip_conv_patterns_without_convs(qat_utils)
    _MEMO_INSTALLED.append(True)


def _has_conv(m: torch.fx.GraphModule) -> bool:
    return any(n.op == "call_function" and "conv" in str(n.target) for n in m.graph.nodes)


def _skip_conv_patterns_without_convs(qat_utils: Any) -> None:
    """QAT's Conv+BatchNorm fuse (prepare) and fold (convert) match conv patterns only: on a
    graph with no convolution (an MLP with BatchNorm1d) nothing can match, and each helper then
    does only its graph clean-up, done here without exporting its patterns (~40 s the first
    time in a process). Graphs with a convolution take torchao's own path."""
    fuse, fold = qat_utils._fuse_conv_bn_qat_helper, qat_utils._fold_conv_bn_qat_helper

    def fuse_helper(m: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        if _has_conv(m):
            return fuse(m, *args, **kwargs)
        m.graph.eliminate_dead_code()
        m.recompile()
        return m

    def fold_helper(m: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        if _has_conv(m):
            return fold(m, *args, **kwargs)
        m.graph.eliminate_dead_code()
        m.recompile()
        qat_utils._duplicate_dequantize_node(m)
        m.recompile()
        qat_utils._remove_extra_dequantize(m)
        m.graph.eliminate_dead_code()
        m.recompile()
        return m

    qat_utils._fuse_conv_bn_qat_helper = fuse_helper
    qat_utils._fold_conv_bn_qat_helper = fold_helper


def prepare(model: nn.Module, example: Inputs, *, qat: bool, what: str) -> nn.Module:
    """The exported model with observers (static) or fake quantization (QAT, in train mode;
    `.train()`/`.eval()` work on it, `allow_train_eval`)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    _memoize_pattern_exports()
    exported = export_for_quantization(model, example, qat=qat, what=what)
    if qat:
        prepared = prepare_qat_pt2e(exported, _quantizer(qat=True))
    else:
        prepared = prepare_pt2e(exported, _quantizer(qat=False))
    allow_train_eval(prepared, training=qat)
    return prepared.train(qat)  # type: ignore[no-any-return]


def _train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import (
        disable_observer,
        enable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    if self.meta.get(_MODE) == mode:  # the graph is in that mode: rewriting costs seconds
        return self
    if mode:
        move_exported_model_to_train(self)  # type: ignore[arg-type]
    else:
        move_exported_model_to_eval(self)  # type: ignore[arg-type]
    _switch_attention_dropout(self, training=mode)
    # QAT's fake quantizers observe in any mode: evaluation would move the activation ranges
    # (validation data calibrating the model, each row's logits depending on what ran before).
    # Only fake quantizers are switched; static_int8's observers calibrate in eval mode.
    self.apply(enable_observer if mode else disable_observer)
    self.meta[_MODE] = mode
    self.training = mode
    return self


_SDPA = "aten.scaled_dot_product_attention.default"
_DROPOUT_P = 4  # scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, ...)
_TRAIN_DROPOUT = "squeezeray_train_dropout_p"  # node.meta key: the p of the train-mode export


def _switch_attention_dropout(gm: torch.fx.GraphModule, *, training: bool) -> None:
    """Set the attention dropout of `gm`'s scaled_dot_product_attention calls: 0 in eval, the
    exported p in train. A model exported in train mode (QAT) has its attention dropout
    (a Hugging Face model passes `attention_probs_dropout_prob` only when training) baked
    into the call as a number, which torchao's `move_exported_model_to_eval` (it rewrites
    `aten.dropout` only) leaves on: the int8 model then gave other logits at every call."""
    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function" or str(node.target) != _SDPA:
            continue
        args = list(node.args)
        if len(args) > _DROPOUT_P:
            node.meta.setdefault(_TRAIN_DROPOUT, args[_DROPOUT_P])
            args[_DROPOUT_P] = node.meta[_TRAIN_DROPOUT] if training else 0.0
            node.args = tuple(args)
            changed = True
        elif "dropout_p" in node.kwargs:
            node.meta.setdefault(_TRAIN_DROPOUT, node.kwargs["dropout_p"])
            p = node.meta[_TRAIN_DROPOUT] if training else 0.0
            node.kwargs = {**node.kwargs, "dropout_p": p}
            changed = True
    if changed:
        gm.recompile()


def _eval(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
    return _train(self, False)


# gm.meta key: the mode the exported graph's ops are in (meta survives copy.deepcopy)
_MODE = "squeezeray_graph_training"


def _copied(copy_: torch.fx.GraphModule) -> None:
    """GraphModule deepcopy hook: a copy is built afresh (its `train`/`eval` would be
    nn.Module's, which leave the graph's ops as they are); give it the switch again."""
    allow_train_eval(copy_, training=bool(copy_.meta.get(_MODE)))


def allow_train_eval(gm: torch.fx.GraphModule, *, training: bool) -> None:
    """Make `.train()`/`.eval()` of an exported GraphModule switch its dropout and BatchNorm
    ops (torchao's `move_exported_model_to_train/eval`) and its QAT fake quantizers' observers
    (torchao's `enable_observer`/`disable_observer`: on in train, off in eval) and return the
    module, as `nn.Module`'s do (exported modules refuse them; torchao's
    `allow_exported_model_train_eval` returns None), so training and evaluation code that calls
    them works unchanged. `training`: the mode the graph was exported in; switching to the mode
    it is already in does nothing (each rewrite re-traces patterns: seconds). A
    `copy.deepcopy` of `gm` keeps the switch and the mode."""
    gm.meta[_MODE] = training
    gm.training = training
    gm.train = types.MethodType(_train, gm)  # type: ignore[method-assign]
    gm.eval = types.MethodType(_eval, gm)  # type: ignore[method-assign]
    if _copied not in gm._deepcopy_hooks:
        gm._register_deepcopy_hook(_copied)


def convert(prepared: nn.Module) -> nn.Module:
    """The int8 GraphModule of a `prepare` result (eval mode), without the float weights the
    int8 constants replaced."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    _memoize_pattern_exports()
    prepared.eval()
    converted = convert_pt2e(prepared)  # type: ignore[arg-type]
    _drop_unused_state(converted)
    allow_train_eval(converted, training=False)
    return converted.eval()


def _drop_unused_state(gm: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers no graph node reads (the float weights that convert
    replaced by `_frozen_param`s, folded BatchNorm's), so size and counts are the int8 model's."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        if name in used:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if leaf in owner._parameters:
            del owner._parameters[leaf]
        elif leaf in owner._buffers:
            del owner._buffers[leaf]
    gm.delete_all_unused_submodules()


def _qdq_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [
        n
        for n in gm.graph.nodes
        if n.op == "call_function" and str(n.target).endswith(_QDQ_TARGETS)
    ]


def activation_qparams(gm: torch.fx.GraphModule) -> list[list[Any]]:
    """[[node name, scale (float), zero point (int)], ...] of every per-tensor (activation)
    quantize/dequantize node of a converted model, JSON-safe, in graph order."""
    return [[n.name, float(n.args[1]), int(n.args[2])] for n in _qdq_nodes(gm)]  # type: ignore[arg-type]


def apply_activation_qparams(gm: torch.fx.GraphModule, qparams: list[list[Any]]) -> None:
    """Set the scale and zero point of each node named in `qparams` (`activation_qparams` of
    the model this one rebuilds); raises SqueezerayError when the graphs differ."""
    nodes = {n.name: n for n in _qdq_nodes(gm)}
    if set(nodes) != {str(q[0]) for q in qparams}:
        raise SqueezerayError(
            "the rebuilt PT2E graph has other activation quantization nodes than the "
            f"checkpoint's recipe ({len(nodes)} vs {len(qparams)}): the model or torch/torchao "
            "changed since the checkpoint was written; delete it and let squeezeray recompute it"
        )
    for name, scale, zero_point in qparams:
        node = nodes[str(name)]
        node.args = (node.args[0], float(scale), int(zero_point), *node.args[3:])
    gm.recompile()


# Converted structures by float model structure: rebuilding a PT2E model re-runs export,
# prepare and convert, and convert alone took 81 s for QAT on the digits ConvNet here (it
# folds Conv+BN by matching many exported patterns). The structure depends only on the float
# model's structure, so a process keeps the last few and copies them.
_TEMPLATES: OrderedDict[str, nn.Module] = OrderedDict()
_TEMPLATES_KEPT = 4


def _structure_key(model: nn.Module, example: Inputs, *, qat: bool) -> str:
    """The float model's module tree, parameter shapes and the example's shapes and dtypes."""
    args, kwargs = _call(example)
    inputs = [(tuple(t.shape), str(t.dtype)) for t in (*args, *kwargs.values())]
    shapes = [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return repr((qat, repr(model), shapes, inputs, sorted(kwargs)))


def remember(model: nn.Module, example: Inputs, converted: nn.Module, *, qat: bool) -> None:
    """Keep a copy of `converted` (the PT2E result of float `model`) as the template that
    `rebuild_pt2e` copies for models of the same structure in this process."""
    key = _structure_key(model, example, qat=qat)
    _TEMPLATES[key] = copy.deepcopy(converted)
    _TEMPLATES.move_to_end(key)
    while len(_TEMPLATES) > _TEMPLATES_KEPT:
        _TEMPLATES.popitem(last=False)


@torch.no_grad()
def rebuild_pt2e(
    model: nn.Module, example: Inputs, qparams: list[list[Any]], *, qat: bool
) -> nn.Module:
    """The converted structure of `model` (static or QAT), activation qparams set from
    `qparams`, ready for `load_state_dict` of the saved weights. A structure this process
    converted before (`remember`) is copied instead of converted again."""
    template = _TEMPLATES.get(_structure_key(model, example, qat=qat))
    if template is not None:
        converted = copy.deepcopy(template)
        apply_activation_qparams(converted, qparams)  # type: ignore[arg-type]
        return converted
    prepared = prepare(
        model, example, qat=qat, what=f"quantize.mode={'qat' if qat else 'static_int8'}"
    )
    from torchao.quantization.pt2e import enable_observer

    prepared.eval()
    prepared.apply(enable_observer)  # QAT's eval turned them off; this call is their calibration
    call(prepared, example)  # observers hold finite values (the saved state replaces them)
    converted = convert(prepared)
    remember(model, example, converted, qat=qat)
    apply_activation_qparams(converted, qparams)  # type: ignore[arg-type]
    return converted
