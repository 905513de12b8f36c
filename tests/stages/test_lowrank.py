"""The lowrank stage: SVD factorisation, recipe replay through build_model, params checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.lowrank import (
    SPEC,
    LowRankParams,
    count_params,
    lowrank,
    svd_factorize,
)
from stages.rebuild import build_model, factorize_layers
from stages.runner import run_stage
from stages.surgery import set_submodule
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


def _trained(task: Task, arch: str, *, epochs: int, seed: int = 0) -> ModelCheckpoint:
    torch.manual_seed(seed)  # torch's default seed differs per process
    model = task.build(arch)
    fit(model, task.train, task.val, epochs=epochs, lr=3e-3, batch_size=64, device=CPU, seed=seed)
    return from_model(task, model, {"arch": arch})


@pytest.fixture(scope="module")
def student(task: Task) -> ModelCheckpoint:
    return _trained(task, "student", epochs=10)


@pytest.fixture(scope="module")
def teacher(task: Task) -> ModelCheckpoint:
    return _trained(task, "teacher", epochs=6)


def _logits(task: Task, ckpt: ModelCheckpoint) -> torch.Tensor:
    with torch.no_grad():
        return build_model(task, ckpt)(task.example_input(64))  # type: ignore[no-any-return]


def _expected_rank(layer: nn.Linear, ratio: float) -> int:
    return max(1, round(ratio * min(layer.in_features, layer.out_features)))


# -- params ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0, 0.0, -0.25, 1.5, 1.0001])
def test_rank_ratio_out_of_range_names_key_and_range(ratio: float) -> None:
    with pytest.raises(SqueezerayError, match=r"lowrank\.rank_ratio=.*accepted: \(0, 1\]"):
        LowRankParams(rank_ratio=ratio)


@pytest.mark.parametrize(
    ("field", "value"), [("min_features", 0), ("epochs", -1), ("min_features", 2.5)]
)
def test_other_params_rejected(field: str, value: float) -> None:
    with pytest.raises(SqueezerayError, match=rf"lowrank\.{field}="):
        SPEC.make_params({field: value})


def test_params_defaults_and_spec() -> None:
    assert LowRankParams() == LowRankParams(rank_ratio=1.0, min_features=16, epochs=0)
    assert SPEC.name == "lowrank" and SPEC.param_names() == ["rank_ratio", "min_features", "epochs"]
    LowRankParams(rank_ratio=1e-3)  # the open lower end is accepted just above 0


# -- behaviour -------------------------------------------------------------------------------


def test_quarter_rank_cuts_params_and_rebuilds_exactly(
    task: Task, student: ModelCheckpoint
) -> None:
    out = lowrank(StageInput(task=task, parent=student), LowRankParams(rank_ratio=0.25))
    parent_model = build_model(task, student)
    linears = {n: m for n, m in parent_model.named_modules() if isinstance(m, nn.Linear)}
    # min_features=16 leaves the 32->10 head alone; the others shrink.
    expected = {
        n: _expected_rank(m, 0.25)
        for n, m in linears.items()
        if min(m.in_features, m.out_features) >= 16
    }
    assert out.checkpoint.recipe == {"arch": "student", "lowrank": expected}
    assert out.metrics["params_total_before"] == count_params(parent_model)
    assert out.metrics["params_total_after"] < 0.6 * out.metrics["params_total_before"]

    rebuilt = build_model(task, out.checkpoint)
    assert count_params(rebuilt) == out.metrics["params_total_after"]
    # The reference: the same truncated SVD applied by hand to the parent.
    for name, rank in expected.items():
        set_submodule(parent_model, name, svd_factorize(linears[name], rank))
    x = task.example_input(64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), parent_model(x))
    # ... and through bytes (weights_only load) the outputs stay identical.
    reloaded = ModelCheckpoint.from_bytes(out.checkpoint.to_bytes())
    assert torch.equal(_logits(task, reloaded), _logits(task, out.checkpoint))
    assert out.metrics["val_accuracy"] == accuracy(rebuilt, task.val, device=CPU)


def test_factor_product_is_the_best_rank_r_approximation(task: Task) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(48, 32)
    seq = svd_factorize(layer, 8)
    down, up = seq[0], seq[1]
    assert isinstance(down, nn.Linear) and isinstance(up, nn.Linear)
    product = up.weight @ down.weight  # (out, r) @ (r, in)
    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    best = (u[:, :8] * s[:8]) @ vh[:8]
    assert torch.allclose(product.double(), best, atol=1e-5)
    assert torch.equal(up.bias, layer.bias)
    assert down.bias is None
    # Full rank reproduces the layer itself.
    full = svd_factorize(layer, 32)
    x = torch.randn(5, 48)
    with torch.no_grad():
        assert torch.allclose(full(x), layer(x), atol=1e-5)


def test_half_rank_keeps_accuracy(task: Task, teacher: ModelCheckpoint) -> None:
    out = lowrank(StageInput(task=task, parent=teacher), LowRankParams(rank_ratio=0.5))
    before = accuracy(build_model(task, teacher), task.val, device=CPU)
    assert out.metrics["layers_factorized"] == 2  # 64->256 and 256->128; head 128->10 too small
    assert out.metrics["params_total_after"] < out.metrics["params_total_before"]
    assert out.metrics["val_accuracy"] >= before - 0.03


def test_rank_ratio_one_is_a_copy(task: Task, student: ModelCheckpoint) -> None:
    out = lowrank(StageInput(task=task, parent=student), LowRankParams(rank_ratio=1.0, epochs=3))
    assert out.checkpoint.recipe == student.recipe
    assert out.checkpoint.state_dict.keys() == student.state_dict.keys()
    for key, value in student.state_dict.items():
        assert torch.equal(out.checkpoint.state_dict[key], value)
    assert out.metrics["params_total_before"] == out.metrics["params_total_after"]


def test_no_reduction_means_no_factorisation(task: Task, student: ModelCheckpoint) -> None:
    # 0.5 of a 64x64 layer is r=32: 32*(64+64) = 64*64, no saving, so it stays a Linear.
    out = lowrank(StageInput(task=task, parent=student), LowRankParams(rank_ratio=0.5))
    assert "net.0" not in out.checkpoint.recipe["lowrank"]
    assert "net.0.weight" in out.checkpoint.state_dict
    assert "net.2.0.weight" in out.checkpoint.state_dict  # 64->32 at r=16 does save


def test_min_features_leaves_small_layers(task: Task, student: ModelCheckpoint) -> None:
    params = LowRankParams(rank_ratio=0.25, min_features=40)
    out = lowrank(StageInput(task=task, parent=student), params)
    assert out.checkpoint.recipe["lowrank"] == {"net.0": 16}  # 64x64 only; 64->32 has min 32


def test_factorising_again_merges_the_recipe(task: Task, student: ModelCheckpoint) -> None:
    first = lowrank(
        StageInput(task=task, parent=student), LowRankParams(rank_ratio=0.25, min_features=40)
    ).checkpoint
    second = lowrank(StageInput(task=task, parent=first), LowRankParams(rank_ratio=0.25))
    ranks = second.checkpoint.recipe["lowrank"]
    # The earlier entry is kept and the factors themselves are factorised again (nested names).
    assert ranks["net.0"] == 16
    assert ranks["net.0.0"] == 4 and ranks["net.0.1"] == 4 and ranks["net.2"] == 8
    rebuilt = build_model(task, second.checkpoint)
    assert isinstance(rebuilt.get_submodule("net.0.0"), nn.Sequential)
    assert second.metrics["val_accuracy"] == accuracy(rebuilt, task.val, device=CPU)


def test_finetune_recovers_accuracy(task: Task, teacher: ModelCheckpoint) -> None:
    params = LowRankParams(rank_ratio=0.1, epochs=3)
    out = lowrank(StageInput(task=task, parent=teacher), params)
    assert out.metrics["val_accuracy"] > out.metrics["val_accuracy_svd"]


def test_masked_parent_keeps_zeros_of_untouched_layers(
    task: Task, student: ModelCheckpoint
) -> None:
    state = {k: v.clone() for k, v in student.state_dict.items()}
    for key, w in state.items():
        if key == "net.4.weight":  # a layer with pruned zeros is not factorised (see
            # test_prune_layer_kinds): only the head is pruned here
            w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0.0
    masked = ModelCheckpoint(
        task=task.name, state_dict=state, recipe={"arch": "student", "masked": True}
    )
    out = lowrank(StageInput(task=task, parent=masked), LowRankParams(rank_ratio=0.25, epochs=2))
    assert out.checkpoint.recipe["masked"] is True
    head = out.checkpoint.state_dict["net.4.weight"]  # 32->10: below min_features, not factorised
    assert torch.equal(head == 0, state["net.4.weight"] == 0)
    assert not torch.equal(head, state["net.4.weight"])  # the fine-tune did train it


def test_conv_task_head_factorised_and_rebuilt() -> None:
    task = load_task("digits-cnn")
    torch.manual_seed(0)
    parent = from_model(task, task.build("teacher"), {"arch": "teacher"})
    out = lowrank(StageInput(task=task, parent=parent), LowRankParams(rank_ratio=0.25))
    assert set(out.checkpoint.recipe["lowrank"]) == {"head.1"}  # 256->128; 128->10 too small
    rebuilt = build_model(task, out.checkpoint)
    assert out.metrics["val_accuracy"] == accuracy(rebuilt, task.val, device=CPU)


def test_determinism_and_parent_untouched(task: Task, student: ModelCheckpoint) -> None:
    before = {k: v.clone() for k, v in student.state_dict.items()}
    recipe = dict(student.recipe)
    params = LowRankParams(rank_ratio=0.25, epochs=2)
    a = lowrank(StageInput(task=task, parent=student, seed=7), params).checkpoint
    b = lowrank(StageInput(task=task, parent=student, seed=7), params).checkpoint
    c = lowrank(StageInput(task=task, parent=student, seed=8), params).checkpoint
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)
    assert student.recipe == recipe
    assert all(torch.equal(student.state_dict[k], v) for k, v in before.items())


def test_factorize_layers_rejects_bad_recipes(task: Task) -> None:
    with pytest.raises(SqueezerayError, match="does not have"):
        factorize_layers(task.build("student"), {"net.9": 4})
    with pytest.raises(SqueezerayError, match="ReLU"):
        factorize_layers(task.build("student"), {"net.1": 4})
    with pytest.raises(SqueezerayError, match=r"accepted: \[1, 64\]"):
        factorize_layers(task.build("student"), {"net.0": 65})


def test_needs_a_float_parent(task: Task, student: ModelCheckpoint) -> None:
    with pytest.raises(SqueezerayError, match="parent"):
        lowrank(StageInput(task=task, parent=None), LowRankParams(rank_ratio=0.5))
    quantized = student.with_recipe(quantize="dynamic_int8")
    with pytest.raises(SqueezerayError, match="before quantize"):
        run_stage(SPEC, StageInput(task=task, parent=quantized), LowRankParams(rank_ratio=0.5))
