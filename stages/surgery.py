"""Structural pruning as JSON-safe data: record what torch-pruning removed, replay it later.

A structurally pruned model cannot be rebuilt from tensor shapes alone (a depthwise conv's
`groups`, a MultiheadAttention's `embed_dim`/`head_dim`, couplings through residual adds and
LayerNorms). torch-pruning keeps a *pruning history*, one entry per pruned group:

    [root module name, is_out_channel_pruning, [root indices removed]]

(`DependencyGraph.pruning_history()`), and replays it on a fresh copy of the same model
(`DependencyGraph.load_pruning_history`), which rebuilds exactly the pruned structure (checked
on MobileNetV2-style nets and Transformer encoders: max output difference 0.0 after loading
the weights). The history is plain str/bool/int lists, so it travels in a checkpoint's recipe
(`recipe["pruned"]`) and loads with `torch.load(weights_only=True)`. One entry kind is
squeezeray's own: `[attention name + ":heads", False, [head indices]]` removes whole heads of a
GPT-2-style fused attention, which torch-pruning cannot map (`stages.hfheads.remove_heads`);
another, `["<model name>:config.<key>", False, [widths]]`, sets a Hugging Face CNN's channel
widths in its config (`stages.hfheads.set_channels`).

Record and replay (any torch-pruning pruner, or groups pruned by hand with `group.prune()`):

    graph = dependency_graph(model, example)        # or pruner.DG of a MetaPruner
    ... prune groups of `graph` ...
    history = history_of(graph)                     # JSON-safe, into the recipe
    replay(task.build(arch), example, history)      # same structure; then load_state_dict

`set_submodule` is the one-layer edit the other structural changes (low-rank factors, int8
wrappers) make.

torch-pruning walks a pruning group without any limit: on a layout it does not recognise (a
custom attention with rotary embeddings and a key/value `repeat`) the walk keeps re-entering
the same layers with new index lists and ran for 20+ minutes. `bounded_walks` stops a walk
that reaches one node `WALK_VISITS_PER_NODE` times (`GroupWalkTooLong`): at most that many
entries per node of the dependency graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from stages.batches import Inputs, forward_logits
from stages.errors import SqueezerayError
from stages.hfheads import CONFIG_MARK, HEADS_SUFFIX, no_cache, remove_heads, set_config_entry

PruningHistory = list[list[Any]]
"""[[module name: str, is_out_channel_pruning: bool, indices: list[int]], ...]"""


def dependency_graph(model: nn.Module, example: Inputs) -> Any:
    """torch-pruning's DependencyGraph of `model`, traced on `example` (a tensor or a tuple of
    model inputs; the output may be any form `stages.batches.logits_of` accepts), with its
    `unwrapped_parameters`."""
    import torch_pruning as tp

    model.eval()  # tracing runs a forward pass: leave BatchNorm statistics alone
    with torch.enable_grad():  # torch-pruning traces the graph through autograd
        return tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example,
            forward_fn=forward_logits,
            unwrapped_parameters=unwrapped_parameters(model),
            verbose=False,
        )


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """[(parameter, dim it is pruned along)] for every parameter of `model` outside the layers
    torch-pruning prunes itself: ViT's `cls_token` and position embeddings, Llama's RMSNorm
    weights, ConvNext's layer scales, a user's per-channel `nn.Parameter`. Each is pruned along
    its last dimension longer than 1 (its channels; torch-pruning's own choice, given here so
    that every graph of the model, the pruner's and the replay's, couples them the same way
    and torch-pruning does not warn "Unwrapped parameters detected"); one with no such
    dimension is left alone, as torch-pruning leaves it."""
    import torch_pruning as tp
    from torch_pruning import ops

    pruners = tp.DependencyGraph().REGISTERED_PRUNERS
    wrapped: set[int] = set()
    for module in model.modules():
        kind = ops.module2type(module)
        if kind in pruners and kind != ops.OPTYPE.ELEMENTWISE:
            wrapped.update(id(p) for p in module.parameters())
    found: list[tuple[nn.Parameter, int]] = []
    for param in model.parameters():  # each shared parameter once
        dims = [d for d, size in enumerate(param.shape) if size > 1]
        if id(param) not in wrapped and dims:
            found.append((param, dims[-1]))
    return found


# How often one group walk may reach the same node (layer, parameter or traced op) with the same
# pruning function and a new index list. In every model the tests prune structurally (CNNs,
# nn.TransformerEncoder, BERT, GPT-2, ViT, Llama, ConvNext, ResNet, digits-cnn) a walk reaches
# a node at most 9 times (digits-cnn's Flatten, 3 steps; most once); a walk that does not end
# reaches the nodes of a cycle again and again (a 1-layer custom attention with rotary
# embeddings and repeat_kv: 5000 entries in 10 s, and on). So a group holds at most this many
# entries per node of the dependency graph, and a walk that does not end stops after this many
# rounds of its cycle, whatever the model's size.
WALK_VISITS_PER_NODE = 64


class GroupWalkTooLong(SqueezerayError):
    """torch-pruning's walk of one pruning group did not end (`bounded_walks`)."""


