"""Stage `prune`: remove weights (unstructured) or whole neurons/channels (structured).

Methods:
- `l1_unstructured`: in every prunable layer, the smallest-|w| weights until that layer holds
  `ratio` zeros (`torch.nn.utils.prune`'s L1Unstructured choice, computed by `prune_to` with a
  fraction of its memory).
- `global`: the smallest-|w| weights across all prunable layers together until they hold `ratio`
  zeros in total; layers with many small weights lose more.
- `random`: per layer like `l1_unstructured`, but the weights are drawn at random (a baseline).
- `structured`: torch-pruning's `MetaPruner` with L2 group-magnitude importance removes the
  fraction `ratio` of the neurons/channels of every layer (conv biases and BatchNorms follow
  their channels), so shapes and `params_total` shrink; a model with no layer it can shrink
  (only the output layer) is an error. The output layer is ignored: its outputs stay
  `num_classes`, only its inputs shrink with the layer before it. Every layer keeps at least
  one neuron/channel. Every layer type torch-pruning couples follows: grouped
  and depthwise convs, Conv1d, BatchNorm, LayerNorm, Embedding, MultiheadAttention, residual
  adds. The recipe is the parent's plus the pruned groups (`recipe["pruned"]`, torch-pruning's
  pruning history, replayed by `build_model`; see `stages.surgery`); a masked parent's zeros
  stay in the surviving weights, and so does its `masked` flag.

Prunable layers are every Linear/Conv layer, the final classifier included (`stages.masks`);
biases are never zeroed by the unstructured methods. For unstructured methods `ratio` is the
target fraction of zeros of each layer (`global`: of all layers); zeros the parent already
has count towards it and are always kept, so a masked parent pruned again never loses a zero
(if it already holds more than `ratio` zeros, nothing new is pruned). The masks are made
permanent (`prune.remove`): the state_dict has plain weights with exact zeros, no
`weight_orig`/`weight_mask`, and the recipe gets `"masked": True`.

Gradual pruning (`steps > 1`) follows the cubic schedule of Zhu & Gupta (2017),
`s_k = ratio * (1 - (1 - k/steps)^3)` for k = 1..steps: large steps early while many weights are
redundant, small ones near the target. After each step, the last one included, the model is
fine-tuned for `finetune_epochs` epochs with CE (lr `lr`, best val epoch kept), the current
zeros re-applied after every optimizer step. Recovering the last cut too matters: on digits
(student, global, ratio 0.8, 3 steps) val accuracy was 0.71 without it and 0.955 with it, vs
0.81 one-shot. One-shot pruning (`steps = 1`) does no training at all.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stages.base import StageInput, StageOutput, StageSpec, check_choice, check_int, check_range
from stages.batches import Inputs, forward_logits, to_device
from stages.checkpoint import from_model
from stages.errors import SqueezerayError, SqueezerayWarning
from stages.hfheads import (
    UNSTRUCTURED_FIX,
    check_config,
    no_cache,
    pretrained_models,
    set_channels,
    slice_heads,
    sync_config,
)
from stages.hfheads import plan as hf_plan
from stages.hfheads import sizes as hf_sizes
from stages.layers import weight_layer_summary
from stages.masks import (
    apply_masks,
    keep_masks,
    layer_weight,
    param_counts,
    prunable_layers,
    sparsity,
    zero_masks,
)
from stages.names import PRUNE_METHODS
from stages.rebuild import build_model
from stages.shortfall import Before, before, shortfall
from stages.surgery import (
    GraphNotBuilt,
    GroupWalkTooLong,
    PruningHistory,
    bounded_walks,
    collect_cycles,
    concat_histories,
    dependency_graph,
    history_of,
    unwrapped_parameters,
)
from stages.tasks import Task
from stages.training import accuracy, fit

METHODS = PRUNE_METHODS
FINETUNE_BATCH_SIZE = 64  # of the gradual steps' fine-tuning; no batch_size knob
# unstructured pruning of a model whose Linear/Conv weights hold less than this share of its
# parameters is an error (an LSTM/GRU/Embedding model: it would report ok, pruning ~nothing)
MIN_PRUNABLE_SHARE = 0.1


@dataclass(frozen=True)
class PruneParams:
    ratio: float = 0.5  # unstructured: fraction of zero weights; structured: of channels removed
    method: str = PRUNE_METHODS[0]
    steps: int = 1  # > 1: reach `ratio` gradually (cubic schedule), fine-tuning each step
    finetune_epochs: int = 2  # CE epochs after each gradual step (unused when steps = 1)
    lr: float = 1e-3  # of that fine-tuning

    def __post_init__(self) -> None:
        check_range("prune.ratio", self.ratio, low=0.0, high=1.0, high_inclusive=False)
        check_choice("prune.method", self.method, METHODS)
        check_int("prune.steps", self.steps, low=1)
        check_int("prune.finetune_epochs", self.finetune_epochs, low=0)
        check_range("prune.lr", self.lr, low=0.0, low_inclusive=False)

    @property
    def setting(self) -> str:
        """How a message names these params: `prune.method='structured' prune.ratio=0.5`."""
        return f"prune.method={self.method!r} prune.ratio={self.ratio:g}"


def cubic_schedule(ratio: float, steps: int) -> list[float]:
    """Target ratios after 0..steps steps: [0, ..., ratio], cubic (Zhu & Gupta 2017).

    Same signature as torch-pruning's `linear_scheduler`, so MetaPruner can use it too.
    """
    return [ratio * (1.0 - (1.0 - k / steps) ** 3) for k in range(steps + 1)]


def prune(inp: StageInput, params: PruneParams) -> StageOutput:
    """Prune a copy of `inp.parent`.

    Metrics: val_accuracy; sparsity (exact-zero share of the Linear/Conv weights);
    prunable_share (share of all parameters in Linear/Conv weights, before pruning);
    model_sparsity (exact-zero share of all parameters); params_total/_nonzero. Unstructured
    pruning of a model with prunable_share < MIN_PRUNABLE_SHARE (RNN/Embedding models) is a
    SqueezerayError naming the layer types it would not touch.
    """
    task = inp.task
    parent = inp.require_parent()  # a float model: the runner checked (SPEC.float_parent_fix)
    device = inp.torch_device
    torch.manual_seed(inp.seed)
    if parent.recipe.get("lowrank"):
        raise SqueezerayError(
            "stage 'prune' needs a float model that is not factorised or quantized (its parent "
            f"has lowrank={bool(parent.recipe.get('lowrank'))}, "
            f"quantize={parent.quantize!r}); prune comes before lowrank and quantize"
        )
    model = build_model(task, parent).to(device)
    total_before, _ = param_counts(model)
    share = prunable_share(model)
    if params.method != "structured" and params.ratio > 0.0 and share < MIN_PRUNABLE_SHARE:
        raise SqueezerayError(
            f"{params.setting} would prune almost "
            f"nothing: the unstructured methods zero weights of Linear/Conv layers only, which "
            f"hold {share:.1%} of this model's parameters (below {MIN_PRUNABLE_SHARE:.0%}); "
            f"not touched: {untouched_summary(model)}; prune a model whose weights are mostly "
            "in Linear/Conv layers, or drop prune from the pipeline (prune.ratio: 0)"
        )
    history = prune_module(model, task, params, device=device, seed=inp.seed)
    if params.method == "structured" and params.ratio > 0.0:
        _require_removed(model, task, total_before, params, device=device)
    recipe: dict[str, Any] = dict(parent.recipe)
    if params.ratio > 0.0 and params.method != "structured":
        recipe["masked"] = True
    if history:
        recipe["pruned"] = concat_histories(parent.recipe.get("pruned"), history)
    total, nonzero = param_counts(model)
    return StageOutput(
        checkpoint=from_model(task, model, recipe),
        metrics={
            "val_accuracy": accuracy(model, task.val, device=device, num_workers=task.num_workers),
            "sparsity": sparsity(model),  # of the prunable (Linear/Conv) weights
            "prunable_share": share,  # of all parameters, before pruning
            "model_sparsity": (total - nonzero) / total if total else 0.0,  # of all parameters
            "params_total": float(total),
            "params_nonzero": float(nonzero),
        },
        model=model,
    )


def prunable_share(model: nn.Module) -> float:
    """Share of the model's parameters that are Linear/Conv weights (what unstructured pruning
    can zero), in [0, 1]."""
    total, _ = param_counts(model)
    prunable = sum(layer_weight(m).numel() for _, m in prunable_layers(model))
    return prunable / total if total else 0.0


def untouched_summary(model: nn.Module) -> str:
    """'LSTM (2176 parameters), Embedding (800 parameters)': the layer types whose parameters
    unstructured pruning leaves alone (biases of Linear/Conv layers not counted), largest first."""
    counts: dict[str, int] = {}
    prunable = {id(m) for _, m in prunable_layers(model)}
    for module in model.modules():
        if id(module) in prunable:
            continue
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n:
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + n
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} ({n} parameters)" for name, n in ranked) or "nothing"


def _require_removed(
    model: nn.Module, task: Task, total_before: int, params: PruneParams, *, device: torch.device
) -> None:
    """Structured pruning on a model with nothing it can remove is an error (issue 12 item 6).

    Only when torch-pruning finds no group at all (besides the ignored output layer): a model
    with prunable groups that kept its size is left to the row's params_total to show.
    """
    total, _ = param_counts(model)
    if total < total_before:
        return
    example = to_device(task.example_input(2), device)
    graph = dependency_graph(model, example)
    ignored = [output_layer(model, example), *rnn_layers(model)]
    with bounded_walks(what=params.setting, fix=UNSTRUCTURED_FIX + WALK_FIX):
        found = any(True for _ in graph.get_all_groups(ignored_layers=ignored))
    if not found:
        raise SqueezerayError(
            f"{params.setting} removed no channel: "
            "torch-pruning keeps the output layer's width (the logits) and found no other layer "
            f"whose channels it could remove (the model has {weight_layer_summary(model)}); use "
            "an unstructured method (l1_unstructured, global, random), or prune.ratio: 0"
        )


def prune_module(
    model: nn.Module,
    task: Task,
    params: PruneParams,
    *,
    device: torch.device,
    seed: int,
    what: str | None = None,
    fix: str = UNSTRUCTURED_FIX,
    check_forward: bool = True,
) -> PruningHistory:
    """Prune `model` (on `device`) in place as the stage does; leaves it in eval mode.

    Returns the structured pruning history (`stages.surgery`; empty for unstructured
    methods), which `stages.surgery.replay` applies to a fresh model of the same structure.
    Structured pruning swaps the layers' parameters for smaller ones: create any optimizer
    afterwards. With `check_forward`, the structurally pruned model must still run
    (`check_pruned_forward`; `what` names the setting in its error, by default the prune
    params). `fix`: the advice of a refusal for the knob that asked for structured pruning
    (the distill stage's student is cut whatever prune.method is). A torch-pruning group walk
    that does not end is a GroupWalkTooLong naming `what`, the layer it started from and
    `fix` (`stages.surgery.bounded_walks`: the same in every trial, whatever the ratio).
    """
    history: PruningHistory = []
    if params.ratio > 0.0:
        if params.method == "structured":
            example = to_device(task.example_input(2), device)
            with torch.no_grad():
                logits = forward_logits(model.eval(), example)
            before = tensor_shapes(model), tuple(logits.shape)
            what = what or params.setting
            # a Hugging Face cache is no part of the logits
            with no_cache(model), bounded_walks(what=what, fix=fix + WALK_FIX):
                history = _prune_structured(
                    model, task, params, device=device, seed=seed, what=what, fix=fix
                )
            collect_cycles()  # the pruner's graph held the unpruned weights (stages.surgery)
            if check_forward:
                check_pruned_forward(model, example, before, what=what)
        else:
            _prune_unstructured(model, task, params, device=device, seed=seed)
    model.eval()
    return history


# -- unstructured ---------------------------------------------------------------------------


def _prune_unstructured(
    model: nn.Module, task: Task, params: PruneParams, *, device: torch.device, seed: int
) -> None:
    targets = cubic_schedule(params.ratio, params.steps)[1:]
    for step, target in enumerate(targets):
        torch.manual_seed(seed + step)  # `random` draws from the global generator
        prune_to(model, target, method=params.method)
        if params.steps > 1 and params.finetune_epochs > 0:
            _finetune_keeping_zeros(model, task, params, device=device, seed=seed + step)


def prune_to(model: nn.Module, ratio: float, *, method: str) -> None:
    """Zero weights (in place) until the prunable layers hold `ratio` zeros; keep every zero.

    torch.nn.utils.prune's choice, without its copies: the weights still alive are ranked
    (|w| for l1_unstructured and global, one `torch.rand_like` draw over them for random, the
    largest draws pruned, as `RandomUnstructured`) and exactly the missing number of them is
    zeroed (`select_exact`). torch's methods installed a weight_orig, a float mask and a
    masked copy of every layer and took `torch.topk` over a layer (or all of them, global):
    about 10x the largest layer at once (+646 MB for the 50 MB student of a 50M-parameter
    teacher, bench/stage_memory); this holds about 4x of the ranked weights.
    """
    layers = [module for _, module in prunable_layers(model)]
    if not layers:
        raise SqueezerayError(
            f"prune.method={method!r}: the model has no Linear/Conv layers to prune"
        )
    weights = [layer_weight(module).detach() for module in layers]
    if method == "global":
        total = sum(w.numel() for w in weights)
        zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights)
        extra = max(0, round(ratio * total) - zeros)
        if extra > 0:
            scores = torch.cat([_alive(w).abs() for w in weights])
            chosen = select_exact(scores, extra, largest=False)
            del scores
            sizes = [_alive_count(w) for w in weights]
            for w, part in zip(weights, chosen.split(sizes), strict=True):
                _zero_chosen(w, part)
    else:
        for w in weights:
            extra = max(0, round(ratio * w.numel()) - (w.numel() - _alive_count(w)))
            if extra > 0:
                alive = _alive(w)
                scores = alive.abs() if method == "l1_unstructured" else torch.rand_like(alive)
                del alive
                chosen = select_exact(scores, extra, largest=method != "l1_unstructured")
                del scores
                _zero_chosen(w, chosen)
    # -0.0 is an exact zero but compresses worse: +0.0 everywhere
    apply_masks(model, zero_masks(model))


def _alive(weight: torch.Tensor) -> torch.Tensor:
    """The nonzero entries of `weight`, flattened in order (a view when none is zero)."""
    if _alive_count(weight) == weight.numel():
        return weight.reshape(-1)
    return weight[weight != 0]


def _alive_count(weight: torch.Tensor) -> int:
    return int(torch.count_nonzero(weight))


@torch.no_grad()
def _zero_chosen(weight: torch.Tensor, chosen: torch.Tensor) -> None:
    """Set the alive entries of `weight` that `chosen` (bool, one per alive entry, in order)
    marks to +0.0, in place."""
    keep = weight != 0
    keep.masked_scatter_(keep.clone(), ~chosen)
    weight.masked_fill_(~keep, 0.0)


def select_exact(scores: torch.Tensor, k: int, *, largest: bool) -> torch.Tensor:
    """A bool mask over 1-D `scores` marking exactly `k` of them: the k smallest (or largest),
    ties at the k-th value taken from the lowest positions. Memory: `torch.kthvalue` (about 3x
    `scores`) instead of `torch.topk`'s values and int64 indices (about 6x)."""
    n = scores.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool)
    kth = scores.kthvalue(n - k + 1 if largest else k).values
    chosen = scores > kth if largest else scores < kth
    need = k - int(torch.count_nonzero(chosen))
    if need > 0:
        chosen[torch.nonzero(scores == kth).flatten()[:need]] = True
    return chosen


