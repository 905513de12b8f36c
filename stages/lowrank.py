"""Low-rank stage: truncated-SVD factorisation of Linear layers (seed 001's LowRankDecomposer).

A Linear W: (out, in) becomes `nn.Sequential(Linear(in, r, bias=False), Linear(r, out))` at the
same name, so its state_dict keys are `<name>.0.weight`, `<name>.1.weight`, `<name>.1.bias`.
The recipe records `"lowrank": {name: r}`; `stages.rebuild.factorize_layers` replays it on a
fresh model, so `stages.rebuild.build_model` rebuilds the same structure before loading the
weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from stages.base import StageInput, StageOutput, StageSpec, check_int, check_range
from stages.checkpoint import from_model
from stages.errors import SqueezerayError
from stages.layers import is_linear, restore_slow_path, tied_holders
from stages.layers import weight_layer_summary as layer_summary
from stages.masks import keep_masks, zero_masks
from stages.rebuild import build_model
from stages.surgery import set_submodule
from stages.training import accuracy, fit

# The optional fine-tune has only `epochs` in the params contract; these are the finetune
# stage's defaults, which suit a short CE recovery of a factorised model.
FINETUNE_LR = 1e-3
FINETUNE_BATCH_SIZE = 64


@dataclass(frozen=True)
class LowRankParams:
    """rank_ratio 1.0 skips the stage; r = max(1, round(rank_ratio * min(out, in)))."""

    rank_ratio: float = 1.0
    min_features: int = 16  # layers with min(out, in) below this are left alone
    epochs: int = 0  # CE fine-tune epochs after factorising (0 = none)

    def __post_init__(self) -> None:
        check_range("lowrank.rank_ratio", self.rank_ratio, low=0.0, high=1.0, low_inclusive=False)
        check_int("lowrank.min_features", self.min_features, low=1)
        check_int("lowrank.epochs", self.epochs, low=0)


def target_rank(out_features: int, in_features: int, rank_ratio: float) -> int:
    return max(1, round(rank_ratio * min(out_features, in_features)))


def reduces_params(out_features: int, in_features: int, rank: int) -> bool:
    """Two factors (r*in + out*r weights) are smaller than W (out*in); the bias is the same."""
    return rank * (in_features + out_features) < out_features * in_features


def _is_plain_linear(module: nn.Module) -> bool:
    # Exact type only: Linear subclasses such as MultiheadAttention's out_proj are read
    # directly by their owner (`.weight`), so replacing them with a Sequential would break it.
    return is_linear(module, replaceable=True)


@torch.no_grad()
def svd_factorize(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Best rank-r approximation of `layer` (Eckart-Young), split as W ≈ (U√S)(√S Vh).

    The singular values are shared evenly between the factors (the seed puts them all on the
    first), which keeps both factors on the same scale for a later fine-tune or LoRA.
    """
    weight = layer.weight.detach().to(torch.float64)  # (out, in); float64 for a clean SVD
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)  # u (out, k), s (k,), vh (k, in)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]  # (r, in)
    second = u[:, :rank] * root[None, :]  # (out, r)
    device, dtype = layer.weight.device, layer.weight.dtype
    down = nn.Linear(layer.in_features, rank, bias=False, device=device, dtype=dtype)
    up = nn.Linear(
        rank, layer.out_features, bias=layer.bias is not None, device=device, dtype=dtype
    )
    down.weight.copy_(first)
    up.weight.copy_(second)
    if layer.bias is not None:
        up.bias.copy_(layer.bias)
    return nn.Sequential(down, up)  # same layout as stages.rebuild.factorized_linear


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lowrank(inp: StageInput, params: LowRankParams) -> StageOutput:
    """Factorise every large-enough Linear whose rank-r factors are smaller than it.

    Targets: plain `nn.Linear` layers, wherever they are (the feed-forward `linear1`/`linear2`
    of `nn.TransformerEncoderLayer` included); MultiheadAttention's projections stay as they
    are (its forward reads their weights directly). rank_ratio 1.0 is the documented no-op
    (a copy, `layers_factorized` 0); a rank_ratio < 1 that factorises no layer raises a
    SqueezerayError that says why (no Linear, all below min_features, or no saving).
    Linears whose weight is tied to another module's (`stages.layers.tied_holders`) are left
    whole. A masked (unstructured-pruned) parent stays `masked`: its layers that hold pruned zeros
    are not factorised (dense SVD factors would throw the pruning away: 1226 of 2410
    parameters non-zero became 1788 of 1788), they keep their zeros through the fine-tune;
    when that leaves no layer to factorise, a SqueezerayError names both stages. Metric
    `layers_skipped_sparse` counts them.
    """
    parent = inp.require_parent()  # a float model: the runner checked (SPEC.float_parent_fix)
    task = inp.task
    device = inp.torch_device
    torch.manual_seed(inp.seed)
    model = build_model(task, parent)
    params_before = count_params(model)

    if params.rank_ratio == 1.0:  # the search's "no low-rank" choice: a plain copy
        acc = accuracy(model.to(device), task.val, device=device, num_workers=task.num_workers)
        return StageOutput(
            checkpoint=from_model(task, model, copy.deepcopy(parent.recipe)),
            metrics={
                "val_accuracy": acc,
                "params_total_before": float(params_before),
                "params_total_after": float(params_before),
                "layers_factorized": 0.0,
            },
            model=model,
        )

    ranks: dict[str, int] = {}
    too_small = not_smaller = 0
    masked = bool(parent.recipe.get("masked"))
    sparse: list[str] = []  # layers of a masked parent that hold pruned zeros: left alone
    # A tied weight (one Parameter held by several modules) stays whole: factorising one
    # holder would untie it and keep the full weight in the others (the model would grow).
    tied = {id(m) for holders in tied_holders(model).values() for m, _attr in holders}
    for name, module in list(model.named_modules()):
        if not _is_plain_linear(module) or id(module) in tied:
            continue
        assert isinstance(module, nn.Linear)
        out_f, in_f = module.out_features, module.in_features
        if masked and bool((module.weight == 0).any()):
            sparse.append(name)  # SVD factors would be dense: the pruning would be lost
            continue
        if min(out_f, in_f) < params.min_features:
            too_small += 1
            continue
        rank = target_rank(out_f, in_f, params.rank_ratio)
        if reduces_params(out_f, in_f, rank):
            set_submodule(model, name, svd_factorize(module, rank))
            ranks[name] = rank
        else:
            not_smaller += 1
    if not ranks and sparse:
        raise SqueezerayError(
            f"lowrank.rank_ratio={params.rank_ratio:g} factorised no layer: the parent was "
            f"pruned by stage 'prune' (unstructured, its zeros are the compression) and "
            f"lowrank leaves such layers alone, since their SVD factors would be dense and "
            f"undo the pruning ({len(sparse)} of them: {', '.join(sparse[:6])}); use "
            "prune.method: structured (smaller dense layers, which lowrank can factorise), "
            "or drop prune or lowrank "
            "from the pipeline, or set lowrank.rank_ratio: 1.0 (no low-rank)"
        )
    if not ranks:
        raise SqueezerayError(_nothing_factorised(model, params, too_small, not_smaller))
    restore_slow_path(model)  # factorised Linears inside nn.TransformerEncoderLayer

    recipe = copy.deepcopy(parent.recipe)
    if ranks:
        recipe["lowrank"] = {**(parent.recipe.get("lowrank") or {}), **ranks}
    model.to(device)
    metrics = {
        "params_total_before": float(params_before),
        "params_total_after": float(count_params(model)),
        "layers_factorized": float(len(ranks)),
        "layers_skipped_sparse": float(len(sparse)),
        "val_accuracy_svd": accuracy(model, task.val, device=device, num_workers=task.num_workers),
    }
    if params.epochs > 0:
        # a masked parent: the layers SVD left alone keep their zeros
        keep = keep_masks(model, zero_masks(model)) if parent.recipe.get("masked") else None
        fit(
            model,
            task.train,
            task.val,
            epochs=params.epochs,
            lr=FINETUNE_LR,
            batch_size=FINETUNE_BATCH_SIZE,
            num_workers=task.num_workers,
            device=device,
            seed=inp.seed,
            after_step=keep,
        )
    metrics["val_accuracy"] = accuracy(model, task.val, device=device, num_workers=task.num_workers)
    return StageOutput(checkpoint=from_model(task, model, recipe), metrics=metrics, model=model)


