"""The shared stage contract, checked the same way for every registered stage (as Optuna runs
every sampler through one suite): deterministic with a seed, never mutates its input, rejects
out-of-range params with a message naming `stage.param` and the accepted range, returns a
checkpoint that round-trips through `weights_only` bytes, and reports `val_accuracy`.

The runner (`stages.runner.run_stage`) enforces what each StageSpec declares, for every
stage: a missing parent or teacher and a quantized parent are refused naming the stage and
the fix, before any work; the device is resolved once; promised metrics must be reported."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import torch

from stages import PIPELINE_ORDER, stage_registry
from stages.base import StageInput, StageOutput, StageSpec
from stages.checkpoint import ModelCheckpoint
from stages.device import resolve_device
from stages.errors import SqueezerayError
from stages.rebuild import build_model
from stages.runner import run_stage
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

    first, data = run_stage(spec, inp, params)  # the contract: metrics, checkpoint round trip
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
    # Reports its own validation accuracy, and every metric its spec promises.
    assert 0.0 <= first.metrics["val_accuracy"] <= 1.0
    assert "val_accuracy" in spec.metrics and set(spec.metrics) <= set(first.metrics)
    assert data == first.checkpoint.to_bytes()
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


def _refuses(spec: StageSpec[Any], inp: StageInput, params: Any, match: str) -> None:
    """The runner refuses `inp` with a message matching `match`, before the stage runs."""

    def must_not_run(_inp: StageInput, _params: Any) -> StageOutput:
        raise AssertionError(f"stage {spec.name} ran on an input its contract refuses")

    with pytest.raises(SqueezerayError, match=match):
        run_stage(replace(spec, run=must_not_run), inp, params)


@pytest.mark.parametrize("stage", PIPELINE_ORDER)
def test_runner_refuses_what_the_spec_declares(
    stage: str, digits: Task, digits_teacher: StageOutput, digits_student: StageOutput
) -> None:
    spec = stage_registry()[stage]
    params = spec.make_params(CASES[stage]["params"])
    no_parent = StageInput(task=digits, parent=None, teacher=digits_teacher.checkpoint)
    if spec.needs_parent and not spec.teacher_as_parent:
        _refuses(spec, no_parent, params, f"stage '{stage}' needs a parent checkpoint .*; put it")
    if spec.teacher_as_parent:
        _refuses(
            spec,
            replace(no_parent, teacher=None),
            params,
            f"stage '{stage}' needs a teacher checkpoint .*; put 'teacher' before",
        )
    if spec.float_parent_fix:
        quantized = digits_student.checkpoint.with_recipe(quantize="dynamic_int8")
        inp = StageInput(task=digits, parent=quantized, teacher=digits_teacher.checkpoint)
        _refuses(spec, inp, params, f"stage '{stage}' needs a float model, .*already quantized")
    if spec.needs_teacher is not None:
        setting = spec.needs_teacher(params)
        assert setting is not None, f"CASES[{stage!r}] should read the teacher"
        inp = StageInput(task=digits, parent=digits_student.checkpoint)
        _refuses(spec, inp, params, f"{setting} needs the teacher checkpoint")
    # a bad device is refused before the stage runs too
    inp = StageInput(
        task=digits,
        parent=digits_student.checkpoint,
        teacher=digits_teacher.checkpoint,
        device="tpu",
    )
    _refuses(spec, inp, params, "device='tpu' is not a device")


def test_runner_resolves_the_device_and_checks_metrics(
    digits: Task, digits_teacher: StageOutput
) -> None:
    seen: list[str] = []

    def reports_nothing(inp: StageInput, _params: Any) -> StageOutput:
        seen.append(inp.device)
        return StageOutput(digits_teacher.checkpoint, {"val_accuracy": 0.5}, digits_teacher.model)

    spec = replace(stage_registry()["export"], run=reports_nothing, metrics=("val_accuracy", "x"))
    inp = StageInput(task=digits, parent=digits_teacher.checkpoint, device="auto")
    with pytest.raises(SqueezerayError, match=r"stage 'export' did not report the metric.* x "):
        run_stage(spec, inp, spec.make_params({}))
    assert seen == [str(resolve_device("auto"))]
    out, data = run_stage(replace(spec, metrics=("val_accuracy",)), inp, spec.make_params({}))
    assert out.metrics == {"val_accuracy": 0.5} and ModelCheckpoint.from_bytes(data)
