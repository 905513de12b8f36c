"""LoRA stage: low-rank adapters on every Linear, trained, then merged back (seed 000's LoRALinear).

    y = x W^T + b + x (M ⊙ s·B A)^T      A: (r, in), B: (out, r), s = alpha / r

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
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.data import DataLoader

from stages.base import StageInput, StageOutput, StageSpec, check_choice, check_int, check_range
from stages.batches import Inputs, as_inputs, batch_size, forward_logits, to_device, to_double
from stages.checkpoint import ModelCheckpoint, build_model, from_model, set_submodule
from stages.device import resolve_device
from stages.errors import SqueezerayError
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
    epochs: int = 10
    lr: float = 5e-3
    batch_size: int = 64
    mode: str = "kd"  # kd: loss against StageInput.teacher; ce: labels only

    def __post_init__(self) -> None:
        check_int("lora.rank", self.rank, low=0)
        check_range("lora.alpha", self.alpha, low=0.0, low_inclusive=False)
        check_int("lora.epochs", self.epochs, low=1)
        check_range("lora.lr", self.lr, low=0.0, low_inclusive=False)
        check_int("lora.batch_size", self.batch_size, low=1)
        check_choice("lora.mode", self.mode, MODES)


class LoRALinear(nn.Module):
    """A frozen `base` Linear plus a masked low-rank update. x: (B, in) -> (B, out)."""

    mask: torch.Tensor | None

    def __init__(
        self,
        base: nn.Linear,
        *,
        rank: int,
        alpha: float,
        mask: torch.Tensor | None,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.scaling = alpha / rank
        device, dtype = base.weight.device, base.weight.dtype
        # A ~ U(±1/sqrt(in)) (kaiming_uniform with a=sqrt(5), as PEFT); B = 0, so the wrapped
        # layer starts out exactly equal to the base.
        bound = 1.0 / math.sqrt(base.in_features)
        a = torch.empty(rank, base.in_features, dtype=dtype)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype))
        # Not persistent: the mask is the parent's zeros, derived again from W when needed.
        self.register_buffer("mask", mask, persistent=False)  # (out, in) or None

    def delta_weight(self) -> torch.Tensor:
        """M ⊙ (s·B A): (out, in)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta if self.mask is None else delta * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(x, self.delta_weight())  # type: ignore[no-any-return]

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain Linear with W' = W + M ⊙ (s·B A); raises on a non-finite result."""
        base = self.base
        weight = base.weight + self.delta_weight()
        if not torch.isfinite(weight).all():
            raise SqueezerayError(
                "LoRA merge produced NaN/inf weights; lower lora.lr or lora.alpha"
            )
        new = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        new.weight.copy_(weight)
        if base.bias is not None:
            new.bias.copy_(base.bias)
        return new


class _AdaptersOnly(nn.Module):
    """Wraps the model for training so `train()` leaves normalisation layers in eval mode.

    The base is frozen, and BatchNorm running statistics are part of the base: in train mode
    they would drift (and forward would use batch statistics the deployed model never sees).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> Any:
        return self.model(*args)

    def train(self, mode: bool = True) -> _AdaptersOnly:
        super().train(mode)
        for module in self.model.modules():
            if isinstance(module, _NormBase):
                module.eval()
        return self


def inject_lora(
    model: nn.Module, *, rank: int, alpha: float, masked: bool, seed: int
) -> list[nn.Parameter]:
    """Wrap every plain nn.Linear of `model` in a LoRALinear (in place); return the adapters.

    Exact type only: Linear subclasses such as MultiheadAttention's out_proj are read
    directly by their owner (`.weight`) and are left alone. With `masked`, each adapter's
    update is restricted to the base's nonzero weights.
    """
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    adapters: list[nn.Parameter] = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        mask = (module.weight.detach() != 0).to(module.weight.dtype) if masked else None
        wrapped = LoRALinear(module, rank=rank, alpha=alpha, mask=mask, generator=generator)
        set_submodule(model, name, wrapped)
        adapters += [wrapped.lora_A, wrapped.lora_B]
    return adapters


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
    """Replace every LoRALinear by its merged Linear (in place), checked on `batch`.

    Raises SqueezerayError when the merged and unmerged logits differ by more than
    MERGE_TOLERANCE, or on NaN/inf weights or logits (PEFT's safe_merge).
    """
    model.eval()
    reference = copy.deepcopy(model).double()
    before64 = forward_logits(reference, to_double(batch))
    before32 = forward_logits(model, batch)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            set_submodule(model, name, module.merged())
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
    parent = _require_parent(inp)
    task = inp.task
    device = resolve_device(inp.device)
    torch.manual_seed(inp.seed)
    model = build_model(task, parent).to(device)
    acc_before = accuracy(model, task.val, device=device)

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
        )

    teacher = None
    if params.mode == "kd":
        if inp.teacher is None:
            raise SqueezerayError(
                "lora.mode='kd' needs the teacher checkpoint, but StageInput.teacher is None; "
                "keep `teacher` in the pipeline or set lora.mode: ce"
            )
        teacher = build_model(task, inp.teacher)

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
        device=device,
        seed=inp.seed,
        teacher=teacher,
        temperature=KD_TEMPERATURE,
        alpha=KD_ALPHA if teacher is not None else 1.0,
        params=adapters,
    )

    batch, _ = next(iter(DataLoader(task.val, batch_size=MERGE_CHECK_BATCH, shuffle=False)))
    check = merge_lora(model, to_device(as_inputs(batch), device))
    model.requires_grad_(True)
    return StageOutput(
        # Merged: plain Linears again, so the parent's recipe (lowrank, masked) still holds.
        checkpoint=from_model(task, model, copy.deepcopy(parent.recipe)),
        metrics={
            "val_accuracy": accuracy(model, task.val, device=device),
            "val_accuracy_before": acc_before,
            "trainable_params": float(sum(p.numel() for p in adapters)),
            "merge_max_abs_diff": check.max_abs_diff,
            "merge_max_abs_diff_fp32": check.max_abs_diff_fp32,
            "train_loss": result["train_loss"],
        },
    )


def _require_parent(inp: StageInput) -> ModelCheckpoint:
    if inp.parent is None:
        raise SqueezerayError("stage lora needs a parent checkpoint (StageInput.parent is None)")
    if inp.parent.quantize != "none":
        raise SqueezerayError(
            f"stage lora got a quantized parent (quantize={inp.parent.quantize!r}); "
            "lora runs on float models, before quantize in the pipeline"
        )
    return inp.parent


SPEC = StageSpec(name="lora", params=LoraParams, run=lora)

__all__ = ["SPEC", "LoRALinear", "LoraParams", "MergeCheck", "inject_lora", "lora", "merge_lora"]
