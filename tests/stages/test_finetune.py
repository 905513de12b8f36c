"""The finetune stage: pruned zeros stay exactly zero, CE and KD modes, no-op, params."""

from __future__ import annotations

import pytest
import torch

from stages.base import StageInput, StageOutput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.finetune import SPEC, FinetuneParams, finetune
from stages.masks import zero_masks
from stages.prune import PruneParams, prune
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.tasks import Task
from tests.stages.conftest import same_state, snapshot


@pytest.fixture(scope="module")
def pruned(digits: Task, digits_student: StageOutput) -> StageOutput:
    """The student with 70% of its weights zeroed (per layer, L1): accuracy to recover."""
    return prune(StageInput(task=digits, parent=digits_student.checkpoint), PruneParams(ratio=0.7))


def _masks(task: Task, ckpt: ModelCheckpoint) -> dict[str, torch.Tensor]:
    return zero_masks(build_model(task, ckpt))


@pytest.mark.parametrize("mode", ["ce", "kd"])
def test_pruned_zeros_stay_exactly_zero(
    digits: Task, digits_teacher: StageOutput, pruned: StageOutput, mode: str
) -> None:
    before = snapshot(pruned.checkpoint)
    inp = StageInput(task=digits, parent=pruned.checkpoint, teacher=digits_teacher.checkpoint)
    out = finetune(inp, FinetuneParams(epochs=3, mode=mode))

    old, new = _masks(digits, pruned.checkpoint), _masks(digits, out.checkpoint)
    assert old.keys() == new.keys()
    assert all(torch.equal(old[k], new[k]) for k in old)  # exactly the same zero set
    assert out.metrics["sparsity"] == pruned.metrics["sparsity"]
    assert out.checkpoint.recipe == pruned.checkpoint.recipe
    # it did train: surviving weights moved and accuracy came back
    assert not same_state(out.checkpoint, pruned.checkpoint)
    assert out.metrics["val_accuracy"] > pruned.metrics["val_accuracy"] + 0.05
    assert all(torch.equal(before[k], pruned.checkpoint.state_dict[k]) for k in before)


def test_kd_and_ce_differ(digits: Task, digits_teacher: StageOutput, pruned: StageOutput) -> None:
    inp = StageInput(task=digits, parent=pruned.checkpoint, teacher=digits_teacher.checkpoint)
    ce = finetune(inp, FinetuneParams(epochs=1, mode="ce"))
    kd = finetune(inp, FinetuneParams(epochs=1, mode="kd"))
    kd_alpha_one = finetune(inp, FinetuneParams(epochs=1, mode="kd", alpha=1.0))
    assert not same_state(ce.checkpoint, kd.checkpoint)
    assert same_state(ce.checkpoint, kd_alpha_one.checkpoint)  # alpha = 1 is plain CE


def test_kd_without_teacher_raises(digits: Task, pruned: StageOutput) -> None:
    with pytest.raises(SqueezerayError, match=r"finetune\.mode='kd' needs the teacher"):
        run_stage(SPEC, StageInput(task=digits, parent=pruned.checkpoint), FinetuneParams(epochs=1))
    with pytest.raises(SqueezerayError, match="teacher"):  # called without the runner too
        finetune(StageInput(task=digits, parent=pruned.checkpoint), FinetuneParams(epochs=1))
    # CE needs no teacher
    out = finetune(
        StageInput(task=digits, parent=pruned.checkpoint), FinetuneParams(epochs=1, mode="ce")
    )
    assert out.metrics["val_accuracy"] > 0


def test_zero_epochs_is_a_no_op_copy(digits: Task, pruned: StageOutput) -> None:
    # no training, so no teacher is needed even in kd mode
    out = finetune(StageInput(task=digits, parent=pruned.checkpoint), FinetuneParams(epochs=0))
    assert same_state(out.checkpoint, pruned.checkpoint)
    assert out.checkpoint.recipe == pruned.checkpoint.recipe
    assert out.metrics["val_accuracy"] == pruned.metrics["val_accuracy"]


def test_same_seed_same_weights(
    digits: Task, digits_teacher: StageOutput, pruned: StageOutput
) -> None:
    params = FinetuneParams(epochs=1)
    a, b, c = (
        finetune(
            StageInput(
                task=digits, parent=pruned.checkpoint, teacher=digits_teacher.checkpoint, seed=s
            ),
            params,
        )
        for s in (1, 1, 2)
    )
    assert same_state(a.checkpoint, b.checkpoint)
    assert not same_state(a.checkpoint, c.checkpoint)


def test_structured_parent_keeps_its_shapes(digits_cnn: Task, cnn_teacher: StageOutput) -> None:
    shrunk = prune(
        StageInput(task=digits_cnn, parent=cnn_teacher.checkpoint),
        PruneParams(ratio=0.5, method="structured"),
    )
    out = finetune(
        StageInput(task=digits_cnn, parent=shrunk.checkpoint, teacher=cnn_teacher.checkpoint),
        FinetuneParams(epochs=1),
    )
    shapes = {k: v.shape for k, v in out.checkpoint.state_dict.items()}
    assert shapes == {k: v.shape for k, v in shrunk.checkpoint.state_dict.items()}
    assert out.metrics["params_total"] == shrunk.metrics["params_total"]
    assert out.metrics["val_accuracy"] >= shrunk.metrics["val_accuracy"]


def test_spec_and_defaults() -> None:
    assert SPEC.name == "finetune"
    assert SPEC.needs_parent is True
    assert FinetuneParams() == FinetuneParams(
        epochs=15, lr=1e-3, batch_size=64, mode="kd", temperature=4.0, alpha=0.5
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", -1, "finetune.epochs=-1 is out of range; accepted: [0, inf]"),
        ("lr", 0.0, "finetune.lr=0.0 is out of range; accepted: (0, inf]"),
        ("batch_size", 0, "finetune.batch_size=0 is out of range; accepted: [1, inf]"),
        ("mode", "distill", "finetune.mode='distill' is not accepted"),
        ("temperature", 0.0, "finetune.temperature=0.0 is out of range; accepted: (0, inf]"),
        ("alpha", 1.01, "finetune.alpha=1.01 is out of range; accepted: [0, 1]"),
    ],
)
def test_params_out_of_range(field: str, value: object, message: str) -> None:
    with pytest.raises(SqueezerayError) as info:
        FinetuneParams(**{field: value})  # type: ignore[arg-type]
    assert message in str(info.value)
    if field == "mode":
        assert "accepted: ce, kd" in str(info.value)