class GraphNotBuilt(SqueezerayError):
    """torch-pruning could not build a model's dependency graph (it traces the model's layout,
    whatever the ratio): every structured prune of that model fails the same way."""


_roots: list[str] = []  # the layer each walk in progress started from (innermost last)


@contextmanager
def bounded_walks(*, what: str, fix: str) -> Iterator[None]:
    """Within this block every torch-pruning group walk (`DependencyGraph.get_pruning_group`,
    which every pruner, `get_all_groups` and `load_pruning_history` call) stops with a
    GroupWalkTooLong once it reaches one node with one pruning function
    `WALK_VISITS_PER_NODE` times; the message names `what` (the setting that asked for
    structured pruning), the layer the walk started from, the node it kept reaching, and `fix`.
    Its duplicate check is indexed by (node, pruning function): the same comparisons without
    rescanning the whole group. Nested blocks share the outer one (its what and fix)."""
    from torch_pruning.dependency.graph import DependencyGraph
    from torch_pruning.dependency.group import Group

    if getattr(Group.add_dep, "_squeezeray_bounded", False):
        yield
        return
    saved = DependencyGraph.get_pruning_group, Group.add_dep, Group.has_pruning_op
    walk, add, has = saved

    def get_pruning_group(graph: Any, module: nn.Module, fn: Any, idxs: Any) -> Any:
        _roots.append(graph._module2name.get(module) or type(module).__name__)
        try:
            return walk(graph, module, fn, idxs)
        finally:
            _roots.pop()

    def add_dep(group: Any, dep: Any, idxs: Any) -> None:
        seen = group.__dict__.setdefault("_squeezeray_seen", {}).setdefault(
            (dep.target, dep.handler), []
        )
        if _roots and len(seen) >= WALK_VISITS_PER_NODE:
            raise GroupWalkTooLong(
                f"{what}: structured pruning cannot follow this model's layout: torch-pruning's "
                f"walk of the channels coupled to layer {_roots[-1]!r} reached "
                f"{dep.target.name!r} {len(seen)} times with new channel indices (a walk that "
                f"ends reaches a layer a few times) and had {len(group._group)} entries: it "
                "keeps following the channels through reshapes, concatenations or repeats it "
                "does not recognise (a custom attention with rotary embeddings or a repeated "
                f"key/value, for instance); {fix}"
            )
        add(group, dep, idxs)
        seen.append(idxs)

    def has_pruning_op(group: Any, dep: Any, idxs: Any) -> bool:
        seen = group.__dict__.get("_squeezeray_seen")
        if seen is None:  # a group made outside this block
            return bool(has(group, dep, idxs))
        return any(known == idxs for known in seen.get((dep.target, dep.handler), ()))

    add_dep._squeezeray_bounded = True  # type: ignore[attr-defined]
    DependencyGraph.get_pruning_group = get_pruning_group
    Group.add_dep, Group.has_pruning_op = add_dep, has_pruning_op
    try:
        yield
    finally:
        DependencyGraph.get_pruning_group = saved[0]
        Group.add_dep, Group.has_pruning_op = saved[1], saved[2]


