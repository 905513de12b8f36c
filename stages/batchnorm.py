"""Whether a model normalises over the batch: the one answer every training and evaluation rule
that depends on BatchNorm asks for.

A BatchNorm that computes batch statistics (training mode, or built with
`track_running_stats=False`) has no variance to compute from a batch of one sample: eager
`nn.BatchNorm*` raises "Expected more than 1 value per channel when training", and the
batch-norm op of a `torch.export`ed graph (PT2E QAT) silently writes an infinite/NaN unbiased
variance into the running statistics (torchao's convert then fails on "min nan should be less
than max nan").

An eager model shows this as `nn.BatchNorm1d/2d/3d`, `nn.SyncBatchNorm` or `nn.LazyBatchNorm*`
modules (all `torch.nn.modules.batchnorm._BatchNorm`; Hugging Face models use these too). An
exported or FX graph module has no such modules: batch norm is a `call_function` node
(`aten.batch_norm`, `aten._native_batch_norm_legit*`, `aten.cudnn_batch_norm`,
`F.batch_norm`, ...) whose `training` argument is the mode, which `.train()`/`.eval()` of a
GraphModule do not change (torchao's `move_exported_model_to_train/eval` rewrite it). Both are
read here. Not seen: a custom module whose Python `forward` calls `F.batch_norm` itself
(eager, no graph to read).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx.operator_schemas import normalize_function
from torch.nn.modules.batchnorm import _BatchNorm

# Forward batch-norm ops (aten overload packets and the Python functions FX records), by name.
_BATCH_NORM_OPS = frozenset(
    {
        "batch_norm",  # aten.batch_norm, torch.batch_norm, F.batch_norm
        "native_batch_norm",
        "_native_batch_norm_legit",  # .default and .no_stats
        "_native_batch_norm_legit_functional",
        "_native_batch_norm_legit_no_training",
        "_batch_norm_impl_index",
        "_batch_norm_with_update",
        "_batch_norm_with_update_functional",
        "_batch_norm_no_update",
        "cudnn_batch_norm",
        "miopen_batch_norm",
    }
)


def normalises_over_batch(model: nn.Module) -> bool:
    """Whether a forward of `model` in its current mode normalises over the batch (computes
    batch statistics), so that a batch of one sample fails or corrupts BatchNorm's running
    statistics.

    True when any submodule is a `_BatchNorm` in training mode or without running statistics,
    or any graph held by a submodule (`torch.fx.GraphModule`, torch.export's unflattened
    `InterpreterModule`) calls a batch-norm op in training mode. An op whose mode cannot be
    read counts as training (dropping one sample costs less than a NaN model).
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm) and _module_uses_batch_stats(module):
            return True
        graph = getattr(module, "graph", None)
        if isinstance(graph, torch.fx.Graph) and any(_op_uses_batch_stats(n) for n in graph.nodes):
            return True
    return False


def _module_uses_batch_stats(bn: _BatchNorm) -> bool:
    """`_BatchNorm.forward`'s own rule (`bn_training`)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def _op_name(target: Any) -> str:
    """'batch_norm' for aten.batch_norm.default, the aten.batch_norm packet and F.batch_norm."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target._opname)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return str(target._qualified_op_name).rpartition("::")[2]
    return str(getattr(target, "__name__", ""))


def _op_uses_batch_stats(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or _op_name(node.target) not in _BATCH_NORM_OPS:
        return False
    name = _op_name(node.target)
    called = normalize_function(
        node.target,  # type: ignore[arg-type]
        tuple(node.args),
        dict(node.kwargs),
        normalize_to_only_use_kwargs=True,
    )
    if called is None:
        return True
    kwargs = called.kwargs
    if "training" in kwargs:
        training = kwargs["training"]
        return training if isinstance(training, bool) else True  # a traced flag: unknown
    if name.startswith("_batch_norm_with_update"):
        return True
    # _native_batch_norm_legit_no_training, _batch_norm_no_update: batch statistics only
    # when there are no running ones
    return kwargs.get("running_mean") is None