def _finetune_keeping_zeros(
    model: nn.Module, task: Task, params: PruneParams, *, device: torch.device, seed: int
) -> None:
    fit(
        model,
        task.train,
        task.val,
        epochs=params.finetune_epochs,
        lr=params.lr,
        batch_size=FINETUNE_BATCH_SIZE,
        num_workers=task.num_workers,
        device=device,
        seed=seed,
        after_step=keep_masks(model, zero_masks(model)),
    )


# -- structured -----------------------------------------------------------------------------

# appended to the knob's own fix when torch-pruning cannot follow a layout (GroupWalkTooLong)
WALK_FIX = (
    "; a Hugging Face model prunes structurally when its attention is one of the families "
    "docs/huggingface-pruning.md lists (BERT-like, GPT-2, Llama/Mistral/Qwen2, ConvNext, ResNet)"
)


def _prune_structured(
    model: nn.Module,
    task: Task,
    params: PruneParams,
    *,
    device: torch.device,
    seed: int,
    what: str | None,
    fix: str,
) -> PruningHistory:
    model.eval()  # tracing runs a forward pass: keep BatchNorm running stats untouched
    example = to_device(task.example_input(2), device)
    # RNN layers: torch-pruning's LSTM handler indexes out of range (IndexError from
    # dependency.py) and it has none for GRU/RNN; leave them and what feeds them alone
    output = output_layer(model, example)
    ignored = [output, *rnn_layers(model)]
    was = before(model, output=output, hf=hf_sizes(model, fix=fix))  # refuses per-stage configs
    if pretrained_models(model):
        history = _prune_hugging_face(
            model, task, params, example=example, ignored=ignored, device=device, seed=seed,
            what=what, fix=fix, was=was,
        )  # fmt: skip
    else:
        history = _prune_plain(
            model, task, params, example=example, ignored=ignored, device=device, seed=seed,
            what=what, fix=fix,
        )  # fmt: skip
    note = shortfall(model, was, params.ratio, what=what or params.setting, fix=fix)
    if note is not None:  # the stage's log; validate and the sweep's pre-flight print it
        warnings.warn(note, SqueezerayWarning, stacklevel=2)
    return history


