"""The lora stage: adapters through the pruning mask, the checked merge, params checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.lora import SPEC, LoraParams, LoRAUpdate, inject_lora, lora, merge_lora
from stages.lowrank import LowRankParams, lowrank
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.tasks import Task, load_task
from stages.training import accuracy, fit

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models: two intra-op threads only add spin-waiting, and under a loaded machine
    # (other test runs on 2 cores) they made this file 25x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("digits")


def _trained(
    task: Task, model: nn.Module, arch: str, *, epochs: int, lr: float = 3e-3, seed: int = 0
) -> ModelCheckpoint:
    fit(model, task.train, task.val, epochs=epochs, lr=lr, batch_size=64, device=CPU, seed=seed)
    return from_model(task, model, {"arch": arch})


@pytest.fixture(scope="module")
def student(task: Task) -> ModelCheckpoint:
    torch.manual_seed(0)  # torch's default seed differs per process
    return _trained(task, task.build("student"), "student", epochs=10)


@pytest.fixture(scope="module")
def weak(task: Task) -> ModelCheckpoint:
    """An undertrained student: LoRA improves it, so its trained adapters are kept (on a
    well-trained one it can only lower validation accuracy, and the start is kept)."""
    torch.manual_seed(1)
    return _trained(task, task.build("student"), "student", epochs=1, lr=1e-3, seed=1)


@pytest.fixture(scope="module")
def masked(task: Task, student: ModelCheckpoint) -> ModelCheckpoint:
    """The student with the smallest half of each Linear weight zeroed (unstructured pruning)."""
    state = {k: v.clone() for k, v in student.state_dict.items()}
    for key, w in state.items():
        if key.endswith("weight"):
            w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0.0
    return ModelCheckpoint(
        task=task.name, state_dict=state, recipe={"arch": "student", "masked": True}
    )


def _ce(rank: int) -> LoraParams:
    return LoraParams(rank=rank, mode="ce", epochs=3)


def _nonzero(ckpt: ModelCheckpoint) -> int:
    return sum(int((v != 0).sum()) for k, v in ckpt.state_dict.items() if k.endswith("weight"))


def _assert_same_structure(a: ModelCheckpoint, b: ModelCheckpoint) -> None:
    assert a.recipe == b.recipe
    assert {k: v.shape for k, v in a.state_dict.items()} == {
        k: v.shape for k, v in b.state_dict.items()
    }


# -- params ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("rank", -1, r"\[0, inf\]"),
        ("rank", 2.5, "integer"),
        ("alpha", 0.0, r"\(0, inf\]"),
        ("epochs", 0, r"\[1, inf\]"),
        ("lr", -1e-3, r"\(0, inf\]"),
        ("batch_size", 0, r"\[1, inf\]"),
        ("mode", "mse", "accepted: ce, kd"),
    ],
)
def test_bad_params_name_key_and_accepted(field: str, value: object, accepted: str) -> None:
    with pytest.raises(SqueezerayError, match=rf"lora\.{field}=.*{accepted}"):
        SPEC.make_params({field: value})


def test_params_defaults_and_spec() -> None:
    assert LoraParams() == LoraParams(
        rank=0, alpha=8.0, epochs=10, lr=5e-3, batch_size=64, mode="kd"
    )
    assert SPEC.name == "lora"
    assert SPEC.param_names() == ["rank", "alpha", "epochs", "lr", "batch_size", "mode"]


# -- the layer and the merge ---------------------------------------------------------------


def test_fresh_adapter_is_the_identity_and_merge_matches(
    task: Task, student: ModelCheckpoint
) -> None:
    model = build_model(task, student)
    x = task.example_input(128)
    with torch.no_grad():
        reference = model(x)
    adapters = inject_lora(model, rank=4, alpha=8.0, masked=False, seed=0)
    assert len(adapters) == 6  # A and B for each of the three Linears
    with torch.no_grad():
        assert torch.equal(model(x), reference)  # B = 0 at the start
        for p in adapters[1::2]:  # give every B a value, as training would
            p.normal_(0.0, 0.05)
        unmerged = model(x)
    assert (unmerged - reference).abs().max() > 1e-2
    check = merge_lora(model, x)
    assert not any(isinstance(m, LoRAUpdate) for m in model.modules())
    assert model.state_dict().keys() == student.state_dict.keys()
    with torch.no_grad():
        assert (model(x) - unmerged).abs().max() <= 1e-5
    assert check.max_abs_diff <= 1e-5 and check.max_abs_diff_fp32 <= 1e-5


def test_merge_check_catches_a_wrong_merge(
    task: Task, student: ModelCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(task, student)
    adapters = inject_lora(model, rank=2, alpha=4.0, masked=False, seed=0)
    with torch.no_grad():
        adapters[1].fill_(0.1)
    # A merge that drops the update no longer reproduces the trained (unmerged) function.
    monkeypatch.setattr(
        "stages.lora._merge_weight",
        lambda holders: [
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            for module, attr in holders
        ],
    )
    with pytest.raises(SqueezerayError, match="merge check failed"):
        merge_lora(model, task.example_input(8))


def test_merge_refuses_non_finite_weights(task: Task, student: ModelCheckpoint) -> None:
    model = build_model(task, student)
    adapters = inject_lora(model, rank=2, alpha=4.0, masked=False, seed=0)
    with torch.no_grad():
        adapters[1].fill_(float("nan"))
    with pytest.raises(SqueezerayError, match="NaN"):
        merge_lora(model, task.example_input(8))


# -- the stage ------------------------------------------------------------------------------


def test_rank_zero_is_a_copy(task: Task, student: ModelCheckpoint) -> None:
    out = lora(StageInput(task=task, parent=student), LoraParams(rank=0))  # kd, but no teacher
    _assert_same_structure(out.checkpoint, student)
    assert all(torch.equal(out.checkpoint.state_dict[k], v) for k, v in student.state_dict.items())
    assert out.metrics["trainable_params"] == 0


def test_trains_merges_and_rebuilds(task: Task, weak: ModelCheckpoint) -> None:
    out = lora(StageInput(task=task, parent=weak), _ce(4))
    _assert_same_structure(out.checkpoint, weak)
    changed = [
        k for k, v in weak.state_dict.items() if not torch.equal(out.checkpoint.state_dict[k], v)
    ]
    assert sorted(changed) == ["net.0.weight", "net.2.weight", "net.4.weight"]  # biases frozen
    assert out.metrics["trainable_params"] == 4 * ((64 + 64) + (64 + 32) + (32 + 10))
    assert out.metrics["merge_max_abs_diff"] <= 1e-5
    rebuilt = build_model(task, out.checkpoint)
    assert out.metrics["val_accuracy"] == accuracy(rebuilt, task.val, device=CPU)


def test_improves_an_undertrained_model(task: Task, weak: ModelCheckpoint) -> None:
    out = lora(StageInput(task=task, parent=weak), LoraParams(rank=4, mode="ce", epochs=5))
    before = accuracy(build_model(task, weak), task.val, device=CPU)
    assert out.metrics["val_accuracy_before"] == before
    assert out.metrics["val_accuracy"] >= before + 0.1


def test_masked_parent_keeps_exactly_its_zeros(task: Task, masked: ModelCheckpoint) -> None:
    out = lora(StageInput(task=task, parent=masked), _ce(4))
    assert out.checkpoint.recipe == masked.recipe
    assert _nonzero(out.checkpoint) == _nonzero(masked)
    for key, w in masked.state_dict.items():
        if key.endswith("weight"):
            new = out.checkpoint.state_dict[key]
            assert torch.equal(new == 0, w == 0), key
            assert not torch.equal(new, w), key  # the surviving weights did move


def test_without_the_mask_the_merge_would_fill_the_zeros(
    task: Task, masked: ModelCheckpoint
) -> None:
    # The same pruned weights, but a recipe that does not say `masked`: a dense B·A fills them.
    unflagged = ModelCheckpoint(
        task=task.name, state_dict=masked.state_dict, recipe={"arch": "student"}
    )
    out = lora(StageInput(task=task, parent=unflagged), _ce(4))
    assert _nonzero(out.checkpoint) > 1.5 * _nonzero(masked)


def test_structurally_smaller_model(task: Task, student: ModelCheckpoint) -> None:
    from stages.prune import PruneParams, prune

    # 64 -> 40 and 32 -> 20 neurons, recorded in the recipe as the prune stage records them
    pruned = prune(StageInput(task=task, parent=student), PruneParams(0.375, "structured"))
    small = pruned.checkpoint
    out = lora(StageInput(task=task, parent=small), _ce(4))
    _assert_same_structure(out.checkpoint, small)
    assert out.checkpoint.state_dict["net.0.weight"].shape == (40, 64)
    assert out.metrics["trainable_params"] == 4 * ((64 + 40) + (40 + 20) + (20 + 10))
    assert out.metrics["merge_max_abs_diff"] <= 1e-5
    rebuilt = build_model(task, out.checkpoint)
    assert out.metrics["val_accuracy"] == accuracy(rebuilt, task.val, device=CPU)


def test_after_lowrank_wraps_the_factors(task: Task, student: ModelCheckpoint) -> None:
    factored = lowrank(StageInput(task=task, parent=student), LowRankParams(rank_ratio=0.25))
    parent = factored.checkpoint
    out = lora(StageInput(task=task, parent=parent), _ce(2))
    _assert_same_structure(out.checkpoint, parent)
    assert out.checkpoint.recipe["lowrank"] == {"net.0": 16, "net.2": 8}
    # Factors net.0.0 (64->16), net.0.1 (16->64), net.2.0 (64->8), net.2.1 (8->32), head 32->10.
    assert out.metrics["trainable_params"] == 2 * (80 + 80 + 72 + 40 + 42)
    assert out.metrics["merge_max_abs_diff"] <= 1e-5
    rebuilt = build_model(task, out.checkpoint)
    assert out.metrics["val_accuracy"] == accuracy(rebuilt, task.val, device=CPU)


def test_kd_mode_needs_and_uses_the_teacher(
    task: Task, student: ModelCheckpoint, weak: ModelCheckpoint
) -> None:
    params = LoraParams(rank=2, mode="kd", epochs=2)
    with pytest.raises(SqueezerayError, match=r"lora\.mode='kd' needs the teacher"):
        run_stage(SPEC, StageInput(task=task, parent=student), params)
    with pytest.raises(SqueezerayError, match="teacher"):  # called without the runner too
        lora(StageInput(task=task, parent=student), params)
    torch.manual_seed(0)
    teacher = _trained(task, task.build("teacher"), "teacher", epochs=3)
    kd = lora(StageInput(task=task, parent=weak, teacher=teacher), params)
    ce = lora(StageInput(task=task, parent=weak), LoraParams(rank=2, mode="ce", epochs=2))
    assert kd.metrics["merge_max_abs_diff"] <= 1e-5
    assert not torch.equal(
        kd.checkpoint.state_dict["net.0.weight"], ce.checkpoint.state_dict["net.0.weight"]
    )


def test_batchnorm_statistics_stay_frozen() -> None:
    task = load_task("digits-cnn")
    torch.manual_seed(0)
    parent = _trained(task, task.build("student"), "student", epochs=1)
    out = lora(StageInput(task=task, parent=parent), LoraParams(rank=2, mode="ce", epochs=1))
    for key, value in parent.state_dict.items():
        if "running_" in key or "num_batches" in key or key.startswith("features"):
            assert torch.equal(out.checkpoint.state_dict[key], value), key
    assert not torch.equal(
        out.checkpoint.state_dict["head.1.weight"], parent.state_dict["head.1.weight"]
    )


def test_determinism_and_parent_untouched(task: Task, masked: ModelCheckpoint) -> None:
    before = {k: v.clone() for k, v in masked.state_dict.items()}
    recipe = dict(masked.recipe)
    params = LoraParams(rank=2, mode="ce", epochs=2)
    a = lora(StageInput(task=task, parent=masked, seed=5), params).checkpoint
    b = lora(StageInput(task=task, parent=masked, seed=5), params).checkpoint
    c = lora(StageInput(task=task, parent=masked, seed=6), params).checkpoint
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)
    assert masked.recipe == recipe
    assert all(torch.equal(masked.state_dict[k], v) for k, v in before.items())


def test_needs_a_float_parent(task: Task, student: ModelCheckpoint) -> None:
    with pytest.raises(SqueezerayError, match="parent"):
        lora(StageInput(task=task, parent=None), LoraParams(rank=2))
    with pytest.raises(SqueezerayError, match="stage 'lora' needs a parent checkpoint"):
        run_stage(SPEC, StageInput(task=task, parent=None), LoraParams(rank=2))
    with pytest.raises(SqueezerayError, match="before quantize"):
        run_stage(
            SPEC,
            StageInput(task=task, parent=student.with_recipe(quantize="static_int8")),
            LoraParams(rank=2),
        )
