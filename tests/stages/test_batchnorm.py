"""`normalises_over_batch` answers for eager BatchNorm modules (every kind, Hugging Face models
included) and for graphs that hold batch norm as an op (torch.export, FX, PT2E QAT), and the
PT2E QAT graph's `.eval()` really stops normalising over the batch.

Before, the rule read only `nn.BatchNorm` modules in training mode: a PT2E QAT graph (no such
modules) trained on a last batch of one and wrote NaN into its running variance."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.batchnorm import normalises_over_batch
from stages.training import accuracy, drops_last_batch


def _mlp(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), norm, nn.ReLU(), nn.Linear(8, 3))


def _conv(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


EAGER = [
    pytest.param(lambda: _mlp(nn.BatchNorm1d(8)), id="BatchNorm1d"),
    pytest.param(lambda: _conv(nn.BatchNorm2d(4)), id="BatchNorm2d"),
    pytest.param(lambda: nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2)), id="BatchNorm3d"),
    pytest.param(lambda: _conv(nn.SyncBatchNorm(4)), id="SyncBatchNorm"),
    pytest.param(lambda: _mlp(nn.LazyBatchNorm1d()), id="LazyBatchNorm1d"),
]


@pytest.mark.parametrize("build", EAGER)
def test_an_eager_batchnorm_normalises_over_the_batch_in_training_mode_only(build) -> None:
    model = build()
    assert normalises_over_batch(model.train())
    assert not normalises_over_batch(model.eval())


def test_a_batchnorm_without_running_statistics_normalises_over_the_batch_in_eval_too() -> None:
    # _BatchNorm.forward uses batch statistics when it has no running ones, in any mode (a
    # frozen base in LoRA's training is in eval mode and still fails on a batch of one)
    model = _mlp(nn.BatchNorm1d(8, track_running_stats=False)).eval()
    assert normalises_over_batch(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 4))


def test_models_without_batch_normalisation_do_not() -> None:
    for model in (_mlp(nn.LayerNorm(8)), _conv(nn.GroupNorm(2, 4)), _conv(nn.InstanceNorm2d(4))):
        assert not normalises_over_batch(model.train())


def test_a_hugging_face_model_with_batchnorm() -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=1, embedding_size=4, hidden_sizes=[4], depths=[1], num_labels=3
    )
    model = ResNetForImageClassification(config)
    assert normalises_over_batch(model.train())
    assert not normalises_over_batch(model.eval())


class _FunctionalBN(nn.Module):
    """Batch norm called as a function (no BatchNorm module): visible only in a graph."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(4))
        self.register_buffer("var", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.mean, self.var, training=self.training)


def test_an_fx_graph_with_a_functional_batch_norm() -> None:
    traced_train = torch.fx.symbolic_trace(_FunctionalBN().train())
    traced_eval = torch.fx.symbolic_trace(_FunctionalBN().eval())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in traced_train.modules())
    assert normalises_over_batch(traced_train)
    assert not normalises_over_batch(traced_eval)


@pytest.mark.parametrize("build", [EAGER[0], EAGER[1]])
def test_an_exported_graph_normalises_over_the_batch_as_it_was_exported(build) -> None:
    model = build()
    x = torch.randn(2, 4) if isinstance(model[0], nn.Linear) else torch.randn(2, 1, 8, 8)
    trained = torch.export.export(model.train(), (x,))
    evaluated = torch.export.export(model.eval(), (x,))
    # the exported module has no BatchNorm module: the op in the graph is what counts
    gm = trained.module()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())
    assert normalises_over_batch(gm)
    assert not normalises_over_batch(evaluated.module())
    # an unflattened program keeps each submodule's graph in its own InterpreterModule
    unflat = torch.export.unflatten(trained)
    assert not any(
        isinstance(n.target, torch._ops.OpOverload) and "batch_norm" in str(n.target)
        for n in unflat.graph.nodes
    )
    assert normalises_over_batch(unflat)
    # the core-ATen forms after decomposition (_native_batch_norm_legit_functional /
    # _no_training)
    assert normalises_over_batch(trained.run_decompositions().module())
    assert not normalises_over_batch(evaluated.run_decompositions().module())


def test_an_exported_batchnorm_without_running_statistics() -> None:
    model = _mlp(nn.BatchNorm1d(8, track_running_stats=False)).eval()
    program = torch.export.export(model, (torch.randn(2, 4),))
    assert normalises_over_batch(program.module())
    decomposed = program.run_decompositions()  # _native_batch_norm_legit.no_stats
    assert normalises_over_batch(decomposed.module())


@pytest.fixture(scope="module")
def qat_graph() -> nn.Module:
    """A conv+BatchNorm model prepared for PT2E QAT by the quantize stage's own code."""
    from stages.pt2e import prepare

    torch.manual_seed(0)
    model = _conv(nn.BatchNorm2d(4)).eval()
    return prepare(model, torch.randn(2, 1, 8, 8), qat=True, what="quantize.mode=qat")