def _prune_plain(
    model: nn.Module,
    task: Task,
    params: PruneParams,
    *,
    example: Inputs,
    ignored: list[nn.Module],
    device: torch.device,
    seed: int,
    what: str | None,
    fix: str,
) -> PruningHistory:
    """Structured pruning of a model holding no Hugging Face transformer: one MetaPruner,
    `params.steps` steps on the cubic schedule."""
    import torch_pruning as tp

    try:  # the graph build traces the model: a pattern torch-pruning cannot follow fails here
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=_importance(p=2),
            pruning_ratio=params.ratio,
            pruning_ratio_dict=_keep_one_channel(
                model, params.ratio, ignored=ignored, example=example
            ),
            iterative_steps=params.steps,
            iterative_pruning_ratio_scheduler=cubic_schedule,
            ignored_layers=ignored,
            forward_fn=forward_logits,
            unwrapped_parameters=unwrapped_parameters(model),
            # attention: prune the same number of dims in every head (embed_dim a multiple)
            num_heads={
                m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)
            },
        )
    except GroupWalkTooLong:
        raise
    except Exception as exc:  # e.g. a GRU's outputs into torch.cat (newuser8 F-GRU-1)
        at = "while building its dependency graph"  # the same at every ratio: GraphNotBuilt
        raise _not_prunable(model, params, what, fix, at, exc, error=GraphNotBuilt) from exc
    for step in range(params.steps):
        try:
            pruner.step()
        except GroupWalkTooLong:
            raise
        except Exception as exc:  # torch-pruning on a layer pattern it does not handle
            at = f"at step {step + 1}/{params.steps}"
            raise _not_prunable(model, params, what, fix, at, exc) from exc
        if params.steps > 1 and params.finetune_epochs > 0:
            # zeros of a masked parent survive the slicing; keep them through the fine-tune
            _finetune_keeping_zeros(model, task, params, device=device, seed=seed + step)
            model.eval()
    return history_of(pruner.DG)


