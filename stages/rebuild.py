"""Rebuild a checkpoint's model: the rebuild side of every stage that changes structure.

A `ModelCheckpoint` (`stages.checkpoint`) is data: a state_dict and a recipe. `build_model`
starts from the task's own model factory and replays the recipe, never unpickling code:

1. `pruned`: torch-pruning's pruning history of structured pruning (`stages.surgery.replay`),
   replayed on the fresh model traced on the task's example input: depthwise/grouped convs,
   Conv1d/2d, BatchNorm, LayerNorm, Embedding, MultiheadAttention and residual couplings come
   back exactly; a Hugging Face model then gets its head counts and config from the new
   shapes (`stages.hfheads.sync_config`);
2. `lowrank`: {layer name: rank} - those Linear layers become two factor Linears
   (`factorize_layers`);
3. `quantize`: `dynamic_int8` re-applies `quantize_dynamic` (`stages.torch_ao`); the torchao
   modes re-apply their `quantize_` config and the saved inner tensors go back into torchao
   tensors (`stages.torchao_quant`); `static_int8`/`qat` re-run `torch.export` + PT2E
   prepare/convert and set the recipe's activation scales (`stages.pt2e`); `float16`/`bfloat16`
   cast again (`stages.casting`) (`rebuild_quantized`), then the saved state loads over it;
4. `stages.layers.restore_slow_path`: Transformer encoder layers whose Linears were replaced
   run their regular path (the fast path reads `linear1.weight` directly).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from stages.base import check_choice
from stages.casting import cast_model
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.hfheads import sync_config
from stages.layers import is_linear, restore_slow_path
from stages.names import CAST_MODES, ONNX_QUANT_MODES, QUANTIZE_MODES
from stages.surgery import replay, set_submodule
from stages.tasks import Task
from stages.torchao_quant import TORCHAO_MODES, quantize_torchao, unflatten_state


def build_model(task: Task, ckpt: ModelCheckpoint, *, share_weights: bool = False) -> nn.Module:
    """Rebuild the eager torch module of a checkpoint (in eval mode, on CPU).

    `share_weights`: a float model takes the checkpoint's tensors as its own parameters and
    buffers (`load_state_dict(assign=True)`) instead of copying them, so the rebuild costs no
    second copy of the weights; only for a checkpoint used for nothing else while the model
    runs (inference on a checkpoint loaded for it: the self-check, a measurement). Quantized
    models always copy (their packed parameters are rebuilt from the state).
    """
    if ckpt.task != task.name:
        raise SqueezerayError(
            f"checkpoint belongs to task {ckpt.task!r}, not {task.name!r}; "
            "a stage cache is keyed by task, so this is a bug or a mixed-up storage directory"
        )
    pruned = ckpt.recipe.get("pruned") or []
    lowrank = ckpt.recipe.get("lowrank") or {}
    mode = ckpt.quantize
    # A float model's every weight is replaced by the load below before it runs: its fresh
    # ones can be left unallocated and its structure copied from the last rebuild. A quantized
    # one is converted first, which reads its fresh weights: zeros, as built (or, for a
    # conversion whose result does not depend on them, zeros in a copy of the structure).
    weights: Weights = (
        "empty" if mode == "none" else "zeros" if mode in VALUE_FREE_MODES else "factory"
    )
    model = float_structure(task, ckpt.arch, pruned, lowrank, weights=weights)
    if mode != "none":
        model = rebuild_quantized(task, model, ckpt.state_dict, mode, recipe=ckpt.recipe)
    state = _state_for_load(model, ckpt.state_dict, mode)
    try:
        share = share_weights and mode == "none"
        model.load_state_dict(_with_versions(state, model), assign=share)
    except RuntimeError as exc:  # shapes or keys differ: the recipe does not rebuild the model
        raise SqueezerayError(
            f"the checkpoint's weights do not fit the model its recipe rebuilds "
            f"(arch={ckpt.arch!r}, structured pruning steps={len(pruned)}, "
            f"lowrank layers={len(lowrank)}, quantize={mode!r}): {exc}"
        ) from exc
    restore_slow_path(model)  # replaced layers inside nn.TransformerEncoderLayer (not state)
    model.eval()
    return model


# Quantize modes whose conversion gives the same modules and shapes whatever the float weights
# are (only the values it packs or casts differ, and the saved state replaces them all):
# their rebuild may start from a zero-filled copy of a kept structure instead of the factory.
# torchao's and PT2E's conversions trace or compute scales from the weights: they build.
VALUE_FREE_MODES = ("dynamic_int8", *CAST_MODES)
# What a rebuilt float structure's weights hold before the checkpoint's load (`float_structure`).
Weights = Literal["factory", "zeros", "empty"]

# Rebuilt float structures of the last few tasks (by identity: a worker's tasks come from
# load_task's per-process cache), on the meta device: a worker rebuilds the same few structures
# over and over (every stage input, self-check and measurement of a trial's chain).
_STRUCTURES: OrderedDict[int, tuple[Task, OrderedDict[str, _Structure]]] = OrderedDict()
TASKS_KEPT = 4
STRUCTURES_PER_TASK = 8


@dataclass(frozen=True)
class _Structure:
    """A rebuilt float model with no weights: its modules on the meta device (no memory) and
    the values of its buffers as the factory made them (BatchNorm statistics, position ids)."""

    module: nn.Module
    buffers: dict[str, torch.Tensor]
    ties: tuple[tuple[str, ...], ...]  # names of one shared (tied) parameter


def float_structure(
    task: Task,
    arch: str,
    pruned: list[Any],
    lowrank: dict[str, Any],
    *,
    weights: Weights = "factory",
) -> nn.Module:
    """A fresh float module of `arch` with the recipe's structure replayed (structured pruning,
    then low-rank factors); buffers as the factory made them. `weights`: "factory" as the
    factory builds them with `skipped_random_init` (random initialisers give zeros), for a
    model whose conversion reads them (torchao, PT2E tracing); "zeros" all zero, for a
    conversion whose result does not depend on them (`VALUE_FREE_MODES`); "empty" unallocated
    memory, for a model whose every weight is replaced before it runs.

    The first rebuild of a structure, and every one with weights "factory", builds it (task factory
    with `skipped_random_init`, `replay`, `factorize_layers`; the first keeps it on the meta
    device); a later one copies the kept structure (`copy.deepcopy` of modules without tensor
    data) and allocates (zeroed for "zeros"): no factory call, no trace, no replay. At 10M
    parameters a student made from the teacher costs 0.05-0.1 CPU s per rebuild the first
    way (a whole teacher built, traced and pruned), and a stage task and its measurement
    rebuild it 2-3 times; a Hugging Face factory also reads its files each time.
    The same idea as building on the meta device and `to_empty` (PyTorch's recipe for big
    models), keyed by the task object, the role and the recipe.
    """
    if weights not in ("factory", "zeros", "empty"):
        raise SqueezerayError(
            f"float_structure: weights={weights!r}; accepted: factory, zeros, empty"
        )
    key = json.dumps([arch, pruned, lowrank], sort_keys=True, default=str)
    kept = _kept_structures(task)
    if key in kept and weights != "factory":
        kept.move_to_end(key)
        return _materialise(kept[key], zeros=weights == "zeros")
    with skipped_random_init(fill=weights != "empty" or bool(pruned) or bool(lowrank)):
        model = task.build(arch)
    if pruned:
        replay(model, task.example_input(2), pruned)
        sync_config(model)  # Hugging Face head counts and config from the new shapes
    if lowrank:
        model = factorize_layers(model, {str(k): int(v) for k, v in lowrank.items()})
    if key not in kept:
        buffers = {n: b.clone() for n, b in model.named_buffers(remove_duplicate=False)}
        kept[key] = _Structure(_on_meta(model), buffers, _ties(model))
        while len(kept) > STRUCTURES_PER_TASK:
            kept.popitem(last=False)
    return model


def _kept_structures(task: Task) -> OrderedDict[str, _Structure]:
    """The kept structures of `task` (this very object), most recently used last."""
    entry = _STRUCTURES.get(id(task))
    if entry is None or entry[0] is not task:
        entry = (task, OrderedDict())
        _STRUCTURES[id(task)] = entry
    _STRUCTURES.move_to_end(id(task))
    while len(_STRUCTURES) > TASKS_KEPT:
        _STRUCTURES.popitem(last=False)
    return entry[1]


def _ties(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """The groups of parameter names that are one Parameter (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return tuple(tuple(group) for group in names.values() if len(group) > 1)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, *, parameter: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    if parameter:
        module._parameters[leaf] = value  # type: ignore[assignment]
    else:
        module._buffers[leaf] = value


def _on_meta(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are meta tensors of the same shapes
    (the modules, their attributes and hooks copied; no tensor data). Tied parameters stay tied."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(
            torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
        )
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _materialise(structure: _Structure, *, zeros: bool = False) -> nn.Module:
    """A fresh module from a kept structure: parameters allocated on the CPU (not filled, or
    zeros with `zeros`), tied ones tied again, buffers set to the factory's values."""
    model = copy.deepcopy(structure.module)
    # What `Module.to_empty` does, with a plain factory: its `torch.empty_like` of a meta tensor
    # runs torch's Python reference path, whose first call imports it (~0.4 CPU s, once per
    # worker process). Each module gets its own new Parameter: re-tie below.
    model._apply(lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype))
    if zeros:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    for group in structure.ties:
        shared = model.get_parameter(group[0])
        for name in group[1:]:
            _set_tensor(model, name, shared, parameter=True)
    for name, value in structure.buffers.items():
        _set_tensor(model, name, value.clone(), parameter=False)
    return model


