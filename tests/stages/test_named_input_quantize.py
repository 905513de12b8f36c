"""Dict inputs (a Hugging Face BERT from tests/hf_zoo.py, samples {"input_ids",
"attention_mask", "token_type_ids"}) through every quantize mode and export runtime: what
works runs (PT2E static_int8 deploys eager), what cannot is refused before any work starts
(`stages.precheck.check_runtimes_apply`, also run by `squeezeray validate`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages.base import StageInput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.precheck import check_stages_apply
from stages.runner import run_stage
from stages.tasks import Task
from tests import hf_zoo

PIPELINE = ["teacher", "quantize", "export"]


@pytest.fixture(scope="module")
def bert() -> Task:
    return hf_zoo.bert()


@pytest.mark.parametrize("mode", ["static_int8", "qat", "torchao_dynamic_int8"])
def test_a_mode_that_cannot_torchscript_is_refused_up_front(bert: Task, mode: str) -> None:
    values = {"quantize.mode": ["none", mode], "export.runtime": ["eager", "torchscript"]}
    with pytest.raises(SqueezerayError) as caught:
        check_stages_apply(bert, PIPELINE, values)
    text = str(caught.value)
    assert f"quantize.mode={mode!r}" in text and "export.runtime='torchscript'" in text
    assert "eager or compiled" in text and "int8_weight_only" in text  # what works


def test_every_other_mode_and_runtime_is_let_through(bert: Task) -> None:
    modes = ["none", "dynamic_int8", "torchao_dynamic_int8", "int8_weight_only", "static_int8",
             "qat", "onnx_int8", "onnx_static_int8", "float16", "bfloat16"]  # fmt: skip
    runtimes = ["eager", "onnxruntime", "compiled"]
    check_stages_apply(bert, PIPELINE, {"quantize.mode": modes, "export.runtime": runtimes})
    torchscript = ["none", "dynamic_int8", "int8_weight_only", "float16", "bfloat16"]
    check_stages_apply(
        bert,
        PIPELINE,
        {"quantize.mode": torchscript, "export.runtime": ["torchscript"]},
    )


def test_validate_says_it_for_a_user_task(tmp_path: Path) -> None:
    from orchestrator.cli import app

    path = tmp_path / "space.yaml"
    path.write_text(
        "task: tests.hf_zoo:bert\npipeline: [teacher, quantize, export]\nparams:\n"
        "  quantize.mode: {choice: [none, static_int8, torchao_dynamic_int8]}\n"
        "  export.runtime: {choice: [eager, torchscript]}\n"
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert "quantize.mode='static_int8' cannot deploy with export.runtime='torchscript'" in text
    assert "named inputs" in text
    # every refused pair in the one run (new user F6: one a run), each its own line
    assert "2 problems" in text
    assert "quantize.mode='torchao_dynamic_int8' cannot deploy with" in text


@pytest.mark.slow
def test_static_int8_on_dict_inputs_runs_and_deploys_eager(bert: Task) -> None:
    """The run-time failure users met before PT2E ("named inputs ... cannot be passed
    positionally") is gone: quantize and export run on the dict-input model."""
    from stages.export import SPEC as EXPORT
    from stages.quantize import SPEC as QUANTIZE
    from tests.stages.conftest import train_checkpoint

    parent = train_checkpoint(bert, "teacher", epochs=1)
    params = QUANTIZE.make_params({"mode": "static_int8", "calibration_batches": 1})
    out, data = run_stage(QUANTIZE, StageInput(task=bert, parent=parent), params)
    quantized = ModelCheckpoint.from_bytes(data)
    assert out.metrics["quantized_fraction"] > 0.5
    exported, _ = run_stage(
        EXPORT,
        StageInput(task=bert, parent=quantized),
        EXPORT.make_params({"runtime": "eager"}),
    )
    assert 0.0 <= exported.metrics["val_accuracy"] <= 1.0
