"""Tracing faults: a data-dependent branch must not be exported as one branch, and an integer
input's non-batch axis is dynamic in ONNX only where the eager model runs at another length.

User-style models: a forward with `if x[:, 0].mean() > 0:` (newuser-2 item 1), two int64
categorical columns beside float features (item 5), token ids with and without a padding mask.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint, from_model
from stages.errors import SqueezerayError
from stages.export import SPEC as EXPORT
from stages.export import ExportParams
from stages.hf import NamedTensorDataset
from stages.onnxio import to_onnx_bytes, varying_axes
from stages.quantize import SPEC as QUANTIZE
from stages.quantize import QuantizeParams
from stages.runner import run_stage
from stages.tasks import Task

from .user_text_task import MaskedTextNet


class Branchy(nn.Module):
    """Two heads; the batch's mean first feature picks one (a Python `if` on tensor values)."""

    def __init__(self, hidden: int = 12) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        self.b = nn.Sequential(nn.Linear(13, hidden), nn.Tanh(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[:, 0].mean() > 0:  # data-dependent branch
            return self.a(x)  # type: ignore[no-any-return]
        return self.b(x)  # type: ignore[no-any-return]


def _split(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 13, generator=g)
    return TensorDataset(x, (x[:, 1] > 0).long() + (x[:, 2] > 1).long())


@pytest.fixture(scope="module")
def branchy() -> tuple[Task, ModelCheckpoint]:
    task = Task(
        name="branchy",
        teacher=lambda: Branchy(16),
        student=lambda: Branchy(8),
        train=_split(64, 0),
        val=_split(32, 1),
        test=_split(32, 2),
        num_classes=3,
    )
    torch.manual_seed(0)
    return task, from_model(task, task.build("student"), {"arch": "student"})


@pytest.mark.parametrize(
    ("spec", "params", "what"),
    [
        (EXPORT, ExportParams(runtime="torchscript"), "export.runtime='torchscript'"),
        (EXPORT, ExportParams(runtime="onnxruntime"), "export.runtime=onnxruntime"),
        (QUANTIZE, QuantizeParams(mode="onnx_int8"), "quantize.mode=onnx_int8"),
    ],
    ids=["torchscript", "onnxruntime", "onnx_int8"],
)
def test_data_dependent_branch_is_an_error_not_one_branch(
    branchy: tuple[Task, ModelCheckpoint], spec: object, params: object, what: str
) -> None:
    task, ckpt = branchy
    with pytest.raises(SqueezerayError) as err:
        run_stage(spec, StageInput(task=task, parent=ckpt), params)  # type: ignore[arg-type]
    message = str(err.value)
    assert what in message
    assert "Python boolean at " in message and "test_tracing.py:" in message
    assert "`if x[:, 0].mean() > 0:" in message  # the source line
    assert "torch.where" in message


def test_data_dependent_branch_still_runs_eager(branchy: tuple[Task, ModelCheckpoint]) -> None:
    task, ckpt = branchy
    out, _ = run_stage(EXPORT, StageInput(task=task, parent=ckpt), ExportParams(runtime="eager"))
    assert out.checkpoint.runtime == "eager"
    assert 0.0 <= out.metrics["val_accuracy"] <= 1.0
    model = out.model
    assert isinstance(model, Branchy)
    x = torch.randn(4, 13)
    with torch.no_grad():
        for sign in (1.0, -1.0):  # both branches, as written
            x[:, 0] = sign
            torch.testing.assert_close(model(x), (model.a if sign > 0 else model.b)(x))


class ShapeChecked(nn.Module):
    """Branches on shapes and converts a shape to int: benign, the trace is right."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 13:
            raise ValueError("expected 13 features")
        return self.lin(x[:, : int(x.size(1))])  # type: ignore[no-any-return]


def test_shape_branches_still_export_to_torchscript_and_onnx() -> None:
    task = Task(
        name="shape-checked",
        teacher=ShapeChecked,
        student=ShapeChecked,
        train=_split(16, 0),
        val=_split(16, 1),
        test=_split(16, 2),
        num_classes=3,
    )
    ckpt = from_model(task, task.build("student"), {"arch": "student"})
    for runtime in ("torchscript", "onnxruntime"):
        params = ExportParams(runtime=runtime)
        out, _ = run_stage(EXPORT, StageInput(task=task, parent=ckpt), params)
        assert out.checkpoint.runtime == runtime


class Tabular(nn.Module):
    """model(cat_ids (B, 2) int64 categorical columns, numeric (B, 4) float) -> logits (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.color = nn.Embedding(5, 3)
        self.size = nn.Embedding(7, 3)
        self.head = nn.Linear(3 + 3 + 4, 3)

    def forward(self, cat_ids: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        columns = [self.color(cat_ids[:, 0]), self.size(cat_ids[:, 1]), numeric]
        return self.head(torch.cat(columns, dim=1))  # type: ignore[no-any-return]


def _input_dims(data: bytes) -> dict[str, list[int | str]]:
    return {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in onnx.load_from_string(data).graph.input
    }


def test_categorical_columns_keep_a_static_axis() -> None:
    torch.manual_seed(0)
    model = Tabular().eval()
    cat_ids = torch.stack([torch.randint(0, 5, (4,)), torch.randint(0, 7, (4,))], dim=1)
    example = (cat_ids, torch.randn(4, 4))
    assert varying_axes(model, example) == [[], []]
    data = to_onnx_bytes(model, example)
    dims = _input_dims(data)
    assert dims["cat_ids"][1] == 2 and dims["numeric"][1] == 4
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"cat_ids": cat_ids.numpy(), "numeric": example[1].numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(*example), rtol=1e-4, atol=1e-5)
    three = torch.zeros(4, 3, dtype=torch.int64)
    with pytest.raises(Exception, match="cat_ids"):  # a third column is refused, not run
        session.run(None, {"cat_ids": three.numpy(), "numeric": example[1].numpy()})


class IdsAndMask(nn.Module):
    """model(ids (B, L) int64, mask (B, L) int64) -> logits (B, 2): mean of unmasked embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.cls = nn.Linear(6, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1).float()
        pooled = (self.emb(ids) * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.cls(pooled)  # type: ignore[no-any-return]


def test_token_models_keep_a_dynamic_sequence_axis() -> None:
    torch.manual_seed(0)
    ids = torch.randint(1, 20, (2, 8))
    text = MaskedTextNet(8).eval()
    assert varying_axes(text, (ids,)) == [[1]]
    assert isinstance(_input_dims(to_onnx_bytes(text, ids))["ids"][1], str)
    # ids and their mask are cut together: alone, either one would not run
    pair = IdsAndMask().eval()
    assert varying_axes(pair, (ids, torch.ones_like(ids))) == [[1], [1]]
    data = to_onnx_bytes(pair, (ids, torch.ones_like(ids)))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    short = torch.randint(1, 20, (3, 5))
    mask = torch.ones_like(short)
    (got,) = session.run(None, {"ids": short.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), pair(short, mask), rtol=1e-4, atol=1e-5)


class WeightBranch(nn.Module):
    """Branches on its own weights only: the same for every input, so tracing is right."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lin.weight.abs().sum() > 1e6:
            return self.lin(x) * 2  # type: ignore[no-any-return]
        return self.lin(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize("tracer", ["jit", "legacy_onnx"])
def test_strict_trace_tells_inputs_from_weights_and_shapes(tracer: str) -> None:
    import io

    from stages.tracing import strict_trace

    def trace(model: nn.Module) -> None:
        x = (torch.randn(4, 13),)
        with strict_trace("t", inputs=1):
            if tracer == "jit":
                torch.jit.trace(model.eval(), x)
            else:
                torch.onnx.export(model.eval(), x, io.BytesIO(), dynamo=False)

    # the tracers' deprecation warnings still reach the caller's filters
    with pytest.warns(DeprecationWarning):
        trace(WeightBranch())
        trace(ShapeChecked())
    expected = r"t: .*Python boolean at .*test_tracing\.py"
    with pytest.warns(DeprecationWarning), pytest.raises(SqueezerayError, match=expected):
        trace(Branchy())


class PackedLSTM(nn.Module):
    """A user's text LSTM the common way (new user F-RNN-4): ids and lengths, packed."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8, padding_idx=0)
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(
            self.embedding(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        return self.head(out.sum(1) / lengths[:, None].float())  # type: ignore[no-any-return]


def _packed_split(n: int, seed: int) -> NamedTensorDataset:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 7, (n,), generator=g)
    ids = torch.randint(1, 20, (n, 6), generator=g) * (torch.arange(6) < lengths[:, None])
    return NamedTensorDataset({"input_ids": ids, "lengths": lengths}, ids[:, 0] % 3)


@pytest.fixture(scope="module")
def packed() -> tuple[Task, ModelCheckpoint]:
    splits = [_packed_split(n, seed) for n, seed in ((32, 0), (16, 1), (16, 2))]
    task = Task(name="packed-lstm", teacher=PackedLSTM, student=None, train=splits[0],
                val=splits[1], test=splits[2], num_classes=3)  # fmt: skip
    torch.manual_seed(0)
    return task, from_model(task, task.build("teacher"), {"arch": "teacher"})


def test_torchs_own_untraceable_module_is_named_not_the_users_forward(
    packed: tuple[Task, ModelCheckpoint],
) -> None:
    """dynamic_int8's LSTM takes `int(batch_sizes[0])` of a PackedSequence in torch's own
    code: the error names that module and what deploys the model (eager, onnx_int8, no
    packing), not "write your forward as tensor ops" (new user F-RNN-4)."""
    task, ckpt = packed
    _, data = run_stage(
        QUANTIZE, StageInput(task=task, parent=ckpt), QuantizeParams(mode="dynamic_int8")
    )
    parent = ModelCheckpoint.from_bytes(data)
    with pytest.raises(SqueezerayError) as err:
        run_stage(EXPORT, StageInput(task=task, parent=parent), ExportParams(runtime="torchscript"))
    message = str(err.value)
    assert "export.runtime='torchscript' (quantize.mode='dynamic_int8')" in message
    assert "torch's own module torch.ao.nn.quantized.dynamic.modules.rnn.LSTM" in message
    assert "given a PackedSequence" in message and "Python integer" in message
    assert "test_tracing.py:" in message  # the user's line that called it
    assert "keep export.runtime: eager" in message and "quantize.mode: onnx_int8" in message
    assert "padded tensor instead of a PackedSequence" in message
    assert "torch.where" not in message and "Write it as tensor ops" not in message
    # the way out it names works: onnx_int8 on the same packed model
    out, _ = run_stage(QUANTIZE, StageInput(task=task, parent=ckpt), QuantizeParams("onnx_int8"))
    assert out.checkpoint.runtime == "onnxruntime" and out.metrics["quantized_fraction"] > 0.5


def test_the_packed_float_lstm_traces(packed: tuple[Task, ModelCheckpoint]) -> None:
    """Packing alone is fine: the float LSTM traces, named as the card names its inputs."""
    task, ckpt = packed
    out, _ = run_stage(EXPORT, StageInput(task=task, parent=ckpt), ExportParams("torchscript"))
    assert 0.0 <= out.metrics["val_accuracy"] <= 1.0
