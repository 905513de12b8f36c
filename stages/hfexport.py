"""A trial's model in Hugging Face form: a `save_pretrained` directory, checked by loading it back.

For a model that is a `transformers.PreTrainedModel` whose weights `from_pretrained` can load
into the class its config builds (float weights: `quantize.mode` none, float16 or bfloat16;
pruned, distilled, fine-tuned and LoRA-merged models qualify, with the config structured
pruning updated),
`save_pretrained_dir` writes `config.json` + `model.safetensors` and copies the task's
`export_files` (tokenizer/processor files) beside them. Conv1D layers that `Task.build` made
Linear go back to Conv1D first (`stages.conv1d.conv1d_form`, on a copy), so the files have
GPT-2's own layout.

`check_pretrained_dir` loads the directory with `from_pretrained` (local files only) and
compares its logits with the rebuilt model's on test samples, and measures its test accuracy:
the directory counts only when it computes what was measured.

A model it cannot write (int8 weights, low-rank factorised layers: modules a config cannot
build) gets a reason instead of a directory (`not_loadable_reason`).
"""

from __future__ import annotations

import copy
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stages.batches import forward_logits
from stages.checkpoint import ModelCheckpoint
from stages.conv1d import conv1d_form
from stages.hf import quiet_progress
from stages.tasks import Task

HF_DIR = "huggingface"  # the save_pretrained directory's name inside an export folder
LOGITS_TOLERANCE = 1e-4  # max |logit difference| of the loaded directory vs the rebuilt model
CHECK_SAMPLES = 64  # test samples the logits are compared on


@dataclass(frozen=True)
class PretrainedExport:
    """What `save_pretrained_dir` did: `files` written (names relative to the directory), or
    `skipped`, the reason none was written; `model_class` and `load` (how to load it)."""

    files: tuple[str, ...]
    skipped: str | None
    model_class: str
    load: str


def is_pretrained(model: nn.Module) -> bool:
    """True for a `transformers.PreTrainedModel` (transformers is not imported for a model
    that does not come from it)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None)
    return base is not None and isinstance(model, base)


def not_loadable_reason(model: nn.Module, ckpt: ModelCheckpoint) -> str | None:
    """Why `from_pretrained` could not load this model's weights into the class its config
    builds (None: it can). Checked before writing; the reload check catches the rest."""
    if ckpt.quantize.startswith("onnx_"):
        return (
            f"quantize.mode={ckpt.quantize!r}: the measured model is the int8 ONNX model "
            "(model.onnx); a save_pretrained directory would hold the float weights before "
            "quantization, another model. Rows with quantize.mode: none export in Hugging "
            "Face form"
        )
    if ckpt.quantize not in ("none", "float16", "bfloat16"):  # float casts load as they are
        return (
            f"quantize.mode={ckpt.quantize!r}: int8 weights, which from_pretrained does not "
            "build from a config. Rows with quantize.mode: none export in Hugging Face form"
        )
    if ckpt.recipe.get("lowrank"):
        return (
            "lowrank factorised some Linear layers into two, which the model's config cannot "
            "describe; rows without lowrank export in Hugging Face form"
        )
    if any(not p.is_floating_point() for p in model.parameters()):
        return "the model holds non-float parameters"
    return None


def _load_hint(model: nn.Module, task: Task) -> str:
    cls = type(model).__name__
    hint = f"from transformers import {cls}; model = {cls}.from_pretrained('{HF_DIR}')"
    names = {Path(f).name for f in task.export_files}
    if "preprocessor_config.json" in names:
        auto = "AutoImageProcessor"
    elif names & {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json"}:
        auto = "AutoTokenizer"
    else:
        return hint
    return f"{hint}; from transformers import {auto}; {auto}.from_pretrained('{HF_DIR}')"


def save_pretrained_dir(
    task: Task, model: nn.Module, ckpt: ModelCheckpoint, directory: Path
) -> PretrainedExport | None:
    """Write `model` (a rebuilt trial model) with `save_pretrained` into `directory` (created)
    plus copies of `task.export_files`. None when `model` is not a PreTrainedModel; a
    `PretrainedExport` with `skipped` set (nothing written) when its weights would not load
    back (`not_loadable_reason`)."""
    if not is_pretrained(model):
        return None
    cls, hint = type(model).__name__, _load_hint(model, task)
    reason = not_loadable_reason(model, ckpt)
    if reason is not None:
        return PretrainedExport(files=(), skipped=reason, model_class=cls, load=hint)
    saved = copy.deepcopy(model).eval()
    conv1d_form(saved)  # GPT-2: its Conv1D layout back, with the pruned sizes
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        saved.save_pretrained(str(directory))  # type: ignore[operator]
    for file in task.export_files:
        shutil.copy2(file, directory / Path(file).name)
    files = tuple(
        sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    )
    return PretrainedExport(files=files, skipped=None, model_class=cls, load=hint)


def check_pretrained_dir(task: Task, model: nn.Module, directory: Path) -> dict[str, Any]:
    """Load `directory` with `type(model).from_pretrained` (local files only) and compare it
    with `model` on the first CHECK_SAMPLES test samples: {"max_abs_logit_diff",
    "missing_keys", "unexpected_keys", "accuracy" (test split, eager), "ok"}; ok when no key
    is missing or unexpected and the logits agree within LOGITS_TOLERANCE."""
    from stages.runtime import TorchPredictor

    with quiet_progress():
        loaded, info = type(model).from_pretrained(  # type: ignore[attr-defined]
            str(directory),
            local_files_only=True,
            output_loading_info=True,
            dtype=next(model.parameters()).dtype,  # float16/bfloat16 rows compare in their dtype
        )
    loaded.eval()
    n = min(CHECK_SAMPLES, len(task.test))  # type: ignore[arg-type]
    x = task.example_input(n)
    with torch.no_grad():
        diff = float((forward_logits(loaded, x) - forward_logits(model.eval(), x)).abs().max())
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    return {
        "max_abs_logit_diff": diff,
        "missing_keys": missing[:10],
        "unexpected_keys": unexpected[:10],
        "accuracy": TorchPredictor(loaded, "eager").accuracy(
            task.test, num_workers=task.num_workers
        ),
        "ok": not missing and not unexpected and diff <= LOGITS_TOLERANCE,
    }


__all__ = [
    "HF_DIR",
    "PretrainedExport",
    "check_pretrained_dir",
    "is_pretrained",
    "not_loadable_reason",
    "save_pretrained_dir",
]