def _not_prunable(
    model: nn.Module,
    params: PruneParams,
    what: str | None,
    fix: str,
    at: str,
    exc: Exception,
    *,
    error: type[SqueezerayError] = SqueezerayError,
) -> SqueezerayError:
    """torch-pruning failed on this model's layout (`at`: where): the setting, the
    model's weight layers, torch-pruning's own error and the fix."""
    steps = ", or prune.steps: 1" if params.steps > 1 else ""
    return error(
        f"{what or params.setting}: torch-pruning could not prune this model (it has "
        f"{weight_layer_summary(model)}) {at}: {type(exc).__name__}: {exc}; {fix}{steps}"
    )


def tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter and buffer (non-persistent buffers too), by qualified name."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return {name: tuple(t.shape) for name, t in named}


PRUNED_WIDTH_FIX = (
    "torch-pruning narrows layers and the trainable nn.Parameters it traces beside them, not "
    "buffers, frozen parameters or plain tensor attributes; make such a per-channel tensor a "
    "trainable nn.Parameter (requires_grad=True) so it is pruned with its channels, or fold it "
    "into the layer before it (scale that layer's weight rows)"
)


def check_pruned_forward(
    model: nn.Module,
    example: Inputs,
    before: tuple[dict[str, tuple[int, ...]], tuple[int, ...]],
    *,
    what: str,
) -> None:
    """A structurally pruned model must run and give logits of the shape it gave before.

    `before`: (`tensor_shapes`, logits shape) of the model before pruning. A parameter or
    buffer that kept its shape while a width it has was pruned elsewhere (a per-channel
    buffer, `h * self.scale`) is named in the SqueezerayError, with the fix.
    """
    problem = pruned_forward_problem(model, example, before)
    if problem is None:
        return
    result, stale = problem
    found = (
        f"{', '.join(stale)} kept {'its' if len(stale) == 1 else 'their'} width while the "
        f"channels of that width were pruned"
        if stale
        else "a tensor kept a pruned width (a plain tensor attribute, or a width written in "
        "forward())"
    )
    raise SqueezerayError(
        f"{what}: the pruned model no longer runs ({result}): {found}; {PRUNED_WIDTH_FIX}"
    )


