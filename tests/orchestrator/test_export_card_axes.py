"""The exported model card states the ONNX graph's input axes (newuser-2 item 5): a token
model's dynamic sequence axis by its name, categorical int64 columns as their fixed width."""

from __future__ import annotations

from dataclasses import replace

import torch

from orchestrator.query.card import input_card
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
