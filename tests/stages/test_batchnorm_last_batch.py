"""A BatchNorm model whose training split leaves a last batch of one sample (train size = 1
mod batch size) trains in every training loop (issue 21 item 7): that batch is dropped.

Before, every stage that trains (teacher, distill, finetune, gradual prune, lowrank, QAT,
LoRA) failed with "Expected more than 1 value per channel when training"."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput, StageOutput
from stages.distill import SPEC as DISTILL
from stages.distill import DistillParams
from stages.errors import SqueezerayError
from stages.finetune import SPEC as FINETUNE
from stages.finetune import FinetuneParams
from stages.lora import SPEC as LORA
from stages.lora import LoraParams
from stages.lowrank import SPEC as LOWRANK
from stages.lowrank import LowRankParams
from stages.prune import SPEC as PRUNE
from stages.prune import PruneParams
from stages.quantize import SPEC as QUANTIZE
from stages.quantize import QuantizeParams
from stages.tasks import Task
from stages.teacher import SPEC as TEACHER
from stages.teacher import TeacherParams
from stages.training import drops_last_batch

TRAIN = 65  # = 1 mod 64, every stage's batch size


def _bn_mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3))


def bn_task(student: bool = True) -> Task:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(TRAIN + 40) % 3
    x = torch.randn(len(y), 4, generator=g) + y[:, None].float()
    train = TensorDataset(x[:TRAIN], y[:TRAIN])
    held = TensorDataset(x[TRAIN:], y[TRAIN:])
    return Task(
        "bn",
        lambda: _bn_mlp(32),
        (lambda: _bn_mlp(16)) if student else None,
        train,
        held,
        held,
        3,
    )


def test_the_last_batch_is_dropped_only_when_it_is_one_sample_and_a_batchnorm_trains() -> None:
    bn, plain = _bn_mlp(8).train(), nn.Sequential(nn.Linear(4, 3))
    assert drops_last_batch(bn, 65, 64)
    assert not drops_last_batch(bn, 66, 64)  # a last batch of 2 has a variance
    assert not drops_last_batch(bn, 1, 64)  # the only sample: nothing would be left
    assert not drops_last_batch(plain, 65, 64)
    assert not drops_last_batch(_bn_mlp(8).eval(), 65, 64)  # LoRA trains with BN frozen
    # ... unless the frozen BN has no running statistics: it normalises over the batch in eval
    no_stats = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False))
    assert drops_last_batch(no_stats.eval(), 65, 64)


@pytest.fixture(scope="module")
def teacher() -> StageOutput:
    out = TEACHER.run(StageInput(task=bn_task(), parent=None), TeacherParams(epochs=2))
    assert out.model is not None
    return out


STAGES: list[Any] = [
    ("distill", DISTILL, DistillParams(epochs=1)),
    ("finetune", FINETUNE, FinetuneParams(epochs=1)),
    ("prune_gradual", PRUNE, PruneParams(ratio=0.5, steps=2, finetune_epochs=1)),
    ("lowrank", LOWRANK, LowRankParams(rank_ratio=0.25, min_features=4, epochs=1)),
    # PT2E QAT trains an exported graph with no nn.BatchNorm modules in it: the rule reads its
    # batch-norm ops (before, the batch of one wrote NaN into the running variance)
    ("qat", QUANTIZE, QuantizeParams(mode="qat", qat_epochs=1)),
    ("lora", LORA, LoraParams(rank=2, epochs=1, mode="ce")),
]


STAGE_IDS = [s[0] for s in STAGES]


@pytest.mark.parametrize(("name", "spec", "params"), STAGES, ids=STAGE_IDS)
def test_every_training_stage_trains_a_batchnorm_model_with_a_last_batch_of_one(
    teacher: StageOutput, name: str, spec: Any, params: Any
) -> None:
    inp = StageInput(task=bn_task(), parent=teacher.checkpoint, teacher=teacher.checkpoint)
    out = spec.run(inp, params)
    assert 0.0 <= out.metrics["val_accuracy"] <= 1.0


def test_batches_of_one_on_a_training_batchnorm_are_refused_with_the_fix(
    teacher: StageOutput,
) -> None:
    inp = StageInput(task=bn_task(), parent=teacher.checkpoint, teacher=teacher.checkpoint)
    with pytest.raises(SqueezerayError, match=r"batch_size=1 .*BatchNorm.*2 or more"):
        FINETUNE.run(inp, FinetuneParams(epochs=1, batch_size=1))
    # LoRA trains with the BatchNorm frozen (eval mode, running statistics): batches of one work
    out = LORA.run(inp, LoraParams(rank=2, epochs=1, mode="ce", batch_size=1))
    assert 0.0 <= out.metrics["val_accuracy"] <= 1.0


def test_a_student_made_from_a_batchnorm_teacher_trains() -> None:
    task = bn_task(student=False)
    out = TEACHER.run(StageInput(task=task, parent=None), TeacherParams(epochs=1))
    inp = StageInput(task=task, parent=out.checkpoint, teacher=out.checkpoint)
    student = DISTILL.run(inp, DistillParams(epochs=1, student_ratio=0.5))
    assert student.metrics["params_total"] < out.metrics["params_total"]