def test_a_pt2e_qat_graph_normalises_over_the_batch_while_it_trains(qat_graph) -> None:
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in qat_graph.modules())
    qat_graph.train()
    assert normalises_over_batch(qat_graph)
    assert drops_last_batch(qat_graph, 65, 64)  # fit drops its last batch of one
    qat_graph.eval()
    assert not normalises_over_batch(qat_graph)
    assert not drops_last_batch(qat_graph, 65, 64)
    qat_graph.train()
    assert normalises_over_batch(qat_graph)
    # a deep copy (GraphModule builds it afresh) keeps the switch, on its own graph
    copied = copy.deepcopy(qat_graph)
    assert copied.training and normalises_over_batch(copied)
    copied.eval()
    assert not normalises_over_batch(copied) and not copied.training
    assert normalises_over_batch(qat_graph)
    assert not normalises_over_batch(copy.deepcopy(copied))


def _bn_stats(gm: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in gm.state_dict().items()
        if k.endswith(("running_mean", "running_var"))
    }


def test_a_pt2e_qat_graph_evaluates_with_its_running_statistics(qat_graph) -> None:
    """In eval mode (as `accuracy` and `convert` put it) BatchNorm uses its running statistics:
    a batch of one is fine and the statistics stay put."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 8, 8, generator=g)
    qat_graph.train()
    with torch.no_grad():
        qat_graph(x * 3 + 1)  # train-mode forward: moves the running statistics
    before = _bn_stats(qat_graph)
    assert before and all(torch.isfinite(v).all() for v in before.values())
    qat_graph.eval()
    with torch.no_grad():
        qat_graph(x[:1])
        qat_graph(x * 10)
    after = _bn_stats(qat_graph)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # `accuracy` (fit's validation) leaves the graph in the mode it found it in
    data = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    qat_graph.train()
    accuracy(qat_graph, data, device=torch.device("cpu"))
    assert normalises_over_batch(qat_graph)


def test_evaluating_a_pt2e_qat_graph_changes_nothing(qat_graph) -> None:
    """QAT's fake quantizers observe in any mode unless told: `.eval()` turns their observers
    off (and `.train()` on), so an evaluation leaves the activation ranges alone and a row's
    logits do not depend on the rows evaluated with or before it."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 1, 8, 8, generator=g)
    qat_graph.train()
    with torch.no_grad():
        qat_graph(x)  # a training step's forward: the observers have ranges
    qat_graph.eval()
    # num_batches_tracked: the exported graph counts batches in eval too (torchao's
    # move_exported_model_to_eval leaves that op; read only by BatchNorm(momentum=None))
    state = {
        k: v.clone()
        for k, v in qat_graph.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    with torch.no_grad():
        whole = qat_graph(x)
        alone = torch.cat([qat_graph(x[i : i + 1]) for i in range(len(x))])
        qat_graph(x * 100)  # far outside the observed ranges
        again = qat_graph(x)
    changed = [k for k, v in state.items() if not torch.equal(v, qat_graph.state_dict()[k])]
    assert not changed
    torch.testing.assert_close(alone, whole)
    torch.testing.assert_close(again, whole, rtol=0, atol=0)
    qat_graph.train()  # training observes again
    with torch.no_grad():
        qat_graph(x * 100)
    moved = [k for k, v in state.items() if not torch.equal(v, qat_graph.state_dict()[k])]
    assert any(k.endswith("max_val") for k in moved)


def test_qat_training_is_not_calibrated_on_the_validation_split(qat_graph) -> None:
    """fit evaluates the QAT graph on validation data every epoch: the trained graph (activation
    ranges included) is the same whatever that data is."""
    from torch.utils.data import TensorDataset

    from stages.training import fit

    g = torch.Generator().manual_seed(3)
    train = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.arange(32) % 3)
    calm = TensorDataset(torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 3)
    wild = TensorDataset(torch.randn(16, 1, 8, 8, generator=g) * 50, torch.arange(16) % 3)
    trained = []
    for val in (calm, wild):
        model = copy.deepcopy(qat_graph)
        fit(model, train, val, epochs=1, lr=1e-3, batch_size=16, device=torch.device("cpu"),
            seed=0, restore_best=False)  # fmt: skip
        trained.append(model.state_dict())
    assert trained[0].keys() == trained[1].keys()
    differ = [k for k in trained[0] if not torch.equal(trained[0][k], trained[1][k])]
    assert not differ


def test_a_qat_graph_rebuilds_without_a_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process without the converted template (a fresh worker) exports, prepares, calibrates
    and converts the float model again: its observers must observe that calibration call though
    eval mode turns QAT's off; the saved state and activation scales then give the same logits.
    (No BatchNorm here: convert's BatchNorm folding costs seconds per model.)"""
    from stages import pt2e

    torch.manual_seed(0)
    model = _mlp(nn.Identity()).eval()
    example = torch.randn(2, 4)
    prepared = pt2e.prepare(model, example, qat=True, what="quantize.mode=qat")
    with torch.no_grad():
        for _ in range(3):  # QAT's training forwards: the ranges move
            prepared(torch.randn(16, 4) * 2 + 1)
    converted = pt2e.convert(prepared)
    monkeypatch.setattr(pt2e, "_TEMPLATES", type(pt2e._TEMPLATES)())
    rebuilt = pt2e.rebuild_pt2e(model, example, pt2e.activation_qparams(converted), qat=True)
    assert len(pt2e._TEMPLATES) == 1  # converted afresh
    rebuilt.load_state_dict(converted.state_dict())
    x = torch.randn(16, 4)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), converted(x), rtol=0, atol=0)
