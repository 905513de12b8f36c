"""The exported model card states the ONNX graph's input axes (newuser-2 item 5): a token
model's dynamic sequence axis by its name, categorical int64 columns as their fixed width."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from orchestrator.query.card import input_card, load_card
from stages.checkpoint import from_model
from stages.onnxio import to_onnx_bytes
from stages.tasks import Task
from tests.stages.test_tracing import Tabular
from tests.stages.user_text_task import make_task
from tests.zoo import PairDataset


def _onnx_card(task: Task) -> object:
    torch.manual_seed(0)
    model = task.build("student").eval()
    ckpt = from_model(task, model, {"arch": "student"}).with_recipe(runtime="onnxruntime")
    ckpt = replace(ckpt, onnx=to_onnx_bytes(model, task.example_input(2)))
    return input_card(task, ckpt, model)


def test_card_shows_a_dynamic_sequence_axis_and_fixed_categorical_columns() -> None:
    card = _onnx_card(make_task("masked"))
    assert isinstance(card, dict) and card["name"] == "ids" and card["dtype"] == "int64"
    assert card["shape"] == ["batch", "sequence"]  # readable dynamic axes, not `s50`

    n = 24
    cat = torch.stack([torch.arange(n) % 5, torch.arange(n) % 7], dim=1)
    data = PairDataset(cat, torch.randn(n, 4), torch.arange(n) % 3)
    tab = Task(
        name="tab",
        teacher=Tabular,
        student=Tabular,
        train=data,
        val=data,
        test=data,
        num_classes=3,
    )
    cards = _onnx_card(tab)
    assert cards == [
        {"name": "cat_ids", "dtype": "int64", "shape": ["batch", 2]},
        {"name": "numeric", "dtype": "float32", "shape": ["batch", 4]},
    ]


class _ImageNet(torch.nn.Module):
    """A user's CNN fed dict samples {"image": (3, 8, 8)}: axis 1 is its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(image).relu().mean((2, 3)))


def test_a_pt2e_cards_axes_are_those_model_pt2_accepts_not_a_sequence_axis() -> None:
    """A static_int8 row of a named-input image model: model.pt2 fixes the 3 channels
    (torch.export specialised them), and the card said ["batch", "sequence", 8, 8] (new user
    F3). Now the card reads the written program's own axes."""
    from stages.base import StageInput
    from stages.hf import NamedTensorDataset
    from stages.pt2e import program_bytes, program_shapes
    from stages.quantize import QuantizeParams, quantize
    from stages.rebuild import build_model

    torch.manual_seed(0)
    n = 64
    data = NamedTensorDataset({"image": torch.randn(n, 3, 8, 8)}, torch.arange(n) % 3)
    task = Task(
        name="dict-cnn", teacher=_ImageNet, student=_ImageNet, train=data, val=data, test=data,
        num_classes=3,
    )  # fmt: skip
    model = _ImageNet().eval()
    parent = from_model(task, model, {"arch": "student"})
    out = quantize(
        StageInput(task=task, parent=parent),
        QuantizeParams(mode="static_int8", calibration_batches=1),
    )
    ckpt = out.checkpoint
    rebuilt = build_model(task, ckpt)
    shapes = program_shapes(program_bytes(rebuilt, task.example_input(2)))
    assert shapes == [["batch", 3, 8, 8]]
    card = input_card(task, ckpt, rebuilt, artifact_shapes=shapes)
    assert card == {"name": "image", "dtype": "float32", "shape": ["batch", 3, 8, 8]}
    # and the card's reasons name those axes: no sequence axis on an image model (new user 6 F5)
    why = load_card(ckpt, ["model.pt2", "checkpoint.pt"], shapes=shapes)["not_written"]["model.pt"]
    assert "keeps the example's batch size;" in why, why
    assert "(torch.export, dynamic batch axis)" in why
    assert "sequence" not in why


@pytest.mark.parametrize(
    ("shapes", "sizes", "dynamic"),
    [
        ([["batch", "sequence"]], "batch and sequence sizes", ", dynamic batch and sequence axes"),
        ([["batch", 3, 32, 32]], "batch size", ", dynamic batch axis"),
        (None, "sizes", ""),  # no shapes read: no axes claimed
    ],
)
def test_a_pt2e_rows_reasons_name_the_axes_model_pt2_has(
    shapes: list[list[int | str]] | None, sizes: str, dynamic: str
) -> None:
    """A ConvNext qat row's card said "keeps the example's batch and sequence sizes" and
    "dynamic batch and sequence axes" though pixel_values has no sequence axis (new user 6
    F5): the text names the axes the written model.pt2 accepts."""
    task = make_task("masked")
    ckpt = from_model(task, task.build("student"), {"arch": "student"})
    ckpt = ckpt.with_recipe(quantize="qat", runtime="eager")
    why = load_card(ckpt, ["model.pt2"], shapes=shapes)["not_written"]["model.pt"]
    assert why == (
        f"quantize.mode='qat': a TorchScript trace of the int8 graph keeps the example's {sizes};"
        f" model.pt2 (torch.export{dynamic}) is written instead"
    )
