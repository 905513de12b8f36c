"""Bad data and models are refused by `squeezeray validate` and by a sweep before any Ray work
(issue 21 items 6-11), with exit code 2 and the message naming the split or module and the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.test_validate_cli import _run_cli_subprocess

runner = CliRunner()

CASES = [
    (
        "tests.stages.test_datacheck:one_based_test_labels",
        ["labels outside [0, 3)", "test: 10 of 30", "train, val: none"],
    ),
    (
        "tests.stages.test_datacheck:nan_inputs",
        ["NaN or inf values in train: 2 of 60 samples (first train[17])"],
    ),
    ("tests.stages.test_dtypes:bf16_teacher", ["bfloat16 weights", "model.float()"]),
    (
        "tests.stages.test_pruned_widths:scaled_buffer",
        ["distill.student_ratio=0.5 (the student made from the teacher)", "buffer 'scale'"],
    ),
]


@pytest.mark.parametrize(("task", "parts"), CASES, ids=[c[0].split(":")[1] for c in CASES])
def test_validate_refuses_bad_data_and_models(task: str, parts: list[str]) -> None:
    result = runner.invoke(app, ["validate", "tiny", "--task", task])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    for part in parts:
        assert part in output, output


def test_a_sweep_refuses_a_bad_split_before_ray_and_before_the_storage(tmp_path: Path) -> None:
    storage = tmp_path / "results"
    proc, _ = _run_cli_subprocess(
        "sweep",
        "tiny",
        "--task",
        "tests.stages.test_datacheck:one_based_test_labels",
        "--storage",
        str(storage),
    )
    assert proc.returncode == 2, proc.stderr
    assert "test: 10 of 30" in " ".join(proc.stderr.split())
    assert "RAY_IMPORTED=False" in proc.stderr
    assert not storage.exists()


def test_a_good_user_task_still_validates() -> None:
    task = "tests.stages.test_pruned_widths:scaled_parameter"  # prunes with its channels
    result = runner.invoke(app, ["validate", "tiny", "--task", task])
    assert result.exit_code == 0, result.output