def _state_for_load(model: nn.Module, state: dict[str, Any], mode: str) -> dict[str, Any]:
    """The saved state in the form the rebuilt modules load: torch.ao's int8 GRU/LSTM tensors
    as packed cells, torchao's flattened inner tensors as torchao tensors."""
    if mode == "dynamic_int8":
        from stages.torch_ao import rnn_state_for_load

        return rnn_state_for_load(model, state)
    if mode in TORCHAO_MODES:
        return unflatten_state(model, state)
    return state


# torch.nn.init's random initialisers, as layers' reset_parameters call them (`init.<name>`)
_RANDOM_INITS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
    "sparse_",
)


@contextlib.contextmanager
def skipped_random_init(*, fill: bool = True) -> Iterator[None]:
    """While a model is built only to have a checkpoint's weights loaded over it: torch.nn.init's
    random initialisers fill with zeros instead of drawing random numbers (`fill=False`: they
    leave the tensor as allocated, for a model nothing runs before its weights are replaced).

    Drawing a model's worth of random numbers that the strict `load_state_dict` then overwrites
    was most of a rebuild's cost (about 0.2 s at 10M parameters, every self-check, stage input
    and measurement). Zeros, not uninitialised memory: structured-pruning replay and
    quantization tracing run the model before its weights are loaded. The idea and the list
    of initialisers follow transformers' `no_init_weights`. Weights a factory computes or loads
    itself are unaffected; the global RNG is not advanced by the skipped draws.
    """
    saved = {name: getattr(nn.init, name) for name in _RANDOM_INITS}

    def zeros(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not fill:
            return tensor
        with torch.no_grad():
            return tensor.zero_()

    try:
        for name in _RANDOM_INITS:
            setattr(nn.init, name, zeros)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _with_versions(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """`state` with `_metadata` (per-module format versions) taken from the rebuilt model.

    A plain dict (from_model, from_bytes) has none, and quantized Linear/Conv then read the
    state as their oldest format (KeyError '<layer>.weight'). The checkpoint was written by the
    same code, so the rebuilt modules' versions are the right ones.
    """
    if getattr(state, "_metadata", None) is not None:
        return state
    versioned: OrderedDict[str, Any] = OrderedDict(state)
    setattr(versioned, "_metadata", module_versions(model))  # noqa: B010
    return versioned


def module_versions(model: nn.Module) -> OrderedDict[str, dict[str, int]]:
    """`model.state_dict()._metadata` without computing the state: {module prefix:
    {"version": its `_version`}}, as `nn.Module.state_dict` records it for every submodule
    (shared ones under each name). A quantized model's state_dict unpacks every packed int8
    weight (torch.ao's `linear_unpack`), a tenth of its rebuild for nothing here."""
    return OrderedDict(
        (name, {"version": module._version})
        for name, module in model.named_modules(remove_duplicate=False)
    )


def factorized_linear(
    in_features: int, out_features: int, rank: int, *, bias: bool
) -> nn.Sequential:
    """The factorised structure with untrained weights: x (B, in) -> (B, r) -> (B, out)."""
    return nn.Sequential(
        nn.Linear(in_features, rank, bias=False),
        nn.Linear(rank, out_features, bias=bias),
    )


def factorize_layers(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace each named Linear by its (untrained) two-factor structure, in place; return model.

    Names are processed shallowest first, so a factor of an earlier factorisation (`net.0.0`)
    can itself be in `ranks` after `net.0`. Used by `build_model` to replay a recipe.
    """
    for name in sorted(ranks, key=lambda n: n.count(".")):
        rank = ranks[name]
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise SqueezerayError(
                f"recipe lowrank names layer {name!r}, which the model does not have"
            ) from exc
        if not is_linear(module):
            raise SqueezerayError(
                f"recipe lowrank names layer {name!r}, a {type(module).__name__}; "
                "only nn.Linear layers can be factorised"
            )
        limit = min(module.in_features, module.out_features)
        if not 1 <= rank <= limit:
            raise SqueezerayError(
                f"recipe lowrank[{name!r}]={rank} is out of range; accepted: [1, {limit}]"
            )
        new = factorized_linear(
            module.in_features, module.out_features, rank, bias=module.bias is not None
        )
        set_submodule(model, name, new)
    return model


def rebuild_quantized(
    task: Task,
    float_model: nn.Module,
    state_dict: dict[str, Any],
    mode: str,
    *,
    recipe: dict[str, Any] | None = None,
) -> nn.Module:
    """The quantized module structure of `mode`, ready for `load_state_dict(state_dict)`.

    `float_model` is the task's fresh model with the recipe's structural changes already
    replayed (structured pruning, low-rank factors); it is quantized again the same way.
    Values do not matter here: weights, biases and weight scales are in `state_dict` and load
    over it; PT2E's activation scales (graph constants) come from `recipe`.
    """
    check_choice("quantize.mode", mode, QUANTIZE_MODES)
    model = float_model.eval()
    if mode == "none" or mode in ONNX_QUANT_MODES:  # ONNX modes keep the float state_dict
        return model
    if mode == "dynamic_int8":
        from stages.torch_ao import dynamic_int8

        return dynamic_int8(model, copy=False)  # the fresh structure is converted in place
    if mode in TORCHAO_MODES:
        return quantize_torchao(model, mode)
    if mode in CAST_MODES:
        return cast_model(model, mode, copy_first=False)
    qparams = (recipe or {}).get("activation_qparams")
    if qparams is None:
        raise SqueezerayError(
            f"the checkpoint's recipe has quantize={mode!r} but no activation_qparams: it was "
            "written by an older squeezeray (FX graph mode); delete it and let squeezeray "
            "recompute it"
        )
    from stages.pt2e import rebuild_pt2e

    return rebuild_pt2e(model, task.example_input(2), qparams, qat=mode == "qat")
