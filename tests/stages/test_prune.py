"""The prune stage: sparsity and size, magnitude order, structured shrinking, gradual, masks."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from stages.base import StageInput, StageOutput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.masks import layer_weight, prunable_layers, weight_counts, zero_masks
from stages.prune import SPEC, PruneParams, cubic_schedule, prune, prune_module
from stages.rebuild import build_model
from stages.tasks import Task
from tests.stages.conftest import same_state, snapshot, zstd_size

CPU = torch.device("cpu")
UNSTRUCTURED = ("l1_unstructured", "global", "random")


def _prune(task: Task, parent: ModelCheckpoint, **params: object) -> StageOutput:
    return prune(StageInput(task=task, parent=parent), PruneParams(**params))  # type: ignore[arg-type]


def _weights(task: Task, ckpt: ModelCheckpoint) -> dict[str, torch.Tensor]:
    """{layer name: weight} of the prunable layers of the rebuilt model."""
    model = build_model(task, ckpt)
    return {name: layer_weight(m).detach() for name, m in prunable_layers(model)}


# -- unstructured ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_half_of_the_weights_become_zeros_and_the_file_shrinks(
    digits: Task, digits_student: StageOutput, method: str
) -> None:
    parent = digits_student.checkpoint
    before = snapshot(parent)
    out = _prune(digits, parent, ratio=0.5, method=method)
    ckpt = out.checkpoint

    total, zeros = weight_counts(build_model(digits, ckpt))
    assert zeros / total == pytest.approx(0.5, abs=1e-3)
    assert out.metrics["sparsity"] == pytest.approx(zeros / total)
    assert out.metrics["params_total"] == digits_student.metrics["params_total"]
    assert out.metrics["params_nonzero"] < 0.55 * out.metrics["params_total"]
    assert zstd_size(ckpt) < 0.75 * zstd_size(parent)
    assert ckpt.recipe == {"arch": "student", "masked": True}
    assert not any(k.endswith(("_orig", "_mask")) for k in ckpt.state_dict)
    assert ckpt.state_dict.keys() == parent.state_dict.keys()
    assert all(torch.equal(before[k], parent.state_dict[k]) for k in before)  # parent untouched
    # biases are never pruned
    assert all(
        torch.equal(ckpt.state_dict[k], parent.state_dict[k])
        for k in ckpt.state_dict
        if "bias" in k
    )


def test_l1_zeros_the_smallest_weights_of_each_layer(
    digits: Task, digits_student: StageOutput
) -> None:
    parent = _weights(digits, digits_student.checkpoint)
    pruned = _weights(digits, _prune(digits, digits_student.checkpoint, ratio=0.5).checkpoint)
    for name, w in pruned.items():
        gone = w == 0
        assert gone.float().mean().item() == pytest.approx(0.5, abs=1e-3), name
        assert parent[name][gone].abs().max() <= parent[name][~gone].abs().min(), name
        assert torch.equal(w[~gone], parent[name][~gone]), name  # survivors keep their values


def test_global_ranks_all_layers_together(digits: Task, digits_student: StageOutput) -> None:
    parent = _weights(digits, digits_student.checkpoint)
    pruned = _weights(
        digits, _prune(digits, digits_student.checkpoint, ratio=0.5, method="global").checkpoint
    )
    gone = torch.cat([(w == 0).flatten() for w in pruned.values()])
    magnitudes = torch.cat([w.abs().flatten() for w in parent.values()])
    assert magnitudes[gone].max() <= magnitudes[~gone].min()
    per_layer = [(w == 0).float().mean().item() for w in pruned.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # not the same ratio everywhere


def test_magnitude_beats_random(digits: Task, digits_student: StageOutput) -> None:
    parent = digits_student.checkpoint
    l1 = _prune(digits, parent, ratio=0.7).metrics["val_accuracy"]
    rand = _prune(digits, parent, ratio=0.7, method="random").metrics["val_accuracy"]
    assert l1 > rand + 0.1


def test_random_is_seeded(digits: Task, digits_student: StageOutput) -> None:
    params = PruneParams(ratio=0.5, method="random")
    parent = digits_student.checkpoint
    a, b, c = (prune(StageInput(task=digits, parent=parent, seed=s), params) for s in (1, 1, 2))
    assert same_state(a.checkpoint, b.checkpoint)
    assert not same_state(a.checkpoint, c.checkpoint)


@pytest.mark.parametrize("method", [*UNSTRUCTURED, "structured"])
def test_ratio_zero_is_an_equivalent_copy(
    digits: Task, digits_student: StageOutput, method: str
) -> None:
    out = _prune(digits, digits_student.checkpoint, ratio=0.0, method=method, steps=3)
    assert same_state(out.checkpoint, digits_student.checkpoint)
    assert out.checkpoint.recipe == digits_student.checkpoint.recipe
    assert out.metrics["val_accuracy"] == digits_student.metrics["val_accuracy"]


@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_a_masked_parent_keeps_its_zeros(
    digits: Task, digits_student: StageOutput, method: str
) -> None:
    first = _prune(digits, digits_student.checkpoint, ratio=0.5, method="l1_unstructured")
    old = zero_masks(build_model(digits, first.checkpoint))

    more = _prune(digits, first.checkpoint, ratio=0.7, method=method, steps=2)
    new = zero_masks(build_model(digits, more.checkpoint))
    assert all(not (new[k] & ~old[k]).any() for k in old)  # every old zero is still zero
    assert more.metrics["sparsity"] == pytest.approx(0.7, abs=1e-3)

    # a ratio below the parent's sparsity prunes nothing new and keeps every zero
    fewer = _prune(digits, first.checkpoint, ratio=0.3, method=method)
    assert same_state(fewer.checkpoint, first.checkpoint)


@pytest.mark.parametrize("method", ["l1_unstructured", "global"])
def test_gradual_reaches_the_target_and_keeps_accuracy(
    digits: Task, digits_student: StageOutput, method: str
) -> None:
    one_shot = _prune(digits, digits_student.checkpoint, ratio=0.8, method=method)
    gradual = _prune(digits, digits_student.checkpoint, ratio=0.8, method=method, steps=3)
    assert gradual.metrics["sparsity"] == pytest.approx(0.8, abs=1e-3)
    # fine-tuning between steps lets the network adapt before the next cut
    assert gradual.metrics["val_accuracy"] > one_shot.metrics["val_accuracy"]


def test_cubic_schedule() -> None:
    schedule = cubic_schedule(0.8, 4)
    assert len(schedule) == 5
    assert schedule[0] == 0.0
    assert schedule[-1] == pytest.approx(0.8)
    increments = [b - a for a, b in itertools.pairwise(schedule)]
    assert all(x > 0 for x in increments)
    assert increments == sorted(increments, reverse=True)  # big cuts first
    assert cubic_schedule(0.5, 1) == [0.0, 0.5]


# -- structured ------------------------------------------------------------------------------


def _logits(model: nn.Module, task: Task) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(task.example_input(64))  # type: ignore[no-any-return]


@pytest.mark.parametrize("task_fixture", ["digits", "digits_cnn"])
@pytest.mark.parametrize("steps", [1, 3])
def test_structured_shrinks_and_rebuilds_exactly(
    request: pytest.FixtureRequest, task_fixture: str, steps: int
) -> None:
    task: Task = request.getfixturevalue(task_fixture)
    parent = request.getfixturevalue(
        "digits_student" if task_fixture == "digits" else "cnn_teacher"
    ).checkpoint
    params = PruneParams(ratio=0.5, method="structured", steps=steps, finetune_epochs=1)

    model = build_model(task, parent)
    history = prune_module(model, task, params, device=CPU, seed=0)
    assert history and all(isinstance(name, str) for name, _out, _idxs in history)
    ckpt = from_model(task, model, {**parent.recipe, "pruned": history})
    rebuilt = build_model(task, ModelCheckpoint.from_bytes(ckpt.to_bytes()))
    assert torch.equal(_logits(rebuilt, task), _logits(model, task))
    assert _logits(rebuilt, task).shape == (64, task.num_classes)

    parent_shapes = {k: v.shape for k, v in parent.state_dict.items()}
    shapes = {k: v.shape for k, v in ckpt.state_dict.items()}
    assert shapes.keys() == parent_shapes.keys()
    hidden = [n for n, _ in prunable_layers(rebuilt)][:-1]
    for name in hidden:  # every layer but the classifier lost half its outputs
        assert shapes[f"{name}.weight"][0] == parent_shapes[f"{name}.weight"][0] // 2, name
    classifier = [n for n, _ in prunable_layers(rebuilt)][-1]
    assert shapes[f"{classifier}.weight"][0] == task.num_classes

    out = prune(StageInput(task=task, parent=parent), params)
    assert same_state(out.checkpoint, ckpt)  # the stage does exactly this
    # no "masked": the recorded groups carry the pruning
    assert out.checkpoint.recipe == {**parent.recipe, "pruned": history}
    total = sum(v.numel() for k, v in parent.state_dict.items() if "running" not in k)
    assert out.metrics["params_total"] < 0.5 * total
    assert out.metrics["sparsity"] == 0.0


def test_structured_conv_keeps_batchnorm_consistent(
    digits_cnn: Task, cnn_teacher: StageOutput
) -> None:
    out = _prune(digits_cnn, cnn_teacher.checkpoint, ratio=0.5, method="structured")
    sd = out.checkpoint.state_dict
    for conv, bn in (("features.0", "features.1"), ("features.4", "features.5")):
        channels = sd[f"{conv}.weight"].shape[0]
        assert sd[f"{conv}.bias"].shape == (channels,)  # conv biases follow their channels
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert sd[f"{bn}.{key}"].shape == (channels,), (bn, key)
    assert sd["features.4.weight"].shape[1] == sd["features.0.weight"].shape[0]
    assert out.metrics["val_accuracy"] > 0.5


def test_structured_extreme_ratio_keeps_one_channel(
    digits_cnn: Task, cnn_teacher: StageOutput
) -> None:
    out = _prune(digits_cnn, cnn_teacher.checkpoint, ratio=0.99, method="structured")
    sd = out.checkpoint.state_dict
    assert sd["features.0.weight"].shape[0] == 1  # 32 -> 1, not skipped or emptied
    assert sd["features.4.weight"].shape[0] == 1
    assert sd["head.3.weight"].shape[0] == digits_cnn.num_classes


# -- params ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ratio", 1.0, "prune.ratio=1.0 is out of range; accepted: [0, 1)"),
        ("ratio", -0.1, "prune.ratio=-0.1 is out of range; accepted: [0, 1)"),
        ("steps", 0, "prune.steps=0 is out of range; accepted: [1, inf]"),
        ("finetune_epochs", -1, "prune.finetune_epochs=-1 is out of range; accepted: [0, inf]"),
        ("lr", 0.0, "prune.lr=0.0 is out of range; accepted: (0, inf]"),
        ("method", "l2", "prune.method='l2' is not accepted"),
    ],
)
def test_params_out_of_range(field: str, value: object, message: str) -> None:
    with pytest.raises(SqueezerayError) as info:
        PruneParams(**{field: value})  # type: ignore[arg-type]
    assert message in str(info.value)


def test_method_error_lists_the_methods() -> None:
    with pytest.raises(
        SqueezerayError, match="accepted: l1_unstructured, global, structured, random"
    ):
        PruneParams(method="magnitude")


def test_spec_and_defaults() -> None:
    assert SPEC.name == "prune"
    assert SPEC.needs_parent is True
    assert PruneParams() == PruneParams(
        ratio=0.5, method="l1_unstructured", steps=1, finetune_epochs=2, lr=1e-3
    )
    with pytest.raises(SqueezerayError, match=r"prune\.ratios .*did you mean prune\.ratio"):
        SPEC.make_params({"ratios": 0.5})


def test_needs_a_parent(digits: Task) -> None:
    with pytest.raises(SqueezerayError, match="needs a parent"):
        prune(StageInput(task=digits, parent=None), PruneParams())
