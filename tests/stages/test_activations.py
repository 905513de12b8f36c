"""Activation memory of a training step, counted from autograd's saved tensors."""

from __future__ import annotations

import torch
from torch import nn

from stages.activations import training_activation_bytes


def test_an_mlp_saves_its_hidden_activation_once_and_no_weights_or_inputs() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    got = training_activation_bytes(model, x)
    hidden = 5 * 8 * 4  # ReLU's output, saved by ReLU and by the second Linear: one storage
    logits = 5 * 3 * 4
    assert got == hidden + logits
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_activations_grow_with_the_batch_and_not_with_the_weights() -> None:
    wide = nn.Sequential(nn.Linear(16, 512), nn.ReLU(), nn.Linear(512, 2))
    small = training_activation_bytes(wide, torch.randn(2, 16))
    large = training_activation_bytes(wide, torch.randn(64, 16))
    assert large == 32 * small  # linear in the batch
    weights = sum(p.numel() * 4 for p in wide.parameters())
    assert small < weights  # the 34 KB of weights are not counted


def test_named_inputs_and_an_attention_model() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.head = nn.Linear(16, 3)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.layer(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
            return self.head(h[:, 0])

    ids = torch.randint(0, 50, (4, 10))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    got = training_activation_bytes(Encoder(), x)
    assert got > 4 * 10 * 16 * 4 * 4  # several (4, 10, 16) float activations at least


def test_measuring_keeps_nothing_alive_after_it_returns() -> None:
    """The pack hook returned each saved tensor, so the graph held its own outputs (tensor ->
    grad_fn -> packed tensor), a cycle through C++ the collector cannot free: the sweep's
    driver kept a training step's activations and the model's weights (30M BERT: ~760 MiB)
    to its end."""
    import gc
    import weakref

    def graphs() -> int:
        gc.collect()
        return sum(isinstance(o, torch.Tensor) and o.grad_fn is not None for o in gc.get_objects())

    before = graphs()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 3))
    weight = weakref.ref(model[0].weight)
    assert training_activation_bytes(model, torch.randn(8, 16)) > 0
    del model
    assert graphs() == before  # no tensor of the measured forward pass survives it
    assert weight() is None  # nor the parameter the graph's AccumulateGrad held