def pruned_forward_problem(
    model: nn.Module,
    example: Inputs,
    before: tuple[dict[str, tuple[int, ...]], tuple[int, ...]],
) -> tuple[str, list[str]] | None:
    """None when the pruned model runs with logits of the shape it had `before`; else what
    happened and the parameters/buffers that kept a width pruned elsewhere ("buffer 'scale'
    (16,)"): those whose shape is unchanged and has a size that some other tensor lost."""
    shapes, logits_shape = before
    try:
        with torch.no_grad():
            got: tuple[int, ...] | str = tuple(forward_logits(model, example).shape)
    except Exception as exc:  # a user's forward over pruned shapes: any error is the finding
        got = f"{type(exc).__name__}: {exc}"
    if got == logits_shape:
        return None
    now = tensor_shapes(model)
    pruned_widths = {
        old
        for name, shape in shapes.items()
        if name in now and now[name] != shape
        for old, new in zip(shape, now[name], strict=False)
        if old != new
    }
    parameters = {name for name, _ in model.named_parameters()}
    stale = [
        f"{'parameter' if name in parameters else 'buffer'} {name!r} {shape}"
        for name, shape in now.items()
        if shapes.get(name) == shape and any(d > 1 and d in pruned_widths for d in shape)
    ]
    result = got if isinstance(got, str) else f"logits of shape {got}, not {logits_shape}"
    return result, stale


