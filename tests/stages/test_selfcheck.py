"""Every stage checks its own output (issue 12 item 2): the checkpoint is rebuilt from its bytes
and must compute what the stage's model computes; otherwise the stage fails and nothing is
cached."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import stages
from stages.base import StageInput, StageOutput, StageSpec
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.prune import PruneParams, prune
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.selfcheck import check_output
from stages.tasks import Task, load_task
from stages.teacher import TeacherParams, train_teacher


@pytest.fixture(scope="module")
def mobilenet() -> Task:
    return load_task("tests.zoo:mobilenet")


@pytest.fixture(scope="module")
def mobilenet_teacher(mobilenet: Task) -> StageOutput:
    return train_teacher(StageInput(task=mobilenet, parent=None), TeacherParams(epochs=1))


def test_structured_pruning_of_depthwise_convs_round_trips(
    mobilenet: Task, mobilenet_teacher: StageOutput
) -> None:
    """The bug that started issue 12: a depthwise conv rebuilt with its old `groups`."""
    inp = StageInput(task=mobilenet, parent=mobilenet_teacher.checkpoint)
    out, data = run_stage(stages.get_stage("prune"), inp, PruneParams(0.5, "structured"))
    rebuilt = build_model(mobilenet, ModelCheckpoint.from_bytes(data))
    depthwise = rebuilt.get_submodule("blocks.0.block.3")
    assert isinstance(depthwise, torch.nn.Conv2d)
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels < 16
    x = mobilenet.example_input(16)
    assert torch.equal(rebuilt(x), out.model(x))


def test_a_checkpoint_that_does_not_rebuild_is_the_stage_error(
    mobilenet: Task, mobilenet_teacher: StageOutput
) -> None:
    out = prune(
        StageInput(task=mobilenet, parent=mobilenet_teacher.checkpoint),
        PruneParams(0.5, "structured"),
    )
    recipe = {k: v for k, v in out.checkpoint.recipe.items() if k != "pruned"}
    lost = replace(out, checkpoint=replace(out.checkpoint, recipe=recipe))  # shapes alone
    with pytest.raises(
        SqueezerayError, match=r"(?s)stage 'prune' .* does not rebuild.*size mismatch"
    ):
        check_output(mobilenet, "prune", lost)


def test_a_checkpoint_that_computes_something_else_is_the_stage_error(
    mobilenet: Task, mobilenet_teacher: StageOutput
) -> None:
    model = build_model(mobilenet, mobilenet_teacher.checkpoint)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)  # changed after the snapshot: not what was saved
    wrong = StageOutput(mobilenet_teacher.checkpoint, {"val_accuracy": 0.5}, model=model)
    with pytest.raises(SqueezerayError, match=r"stage 'finetune' .* other logits .* not cached"):
        check_output(mobilenet, "finetune", wrong)


def test_execute_stage_caches_nothing_when_the_check_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mobilenet_teacher: StageOutput
) -> None:
    from orchestrator.engine.requests import StageRequest
    from orchestrator.engine.stage_tasks import execute_stage

    def broken(inp: StageInput, params: PruneParams) -> StageOutput:
        out = prune(inp, params)
        recipe = {k: v for k, v in out.checkpoint.recipe.items() if k != "pruned"}
        return replace(out, checkpoint=replace(out.checkpoint, recipe=recipe))

    spec = StageSpec(name="prune", params=PruneParams, run=broken)
    monkeypatch.setattr(stages, "get_stage", lambda name: spec)
    request = StageRequest(
        stage="prune",
        params={"ratio": 0.5, "method": "structured"},
        key="k" * 16,
        parent_key="p" * 16,
        task="tests.zoo:mobilenet",
        storage=str(tmp_path),
    )
    parent = mobilenet_teacher.checkpoint.to_bytes()
    with pytest.raises(SqueezerayError, match="stage 'prune'"):
        execute_stage(request, parent, parent)
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize(
    ("quantize", "noise", "refused"),
    [
        ("static_int8", 1.7e-3, False),  # Inductor's int8 rounding (a ViT, compiled)
        ("static_int8", 0.2, True),
        ("dynamic_int8", 1.7e-3, False),
        ("none", 1.7e-3, True),  # a float model: 1e-4 of the largest logit
        ("none", 5e-5, False),
    ],
)
def test_a_runtime_is_held_to_the_round_trips_tolerance_of_its_arithmetic(
    quantize: str, noise: float, refused: bool
) -> None:
    """The export stage's output check (a runtime against the eager model) and the checkpoint
    round trip share one rule: int8 and half-cast models may differ by 1e-2 of the largest
    logit, float ones by 1e-4 (a static_int8 ViT compiled by Inductor differed by 1.7e-3 and
    was an error row)."""
    from stages.export import _check_same_outputs
    from stages.selfcheck import logits_differ

    task = load_task("blobs")
    model = torch.nn.Linear(2, task.num_classes)
    with torch.no_grad():
        model.weight.fill_(0.3)
    x = task.example_input(16)
    expected = model(x)
    shifted = expected + noise

    def predictor(_: Any) -> torch.Tensor:
        return shifted

    ckpt = ModelCheckpoint(
        task="blobs", state_dict={}, recipe={"quantize": quantize, "runtime": "compiled"}
    )
    assert bool(logits_differ(shifted, expected, quantize)) is refused
    if refused:
        with pytest.raises(SqueezerayError, match=r"runtime='compiled' .*max abs difference"):
            _check_same_outputs(task, model, predictor, ckpt)  # type: ignore[arg-type]
    else:
        _check_same_outputs(task, model, predictor, ckpt)  # type: ignore[arg-type]
    assert "shape" in logits_differ(expected[:, :1], expected, quantize)