def history_of(graph: Any) -> PruningHistory:
    """The JSON-safe pruning history of a DependencyGraph (a pruner's is `pruner.DG`)."""
    return [
        [str(name), bool(out), [_as_int(i) for i in idxs]]
        for name, out, idxs in graph.pruning_history()
    ]


def _as_int(index: Any) -> int:
    # torch-pruning may hand back _HybridIndex(idx, root_idx) for the root: its idx is the index
    return int(index.idx) if hasattr(index, "idx") else int(index)


def check_history(history: Any) -> PruningHistory:
    """`history` validated as [[str, bool, [int, ...]], ...]; SqueezerayError otherwise."""
    ok = isinstance(history, list) and all(
        isinstance(entry, (list, tuple))
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], bool)
        and isinstance(entry[2], (list, tuple))
        and all(isinstance(i, int) and not isinstance(i, bool) for i in entry[2])
        for entry in history
    )
    if not ok:
        raise SqueezerayError(
            "checkpoint recipe 'pruned' is not a pruning history "
            "([[module name, is_out_channel_pruning, [indices]], ...]); the checkpoint is "
            "damaged: delete it and let squeezeray recompute it"
        )
    return [[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in history]


def replay(model: nn.Module, example: Inputs, history: Sequence[Sequence[Any]]) -> nn.Module:
    """Apply a recorded pruning history to a freshly built `model` (in place); return it.

    The model must have the structure it had when the history was recorded (same factory, same
    earlier replays). Raises SqueezerayError naming the entry that does not apply.
    """
    entries = check_history(list(history))
    if not entries:
        return model
    with torch.enable_grad(), no_cache(model):  # torch-pruning traces through autograd
        graph = dependency_graph(model, example)
    for step, entry in enumerate(entries):
        try:
            if entry[0].endswith(HEADS_SUFFIX):  # whole heads of a fused attention (GPT-2)
                remove_heads(model.get_submodule(entry[0].removesuffix(HEADS_SUFFIX)), entry[2])
            elif CONFIG_MARK in entry[0]:  # a Hugging Face CNN's channel widths
                set_config_entry(model, entry[0], entry[2])
            else:
                graph.load_pruning_history([entry])
        except Exception as exc:  # a module that is not there, an index out of range
            raise SqueezerayError(
                f"cannot replay structured pruning step {step + 1}/{len(entries)} on "
                f"{entry[0]!r} ({len(entry[2])} channels): {type(exc).__name__}: {exc}; the "
                "model factory builds another structure than the one that was pruned"
            ) from exc
    del graph
    collect_cycles()
    return model


def collect_cycles() -> None:
    """Run a full collection once a DependencyGraph is dropped. Its nodes reference each other
    and the traced autograd graph, which saved the model's weights as they were before
    pruning: left to Python's allocation-count trigger, a whole unpruned model stayed alive
    (191 MB of a 50M-parameter teacher beside its 50 MB student) for the rest of the stage.
    Full, because tracing a model creates enough objects to promote the graph past the young
    generations; it costs about 0.1 CPU s where torch's and Ray's own objects are not frozen
    (`gc.freeze`, as stage workers do after their first task), milliseconds where they are."""
    import gc

    gc.collect()


def concat_histories(*histories: Sequence[Sequence[Any]] | None) -> PruningHistory:
    """Histories applied one after the other, as one history."""
    out: PruningHistory = []
    for history in histories:
        out.extend(check_history(list(history or [])))
    return out


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """`model.<name> = new` for a dotted name."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