def _prune_hugging_face(
    model: nn.Module,
    task: Task,
    params: PruneParams,
    *,
    example: Inputs,
    ignored: list[nn.Module],
    device: torch.device,
    seed: int,
    what: str | None,
    fix: str,
    was: Before,
) -> PruningHistory:
    """Structured pruning of a model holding Hugging Face transformers (`stages.hfheads`):
    whole attention heads, the hidden width in whole heads, FFN widths, and the config.

    Each step prunes to the absolute widths of its cubic-schedule target (one MetaPruner per
    step, targets relative to the sizes before step 1), then updates heads and config.
    """
    import torch_pruning as tp

    original = was.hf
    history: PruningHistory = []
    for step, fraction in enumerate(cubic_schedule(params.ratio, params.steps)[1:]):
        model.eval()
        hf = hf_plan(model, fraction, original=original, fix=fix)
        skip = [*ignored, *hf.ignored]
        ratios = _keep_one_channel(model, fraction, ignored=skip, example=example)
        ratios.update(hf.ratios)
        try:
            pruner = tp.pruner.MetaPruner(
                model,
                example,
                importance=_importance(p=2),
                pruning_ratio=fraction,
                pruning_ratio_dict=ratios,
                ignored_layers=skip,
                forward_fn=forward_logits,
                unwrapped_parameters=unwrapped_parameters(model),
                num_heads=hf.num_heads,
                prune_num_heads=True,
                prune_head_dims=False,
                head_pruning_ratio_dict=hf.head_ratios,
            )
            pruner.step()
        except GroupWalkTooLong:
            raise
        except Exception as exc:  # torch-pruning on a layer pattern it does not handle
            raise SqueezerayError(
                f"{what or params.setting}: "
                f"torch-pruning could not prune this Hugging Face model (it has "
                f"{weight_layer_summary(model)}) at step {step + 1}/{params.steps}: "
                f"{type(exc).__name__}: {exc}; {fix}"
            ) from exc
        # GPT-2's fused attention: its heads go here (after the hidden width, another dim)
        history = concat_histories(
            history,
            history_of(pruner.DG),
            slice_heads(model, hf.keep_heads),
            set_channels(model, hf.channels),  # a CNN's widths: not readable from its weights
        )
        sync_config(model, fix=fix)
        if params.steps > 1 and params.finetune_epochs > 0:
            _finetune_keeping_zeros(model, task, params, device=device, seed=seed + step)
    model.eval()
    check_config(model, fix=fix)
    return history


