"""The shared stage contract, checked the same way for every registered stage (as Optuna runs
every sampler through one suite): deterministic with a seed, never mutates its input, rejects
out-of-range params with a message naming `stage.param` and the accepted range, returns a
checkpoint that round-trips through `weights_only` bytes, and reports `val_accuracy`."""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import stages
from stages import PIPELINE_ORDER, stage_registry
from stages.base import StageInput, StageOutput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.rebuild import build_model
from stages.tasks import Task

# Small but real params per stage, and one out-of-range value per stage with the range text.
CASES: dict[str, dict[str, Any]] = {
    "teacher": {"params": {"epochs": 2}, "bad": ("epochs", -1, "[0, inf]")},
    "distill": {"params": {"epochs": 2}, "bad": ("temperature", 0.0, "(0, inf]")},
    "prune": {"params": {"ratio": 0.5}, "bad": ("ratio", 1.0, "[0, 1)")},
    "finetune": {"params": {"epochs": 1}, "bad": ("alpha", 1.5, "[0, 1]")},
    "lowrank": {"params": {"rank_ratio": 0.25}, "bad": ("rank_ratio", 0.0, "(0, 1]")},
    "lora": {"params": {"rank": 2, "epochs": 1}, "bad": ("rank", -1, "[0, inf]")},
    "quantize": {"params": {"mode": "static_int8"}, "bad": ("mode", "int4", "accepted")},
    "export": {"params": {"runtime": "onnxruntime"}, "bad": ("runtime", "tensorrt", "accepted")},
}


def equal(a: Any, b: Any) -> bool:
    """Exact equality of state_dict values, quantized tensors and packed-param tuples included."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.is_quantized or b.is_quantized:
            return (
                a.is_quantized == b.is_quantized
                and torch.equal(a.int_repr(), b.int_repr())
                and a.qscheme() == b.qscheme()
                and torch.equal(a.dequantize(), b.dequantize())
            )
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_state(a: ModelCheckpoint, b: ModelCheckpoint) -> bool:
    return a.state_dict.keys() == b.state_dict.keys() and all(
        equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict
    )


def snapshot(ckpt: ModelCheckpoint) -> dict[str, Any]:
    return {
        k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        for k, v in ckpt.state_dict.items()
    }


def test_every_stage_has_a_case() -> None:
    assert set(CASES) == set(PIPELINE_ORDER) == set(stage_registry())


def _input(stage: str, task: Task, teacher: StageOutput, student: StageOutput) -> StageInput:
    if stage == "teacher":
        return StageInput(task=task, parent=None, seed=0)
    if stage == "distill":
        return StageInput(task=task, parent=teacher.checkpoint, seed=0)
    return StageInput(task=task, parent=student.checkpoint, teacher=teacher.checkpoint, seed=0)


@pytest.mark.parametrize("stage", PIPELINE_ORDER)
def test_stage_contract(
    stage: str, digits: Task, digits_teacher: StageOutput, digits_student: StageOutput
) -> None:
    spec = stage_registry()[stage]
    params = spec.make_params(CASES[stage]["params"])
    inp = _input(stage, digits, digits_teacher, digits_student)
    parent_before = snapshot(inp.parent) if inp.parent is not None else None
    recipe_before = copy.deepcopy(inp.parent.recipe) if inp.parent is not None else None

    first = spec.run(inp, params)
    second = spec.run(inp, params)

    # Deterministic with a seed.
    assert same_state(first.checkpoint, second.checkpoint), f"{stage} is not deterministic"
    assert first.checkpoint.recipe == second.checkpoint.recipe
    # Does not mutate its input.
    if inp.parent is not None:
        assert parent_before is not None
        assert inp.parent.recipe == recipe_before
        assert inp.parent.state_dict.keys() == parent_before.keys()
        for k, v in parent_before.items():
            assert equal(inp.parent.state_dict[k], v), f"{stage} mutated {k}"
    # Reports its own validation accuracy.
    assert 0.0 <= first.metrics["val_accuracy"] <= 1.0
    # The checkpoint round-trips through weights_only bytes and rebuilds.
    restored = ModelCheckpoint.from_bytes(first.checkpoint.to_bytes())
    assert restored.recipe == first.checkpoint.recipe
    assert restored.onnx == first.checkpoint.onnx
    model = build_model(digits, restored)
    with torch.no_grad():
        assert model(digits.example_input(4)).shape == (4, digits.num_classes)


@pytest.mark.parametrize("stage", PIPELINE_ORDER)
def test_stage_rejects_out_of_range_params(stage: str) -> None:
    spec = stage_registry()[stage]
    name, value, accepted = CASES[stage]["bad"]
    with pytest.raises(SqueezerayError) as info:
        spec.make_params({name: value})
    message = str(info.value)
    assert f"{stage}.{name}" in message
    assert repr(value) in message or str(value) in message
    assert accepted in message


@pytest.mark.parametrize("stage", PIPELINE_ORDER)
def test_stage_rejects_unknown_params_with_a_suggestion(stage: str) -> None:
    spec = stage_registry()[stage]
    first = spec.param_names()[0]
    with pytest.raises(SqueezerayError, match=f"did you mean {stage}.{first}"):
        spec.make_params({first + "x": 1})


def test_stages_never_import_ray() -> None:
    root = Path(stages.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "ray" or n.startswith("ray.") for n in names), path.name
