"""Pruning on layer kinds a user test found faults with: grouped convs + squeeze-excite,
attention heads, LSTM/GRU, unstructured pruning of RNN models, lowrank after unstructured.

Every stage runs through `stages.runner.run_stage`, as in a sweep: its checkpoint must
rebuild into the same function.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput, StageOutput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.lowrank import SPEC as LOWRANK
from stages.lowrank import LowRankParams
from stages.prune import SPEC as PRUNE
from stages.prune import PruneParams
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.tasks import Task
from tests.stages.transformer_task import TokenTransformer

VOCAB, SEQ = 20, 6


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class GroupedNet(nn.Module):
    """The user's MobileNet-style block: grouped conv (groups=4), depthwise conv, SE."""

    def __init__(self, w: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.block = nn.Sequential(
            nn.Conv2d(w, 2 * w, 3, padding=1, groups=4, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2 * w, bias=False),
            nn.BatchNorm2d(2 * w),
            SE(2 * w),
            nn.Conv2d(2 * w, 2 * w, 1, bias=False),
        )
        self.head = nn.Linear(2 * w, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


class RNNNet(nn.Module):
    def __init__(self, kind: type[nn.RNNBase], h: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.rnn = kind(16, h, batch_first=True)
        self.cls = nn.Linear(h, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(ids))
        return self.cls(out.mean(1))


def _task(name: str, model: type[nn.Module] | object, x: torch.Tensor, classes: int) -> Task:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (len(x),), generator=g)
    ds = TensorDataset(x, y)
    return Task(
        name=name,
        teacher=model,
        student=model,
        train=ds,
        val=ds,
        test=ds,  # type: ignore[arg-type]
        num_classes=classes,
    )


def _images() -> torch.Tensor:
    return torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (32, SEQ), generator=torch.Generator().manual_seed(1))


def _parent(task: Task) -> ModelCheckpoint:
    torch.manual_seed(0)
    return from_model(task, task.build("student"), {"arch": "student"})


def _run(task: Task, parent: ModelCheckpoint, **params: object) -> StageOutput:
    out, _ = run_stage(PRUNE, StageInput(task=task, parent=parent), PruneParams(**params))  # type: ignore[arg-type]
    return out


# -- 1. grouped convs --------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_structured_grouped_conv_keeps_channels_divisible_by_groups(steps: int) -> None:
    """Fault: out_channels not divisible by groups at rebuild; with steps 2, torch-pruning's
    importance indexed out of range once the grouped conv had one input per group."""
    task = _task("grouped", GroupedNet, _images(), 3)
    parent = _parent(task)
    out = _run(task, parent, ratio=0.3, method="structured", steps=steps, finetune_epochs=1)
    before = sum(p.numel() for p in build_model(task, parent).parameters())
    assert out.metrics["params_total"] < before
    rebuilt = build_model(task, out.checkpoint)
    convs = [m for m in rebuilt.modules() if isinstance(m, nn.Conv2d)]
    grouped = rebuilt.block[0]
    assert grouped.groups == 4 and grouped.out_channels < 16
    for conv in convs:
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
    assert rebuilt.block[3].groups == rebuilt.block[3].out_channels  # still depthwise


def test_structured_extreme_ratio_keeps_one_channel_per_group() -> None:
    """ratio 0.95 left the grouped conv at 16 channels (its per-group count rounded to 0)."""
    task = _task("grouped", GroupedNet, _images(), 3)
    out = _run(task, _parent(task), ratio=0.95, method="structured")
    grouped = build_model(task, out.checkpoint).block[0]
    assert (grouped.groups, grouped.out_channels) == (4, 4)


# -- 2. attention heads ------------------------------------------------------------------------


def test_structured_transformer_keeps_embed_dim_a_multiple_of_heads() -> None:
    task = _task(
        "attn",
        lambda: TokenTransformer(d_model=16, heads=4, ff=32, layers=1),
        torch.randint(0, 24, (32, 12), generator=torch.Generator().manual_seed(1)),
        3,
    )
    out = _run(task, _parent(task), ratio=0.3, method="structured")
    rebuilt = build_model(task, out.checkpoint)
    (mha,) = [m for m in rebuilt.modules() if isinstance(m, nn.MultiheadAttention)]
    assert mha.num_heads == 4 and mha.embed_dim < 16 and mha.embed_dim % 4 == 0


# -- 3. LSTM / GRU structured -------------------------------------------------------------------


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_structured_rnn_says_it_removed_nothing(kind: type[nn.RNNBase]) -> None:
    """Fault: LSTM crashed with IndexError inside torch-pruning; GRU said so clearly."""
    task = _task(kind.__name__, lambda: RNNNet(kind), _ids(), 2)
    with pytest.raises(SqueezerayError, match=rf"removed no channel.*{kind.__name__} x1"):
        _run(task, _parent(task), ratio=0.3, method="structured")


class PooledGRU(nn.Module):
    """newuser8's GRU classifier: masked mean and max of the outputs concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.rnn = nn.GRU(16, 16, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(ids))
        mask = (ids != 0).unsqueeze(-1).float()
        mean = (out * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.cat([mean, out.max(1).values], -1))


def test_a_layout_torch_pruning_cannot_trace_is_an_error_naming_the_layers() -> None:
    """newuser8 F-GRU-1: torch-pruning's graph build fails on a GRU's outputs into torch.cat
    (a TypeError inside torch-pruning, raised from MetaPruner's constructor, escaped as a raw
    traceback from validate). It is the stage's SqueezerayError naming the model's layers."""
    task = _task("gru_cat", PooledGRU, _ids(), 2)
    with pytest.raises(SqueezerayError) as err:
        _run(task, _parent(task), ratio=0.5, method="structured")
    message = str(err.value)
    assert "torch-pruning could not prune this model" in message, message
    assert "while building its dependency graph: TypeError" in message, message
    assert "GRU x1" in message, message


def test_a_graph_torch_pruning_cannot_build_is_refused_before_the_sweep() -> None:
    """The graph build fails the same at every ratio: the pre-flight refuses the student made
    from the teacher (validate said ok, then every trial failed in distill)."""
    from stages.precheck import check_pruned_widths

    task = dataclasses.replace(_task("gru_cat", PooledGRU, _ids(), 2), student=None)
    with pytest.raises(SqueezerayError) as err:
        check_pruned_widths(task, ["teacher", "distill"], {"distill.student_ratio": [0.5]})
    message = str(err.value)
    assert message.startswith("task 'gru_cat': distill.student_ratio=0.5"), message
    assert "while building its dependency graph" in message, message
    assert "distill.student_ratio: 1" in message, message  # the fix


# -- 4. unstructured on RNN models ------------------------------------------------------------


@pytest.mark.parametrize("method", ["l1_unstructured", "global"])
def test_unstructured_on_an_rnn_model_is_an_error_naming_the_layers(method: str) -> None:
    task = _task("lstm", lambda: RNNNet(nn.LSTM), _ids(), 2)
    with pytest.raises(
        SqueezerayError, match=r"almost nothing.*LSTM \(\d+ parameters\).*Embedding"
    ):
        _run(task, _parent(task), ratio=0.5, method=method)


def test_unstructured_reports_the_share_it_could_prune() -> None:
    """An Embedding + Linear model: prunes its Linears, and says how much of the model that is."""

    class EmbMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 8)
            self.mlp = nn.Sequential(nn.Linear(8 * SEQ, 32), nn.ReLU(), nn.Linear(32, 2))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.mlp(self.emb(ids).flatten(1))

    task = _task("emb", EmbMLP, _ids(), 2)
    out = _run(task, _parent(task), ratio=0.5, method="l1_unstructured")
    linear = (8 * SEQ) * 32 + 32 * 2
    total = out.metrics["params_total"]
    assert out.metrics["prunable_share"] == pytest.approx(linear / total)
    assert out.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert out.metrics["model_sparsity"] == pytest.approx(
        (total - out.metrics["params_nonzero"]) / total
    )
    assert out.metrics["model_sparsity"] < out.metrics["sparsity"]


# -- 5. lowrank after unstructured pruning -----------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _lowrank(task: Task, parent: ModelCheckpoint) -> StageOutput:
    params = LowRankParams(rank_ratio=0.25, min_features=4, epochs=1)
    out, _ = run_stage(LOWRANK, StageInput(task=task, parent=parent), params)
    return out


def test_lowrank_refuses_to_densify_an_unstructured_pruned_parent() -> None:
    """Fault: params_nonzero 1226/2410 became 1788/1788 (every layer factorised densely)."""
    task = _task("mlp", MLP, _images(), 3)
    pruned = _run(task, _parent(task), ratio=0.5, method="l1_unstructured").checkpoint
    with pytest.raises(SqueezerayError, match=r"stage 'prune'.*dense.*prune.method: structured"):
        _lowrank(task, pruned)


def test_lowrank_factorises_only_the_layers_without_pruned_zeros() -> None:
    task = _task("mlp", MLP, _images(), 3)
    parent = _parent(task)
    state = {k: v.clone() for k, v in parent.state_dict.items()}
    w = state["net.0.weight"]
    w[w.abs() < w.abs().median()] = 0.0  # only the first layer is pruned
    masked = dataclasses.replace(parent, state_dict=state, recipe={**parent.recipe, "masked": True})
    out = _lowrank(task, masked)
    assert out.metrics["layers_skipped_sparse"] == 1
    assert set(out.checkpoint.recipe["lowrank"]) == {"net.2"}  # net.4: too small to save
    kept = build_model(task, out.checkpoint).net[0].weight
    assert torch.equal(kept == 0, w == 0)  # its zeros survived the fine-tune
    assert out.checkpoint.recipe["masked"] is True


def test_unstructured_on_an_rnn_model_is_refused_up_front() -> None:
    from stages.precheck import check_stages_apply

    task = _task("gru", lambda: RNNNet(nn.GRU), _ids(), 2)
    pipeline = ["teacher", "prune"]
    with pytest.raises(SqueezerayError, match=r"prune.method='global' cannot apply.*GRU \("):
        check_stages_apply(task, pipeline, {"prune.method": ["global"], "prune.ratio": [0.5]})
    check_stages_apply(task, pipeline, {"prune.method": ["structured"], "prune.ratio": [0.5]})
    check_stages_apply(task, pipeline, {"prune.method": ["global"], "prune.ratio": [0.0]})
