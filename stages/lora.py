"""LoRA stage: low-rank adapters on every Linear and attention projection, trained, then merged.

    W -> W + M ⊙ (s·B A)      W: (out, in), A: (r, in), B: (out, r), s = alpha / r

Targets (`lora_targets`): every `nn.Linear` weight (the feed-forward Linears of Transformer
layers, MultiheadAttention's `out_proj`, lowrank factors) and every `nn.MultiheadAttention`'s
input projection (`in_proj_weight`). The update is a `torch.nn.utils.parametrize`
parametrization of the weight, so owners that read `.weight` directly (MultiheadAttention,
the Transformer fast path) see the adapted weight and the layer keeps its type and keys.
A model with none of these layers is refused (SqueezerayError), unless lora.rank is 0.

W and b stay frozen; only A and B train. M is the parent's pruning mask (W != 0) when its
recipe says `masked`, else all ones, so the merged W' = W + M ⊙ (s·B A) keeps exactly the
parent's zeros, and training sees the very function that the merge produces.

Why not peft: its LoRA delta is the dense B·A (no way to train through a pruning mask, so a
merge would undo the sparsity), and it pulls in transformers/accelerate for what is ~40 lines.
The layer below follows PEFT's conventions (A random, B zero, scaling alpha/r, a checked merge).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.utils import parametrize

from stages.base import StageInput, StageOutput, StageSpec, check_choice, check_int, check_range
from stages.batches import Inputs, as_inputs, batch_size, forward_logits, to_device, to_double
from stages.checkpoint import from_model
from stages.errors import SqueezerayError
from stages.layers import is_linear, tied_holders
from stages.layers import weight_layer_summary as layer_summary
from stages.loading import batches
from stages.masks import keep_mask
from stages.rebuild import build_model
from stages.training import accuracy, fit

MODES = ("ce", "kd")
# KD settings are not LoRA search knobs (the params contract has none); distill's defaults.
KD_TEMPERATURE = 4.0
KD_ALPHA = 0.5
MERGE_TOLERANCE = 1e-5  # max |merged - unmerged| logit difference accepted by the merge check
MERGE_CHECK_BATCH = 256  # validation examples the merge check runs through both models


@dataclass(frozen=True)
class LoraParams:
    """rank 0 skips the stage; scaling = alpha / rank (PEFT's lora_alpha)."""

    rank: int = 0
    alpha: float = 8.0
    epochs: int = 10  # at most: the best validation epoch is kept, the start included
    lr: float = 5e-3  # AdamW on the adapters only
    batch_size: int = 64
    mode: str = "kd"  # kd: loss against StageInput.teacher; ce: labels only

    def __post_init__(self) -> None:
        check_int("lora.rank", self.rank, low=0)
        check_range("lora.alpha", self.alpha, low=0.0, low_inclusive=False)
        check_int("lora.epochs", self.epochs, low=1)
        check_range("lora.lr", self.lr, low=0.0, low_inclusive=False)
        check_int("lora.batch_size", self.batch_size, low=1)
        check_choice("lora.mode", self.mode, MODES)


class LoRAUpdate(nn.Module):
    """The parametrization W -> W + M ⊙ (s·B A) of one weight W: (out, in).

    Registered with `torch.nn.utils.parametrize` on the weight itself, so the layer keeps its
    type and its `.weight` (MultiheadAttention reads `in_proj_weight` and `out_proj.weight`
    directly; the Transformer fast path reads `linear1.weight`): adapters work wherever the
    weight is used, not only where the layer's own forward runs.
    """

    mask: torch.Tensor | None

    def __init__(
        self,
        out_features: int,
        in_features: int,
        *,
        rank: int,
        alpha: float,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.scaling = alpha / rank
        # A ~ U(±1/sqrt(in)) (kaiming_uniform with a=sqrt(5), as PEFT); B = 0, so the adapted
        # weight starts out exactly equal to the base.
        bound = 1.0 / math.sqrt(in_features)
        a = torch.empty(rank, in_features, dtype=dtype)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        # Not persistent: the mask is the parent's zeros, derived again from W when needed.
        self.register_buffer("mask", mask, persistent=False)  # (out, in) or None

    def delta_weight(self) -> torch.Tensor:
        """M ⊙ (s·B A): (out, in)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta if self.mask is None else delta * self.mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta_weight()


def lora_targets(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, module, weight attribute) of every weight LoRA adapts, in order.

    Every `nn.Linear` (subclasses too, e.g. MultiheadAttention's `out_proj`) by its `weight`;
    every `nn.MultiheadAttention` by its packed `in_proj_weight` (3E, E), or by its separate
    `q/k/v_proj_weight` when key/value dims differ. Conv, Embedding and norm layers are not
    adapted.
    """
    targets: list[tuple[str, nn.Module, str]] = []
    for name, module in model.named_modules():
        if is_linear(module):
            targets.append((name, module, "weight"))
        elif isinstance(module, nn.MultiheadAttention):
            attrs = (
                ("in_proj_weight",)
                if module._qkv_same_embed_dim
                else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
            )
            targets += [(name, module, attr) for attr in attrs]
    return targets


class _AdaptersOnly(nn.Module):
    """Wraps the model for training so `train()` leaves normalisation layers in eval mode.

    The base is frozen, and BatchNorm running statistics are part of the base: in train mode
    they would drift (and forward would use batch statistics the deployed model never sees).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor, **named: torch.Tensor) -> Any:
        return self.model(*args, **named)  # named inputs stay keyword arguments

    def train(self, mode: bool = True) -> _AdaptersOnly:
        super().train(mode)
        for module in self.model.modules():
            if isinstance(module, _NormBase):
                module.eval()
        return self


def inject_lora(
    model: nn.Module, *, rank: int, alpha: float, masked: bool, seed: int
) -> list[nn.Parameter]:
    """Add a LoRAUpdate to every weight of `lora_targets(model)` (in place); return the adapters.

    The model's own parameters are frozen; the returned list is [A, B] per adapted weight, in
    order. With `masked`, each adapter's update is restricted to the base weight's nonzeros.
    A weight shared by several modules (tied weights: two Linears with one weight Parameter,
    an Embedding tied to its output Linear) gets one adapter, registered on every module that
    holds it, so they all see the same adapted weight in training and it is merged once.
    Raises SqueezerayError when the model has no weight LoRA can adapt.
    """
    targets = lora_targets(model)
    if not targets:
        raise SqueezerayError(
            f"lora.rank={rank}: this model has no layer LoRA can adapt (it adapts nn.Linear "
            f"and nn.MultiheadAttention weights; the model has {layer_summary(model)}); set "
            "lora.rank: 0 or drop lora from the pipeline"
        )
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    holders = tied_holders(model)
    # read before any registration: a registered weight reads as a new (computed) tensor
    weights = [getattr(module, attr) for _name, module, attr in targets]
    adapted: set[int] = set()
    adapters: list[nn.Parameter] = []
    for (_name, module, attr), weight in zip(targets, weights, strict=True):
        if id(weight) in adapted:
            continue  # a tied weight, adapted with its first holder
        adapted.add(id(weight))
        mask = keep_mask(weight).to(weight.dtype) if masked else None
        update = LoRAUpdate(
            weight.shape[0],
            weight.shape[1],
            rank=rank,
            alpha=alpha,
            mask=mask,
            generator=generator,
            device=weight.device,
            dtype=weight.dtype,
        )
        for holder, holder_attr in holders.get(id(weight), [(module, attr)]):
            parametrize.register_parametrization(holder, holder_attr, update)
        adapters += [update.lora_A, update.lora_B]
    return adapters


def _adapted(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """The (module, weight attribute) pairs that carry a LoRAUpdate, grouped by adapter (a
    tied weight's holders share one)."""
    groups: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        plists: Any = module.parametrizations
        for attr, plist in plists.items():
            for p in plist:
                if isinstance(p, LoRAUpdate):
                    groups.setdefault(id(p), []).append((module, str(attr)))
    return list(groups.values())


def _merge_weight(holders: list[tuple[nn.Module, str]]) -> None:
    """W' = W + M ⊙ (s·B A) becomes the plain weight again, written once into the (possibly
    shared) Parameter W, which every holder keeps; raises on a non-finite result."""
    module, attr = holders[0]
    merged = getattr(module, attr).detach().clone()
    if not torch.isfinite(merged).all():
        raise SqueezerayError("LoRA merge produced NaN/inf weights; lower lora.lr or lora.alpha")
    for holder, holder_attr in holders:
        parametrize.remove_parametrizations(holder, holder_attr, leave_parametrized=False)
    getattr(module, attr).copy_(merged)


@dataclass(frozen=True)
class MergeCheck:
    """How far the merged model's logits are from the unmerged (trained) model's.

    max_abs_diff: float64 evaluation of both (the checked number: it isolates the merge
    algebra from float32 rounding, so the check holds for wide user models too).
    max_abs_diff_fp32: the same in the model's own float32, for information.
    """

    max_abs_diff: float
    max_abs_diff_fp32: float


@torch.no_grad()
def merge_lora(model: nn.Module, batch: Inputs) -> MergeCheck:
    """Merge every LoRAUpdate into its weight (in place), checked on `batch`.

    Raises SqueezerayError when the merged and unmerged logits differ by more than
    MERGE_TOLERANCE, or on NaN/inf weights or logits (PEFT's safe_merge).
    """
    model.eval()
    reference = copy.deepcopy(model).double()
    before64 = forward_logits(reference, to_double(batch))
    before32 = forward_logits(model, batch)
    for holders in _adapted(model):
        _merge_weight(holders)
    after32 = forward_logits(model, batch)
    after64 = forward_logits(copy.deepcopy(model).double(), to_double(batch))
    if not all(torch.isfinite(t).all() for t in (before32, after32, before64, after64)):
        raise SqueezerayError("LoRA merge check: non-finite logits; lower lora.lr or lora.alpha")
    check = MergeCheck(
        max_abs_diff=float((after64 - before64).abs().max()),
        max_abs_diff_fp32=float((after32 - before32).abs().max()),
    )
    if check.max_abs_diff > MERGE_TOLERANCE:
        raise SqueezerayError(
            f"LoRA merge check failed: merged and unmerged logits differ by "
            f"{check.max_abs_diff:.3g} (> {MERGE_TOLERANCE:g}) on {batch_size(batch)} validation "
            "examples; the merged weights do not reproduce the trained adapters"
        )
    return check


def lora(inp: StageInput, params: LoraParams) -> StageOutput:
    """Train LoRA adapters on a frozen model, merge them, and return the plain model."""
    parent = inp.require_parent()  # a float model: the runner checked (SPEC.float_parent_fix)
    task = inp.task
    device = inp.torch_device
    torch.manual_seed(inp.seed)
    model = build_model(task, parent).to(device)
    acc_before = accuracy(model, task.val, device=device, num_workers=task.num_workers)

    if params.rank == 0:  # the search's "no LoRA" choice: a plain copy
        return StageOutput(
            checkpoint=from_model(task, model, copy.deepcopy(parent.recipe)),
            metrics={
                "val_accuracy": acc_before,
                "val_accuracy_before": acc_before,
                "trainable_params": 0.0,
                "merge_max_abs_diff": 0.0,
                "merge_max_abs_diff_fp32": 0.0,
            },
            model=model,
        )

    teacher = build_model(task, inp.require_teacher()) if params.mode == "kd" else None

    model.cpu()  # adapters are initialised on CPU from a CPU generator, then moved
    adapters = inject_lora(
        model,
        rank=params.rank,
        alpha=params.alpha,
        masked=bool(parent.recipe.get("masked")),
        seed=inp.seed,
    )
    trainer = _AdaptersOnly(model)
    result = fit(
        trainer,
        task.train,
        task.val,
        epochs=params.epochs,
        lr=params.lr,
        batch_size=params.batch_size,
        num_workers=task.num_workers,
        device=device,
        seed=inp.seed,
        teacher=teacher,
        temperature=KD_TEMPERATURE,
        alpha=KD_ALPHA if teacher is not None else 1.0,
        params=adapters,
    )

    batch, _ = next(iter(batches(task.val, batch_size=MERGE_CHECK_BATCH)))
    check = merge_lora(model, to_device(as_inputs(batch), device))
    model.requires_grad_(True)
    return StageOutput(
        # Merged: plain Linears again, so the parent's recipe (lowrank, masked) still holds.
        checkpoint=from_model(task, model, copy.deepcopy(parent.recipe)),
        metrics={
            "val_accuracy": accuracy(model, task.val, device=device, num_workers=task.num_workers),
            "val_accuracy_before": acc_before,
            "trainable_params": float(sum(p.numel() for p in adapters)),
            "merge_max_abs_diff": check.max_abs_diff,
            "merge_max_abs_diff_fp32": check.max_abs_diff_fp32,
            "train_loss": result["train_loss"],
        },
        model=model,
    )


def _reads_teacher(params: LoraParams) -> str | None:
    return "lora.mode='kd'" if params.mode == "kd" and params.rank > 0 else None


SPEC = StageSpec(
    name="lora",
    params=LoraParams,
    run=lora,
    float_parent_fix="lora runs on float models, before quantize in the pipeline",
    needs_teacher=_reads_teacher,
    teacher_fix="keep `teacher` in the pipeline or set lora.mode: ce",
    metrics=(
        "val_accuracy",
        "val_accuracy_before",
        "trainable_params",
        "merge_max_abs_diff",
        "merge_max_abs_diff_fp32",
    ),
)

__all__ = [
    "SPEC",
    "LoRAUpdate",
    "LoraParams",
    "MergeCheck",
    "inject_lora",
    "lora",
    "lora_targets",
    "merge_lora",
    "tied_holders",
]