def _nothing_factorised(
    model: nn.Module, params: LowRankParams, too_small: int, not_smaller: int
) -> str:
    """Why `lowrank` with rank_ratio < 1 factorised no layer, and what would."""
    head = f"lowrank.rank_ratio={params.rank_ratio:g} factorised no layer of this model"
    skip = "or set lowrank.rank_ratio: 1.0 (no low-rank), or drop lowrank from the pipeline"
    if too_small == 0 and not_smaller == 0:
        return (
            f"{head}: lowrank factorises plain nn.Linear layers (attention projections inside "
            f"nn.MultiheadAttention are not factorised) and it has none ({layer_summary(model)}); "
            f"{skip}"
        )
    return (
        f"{head}: of its {too_small + not_smaller} nn.Linear layers, {too_small} have "
        f"min(out, in) < lowrank.min_features={params.min_features} and {not_smaller} would "
        "not get smaller (rank r = rank_ratio * min(out, in) must be below out*in/(out+in)); "
        f"lower lowrank.rank_ratio or lowrank.min_features, {skip}"
    )


SPEC = StageSpec(
    name="lowrank",
    params=LowRankParams,
    run=lowrank,
    float_parent_fix="lowrank runs on float models, before quantize in the pipeline",
    metrics=("val_accuracy", "params_total_before", "params_total_after", "layers_factorized"),
)

__all__ = ["SPEC", "LowRankParams", "lowrank", "svd_factorize"]
