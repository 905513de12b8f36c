"""The one keep-zeros helper (`stages.masks.keep_zeros`) that every training stage uses on a
masked (unstructured-pruned) model: pruned weights stay exactly +0.0 through training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.errors import SqueezerayError
from stages.masks import keep_mask, keep_masks, keep_zeros, zero_masks


def _pruned_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight[layer.weight.abs() < layer.weight.abs().median()] = 0.0
        net[0].weight[0, 0] = -0.0  # a negative zero counts as pruned
    return net


def test_keep_mask_counts_negative_zero_as_pruned() -> None:
    w = torch.tensor([[1.0, 0.0, -0.0, -2.0]])
    assert keep_mask(w).tolist() == [[True, False, False, True]]


def test_training_keeps_pruned_weights_at_exactly_positive_zero() -> None:
    net = _pruned_net()
    masks = zero_masks(net)
    pruned = {name: int((~m).sum()) for name, m in masks.items()}
    assert all(pruned.values())
    before = {name: net.get_submodule(name).weight.detach().clone() for name in masks}
    after_step = keep_masks(net, masks)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):
        loss = net(torch.randn(8, 6)).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after_step()
    for name, mask in masks.items():
        weight = net.get_submodule(name).weight.detach()
        assert bool((weight[~mask] == 0).all()), name
        assert not bool(torch.signbit(weight[~mask]).any()), f"{name}: -0.0 left"
        assert not torch.equal(weight[mask], before[name][mask]), f"{name} did not train"


def test_keep_zeros_takes_any_weights_matched_by_the_caller() -> None:
    # quantize's QAT matches fake-quantized parameters to the parent's zeros by name
    weight = nn.Parameter(torch.tensor([[3.0, -1.0], [2.0, 4.0]]))
    saved = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    keep_zeros([(weight, keep_mask(saved))])()
    assert weight.detach().tolist() == [[3.0, 0.0], [0.0, 4.0]]


def test_a_mask_of_another_shape_is_refused_naming_the_layer() -> None:
    net = _pruned_net()
    masks = zero_masks(net)
    masks["2"] = masks["2"][:, :4]  # taken before a structural change
    with pytest.raises(SqueezerayError, match=r"mask for layer '2' has shape \(3, 4\)"):
        keep_masks(net, masks)
    with pytest.raises(SqueezerayError, match="keep-mask has shape"):
        keep_zeros([(net[2].weight, masks["2"])])