def rnn_layers(model: nn.Module) -> list[nn.Module]:
    """The model's recurrent layers (nn.LSTM, nn.GRU, nn.RNN: `nn.RNNBase`)."""
    return [m for m in model.modules() if isinstance(m, nn.RNNBase)]


IMPORTANCE_CHUNK = 2**22  # weight elements scored at a time (16 MB of float32)


def channel_magnitudes(weight: torch.Tensor, *, dim: int, p: int) -> torch.Tensor:
    """sum |w|^p over every dimension of `weight` but `dim`: one score per channel along `dim`,
    computed `IMPORTANCE_CHUNK` elements at a time.

    The same values as torch-pruning's `w.abs().pow(p).sum(1)` over the channel-major
    flattened weight (the same rows, contiguous, reduced the same way); that expression holds
    three copies of the layer at once (the flattened rows, |w|, |w|^p): 2.9x a 50M-parameter
    MLP teacher while its student was cut from it (bench/stage_memory)."""
    rows = weight.detach().movedim(dim, 0)
    out = torch.empty(rows.shape[0], dtype=rows.dtype, device=rows.device)
    step = max(1, IMPORTANCE_CHUNK // max(1, rows[0].numel()))
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = rows[start : start + step].flatten(1).abs().pow(p).sum(1)
    return out


def _importance(*, p: int) -> Any:
    """L2 GroupMagnitudeImportance that also scores a grouped conv with one input per group,
    with the magnitudes of Linear and Conv weights computed in chunks (`channel_magnitudes`).

    torch-pruning 1.6 repeats a grouped conv's input-channel importance `groups` times only
    when `groups != in_channels`, meant to skip depthwise convs; a grouped conv left with one
    input channel per group (Conv2d(8, 16, groups=4) after a step removed half its inputs) has
    `groups == in_channels != out_channels` and got one score for `in_channels` indices
    (IndexError on the next pruning step). Such convs are scored as other grouped convs.
    """
    import torch_pruning as tp
    from torch_pruning.pruner import function

    weighted = {
        function.prune_linear_out_channels: 0,
        function.prune_conv_out_channels: 0,
        function.prune_linear_in_channels: 1,
        function.prune_conv_in_channels: 1,
    }
    norms = {function.prune_batchnorm_out_channels, function.prune_layernorm_out_channels}

    class Importance(tp.importance.GroupMagnitudeImportance):  # type: ignore[misc]
        def __call__(self, group: Any) -> Any:
            if any(getattr(dep.layer, "transposed", False) for dep, _ in group):
                return self._library(group)  # transposed convs: rare and laid out otherwise
            imps: list[torch.Tensor] = []
            idxs: list[Any] = []
            for i, (dep, index) in enumerate(group):
                if not isinstance(dep.layer, tuple(self.target_types)):
                    continue
                layer: Any = dep.layer
                fn = dep.pruning_fn
                if fn in weighted:  # the library's Conv/Linear output and input scores
                    local = channel_magnitudes(layer.weight, dim=weighted[fn], p=self.p)
                    if weighted[fn] == 1 and _repeats_input_scores(layer):
                        local = local.repeat(layer.groups)
                    scores = [local[index]]
                    if weighted[fn] == 0 and self.bias and layer.bias is not None:
                        scores.append(layer.bias.data[index].abs().pow(self.p))
                elif fn in norms and _affine(layer):  # BatchNorm/LayerNorm: small vectors
                    scores = [layer.weight.data[index].abs().pow(self.p)]
                    if self.bias and layer.bias is not None:
                        scores.append(layer.bias.data[index].abs().pow(self.p))
                else:
                    continue
                imps.extend(scores)
                idxs.extend([group[i].root_idxs] * len(scores))
            if not imps:  # a group without parameterized layers
                return None
            return self._normalize(self._reduce(imps, idxs), self.normalizer)

        def _library(self, group: Any) -> Any:
            odd = {
                dep.layer
                for dep, _ in group
                if isinstance(dep.layer, nn.modules.conv._ConvNd)
                and 1 < dep.layer.groups == dep.layer.in_channels != dep.layer.out_channels
            }
            saved = [(conv, conv.in_channels) for conv in odd]
            try:
                for conv in odd:  # only read by the "repeat for group convs" test
                    conv.in_channels = -conv.in_channels
                return super().__call__(group)
            finally:
                for conv, n in saved:
                    conv.in_channels = n

    return Importance(p=p)


def _repeats_input_scores(layer: nn.Module) -> bool:
    """Whether a layer's input-channel scores repeat `groups` times: a grouped conv that is
    not depthwise (torch-pruning's rule, with the one-input-per-group case of `_importance`)."""
    if not isinstance(layer, nn.modules.conv._ConvNd) or layer.groups == 1:
        return False
    return layer.groups != layer.in_channels or layer.in_channels != layer.out_channels


def _affine(layer: nn.Module) -> bool:
    """A BatchNorm with `affine` or a LayerNorm with `elementwise_affine` (it has a weight)."""
    return bool(getattr(layer, "affine", False) or getattr(layer, "elementwise_affine", False))


def _keep_one_channel(
    model: nn.Module, ratio: float, *, ignored: list[nn.Module], example: Inputs
) -> dict[nn.Module, float]:
    """Per-layer ratios capped so that at least one neuron/channel (per group) survives.

    MetaPruner keeps `int(n * (1 - ratio))` of a group's n outputs; where that is 0 it skips
    the group altogether, so ratio 0.99 on an 8-channel conv would silently prune nothing. A
    group coupled to a grouped conv (not depthwise) is pruned per conv group, the same count
    in each: there n is the channels per conv group, and every layer of the coupled group
    gets that cap (MetaPruner takes the group's ratio from one of its layers).
    """

    def cap(n: int) -> float:
        # n * (1 - r) must stay >= 1 after float rounding: a hair above 1 / n kept
        return max(0.0, min(ratio, 1.0 - (1.0 + 1e-6) / max(n, 1)))

    layers = {module for _, module in prunable_layers(model)} - set(ignored)
    ratios = {module: cap(int(layer_weight(module).shape[0])) for module in layers}
    if not any(_grouped(m) for m in model.modules()):
        return ratios  # no grouped conv: no group to find (a walk of every group saved)
    graph = dependency_graph(model, example)
    for group in graph.get_all_groups(ignored_layers=ignored):
        members = {dep.target.module for dep, _ in group}
        conv_groups = [int(m.groups) for m in members if _grouped(m)]
        if not conv_groups:
            continue
        per_group = len(group[0][1]) // max(conv_groups)
        for module in members & layers:
            ratios[module] = min(ratios[module], cap(per_group))
    return ratios


def _grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise: pruned per conv group (`_keep_one_channel`)."""
    return isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.out_channels


def output_layer(model: nn.Module, example: Inputs) -> nn.Module:
    """The Linear/Conv layer that runs last in a forward pass (the classifier)."""
    order: list[nn.Module] = []
    hooks = [
        module.register_forward_hook(lambda m, _i, _o: order.append(m))
        for _, module in prunable_layers(model)
    ]
    try:
        with torch.no_grad():
            forward_logits(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise SqueezerayError(
            "prune.method='structured': the model runs no Linear/Conv layer, nothing to prune"
        )
    return order[-1]


SPEC = StageSpec(
    name="prune",
    params=PruneParams,
    run=prune,
    float_parent_fix="prune comes before lowrank and quantize in the pipeline",
    metrics=(
        "val_accuracy",
        "sparsity",
        "prunable_share",
        "model_sparsity",
        "params_total",
        "params_nonzero",
    ),
)
