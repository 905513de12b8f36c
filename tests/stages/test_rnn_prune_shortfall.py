"""Structured pruning of a plain PyTorch Embedding + LSTM model (new user 8, F-RNN-1/F-RNN-2).

- F-RNN-1: `distill.student_ratio: 0.5` (and `prune.method: structured`) on an Embedding +
  LSTM model shrank only the head's hidden Linear: 7.3% of the parameters went where 50% was
  asked, and nothing said so (the warning existed for Hugging Face models only). Every
  structured prune now warns when it removes under half the share asked (`stages.shortfall`),
  naming the shares, what stayed and why, and the fix; validate and the sweep's pre-flight
  print it. A plain MLP pruned at 0.5 does not warn.
- F-RNN-2: validate said ok, but every `l1_unstructured` trial was an error row: the teacher
  holds 14.6% in Linear layers (the 10% rule passes), the student made from it 7.8%. The rule
  is now applied up front to the model the prune stage receives (the student made at each
  reachable distill.student_ratio), refusing a choice that holds a failing value, as every
  "cannot apply" check does, and naming the failing value and what is accepted.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stages.errors import SqueezerayError, SqueezerayWarning
from stages.precheck import check_stages_apply
from tests.stages.lstm_task import make_lstm_task, make_mlp_task

LSTM = "tests.stages.lstm_task:make_lstm_task"
STUDENT_WARNING = (
    "distill.student_ratio=0.5 (the student made from the teacher): structured pruning removed "
    "7.3% of the model's parameters where 50% was asked: LSTMClassifier lost only 16640 "
    "parameters of its Linear layers (33283 -> 16643) and kept its Embedding (128000 "
    "parameters), LSTM (66560 parameters); LSTM layers and what feeds them are not pruned"
)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _space(tmp_path: Path, params: str, pipeline: str = "[teacher, distill, prune]") -> Path:
    path = tmp_path / "lstm.yaml"
    path.write_text(f"name: lstm\ntask: {LSTM}\npipeline: {pipeline}\nparams:\n{params}")
    return path


def _validate(monkeypatch: pytest.MonkeyPatch, path: Path) -> tuple[int, str]:
    from orchestrator import cli

    monkeypatch.setattr(warnings, "showwarning", cli._show_warning)  # as cli.main installs it
    result = CliRunner().invoke(cli.app, ["validate", str(path)])
    return result.exit_code, _flat(result.output)


# -- F-RNN-1: the shortfall warning on a plain PyTorch model ------------------------------------


def test_validate_warns_that_the_lstm_student_lost_7_percent_where_half_was_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _space(tmp_path, "  distill.student_ratio: 0.5\n  prune.ratio: 0\n")
    code, output = _validate(monkeypatch, path)
    assert code == 0, output
    assert f"warning: {STUDENT_WARNING}" in output, output
    assert "set distill.student_ratio: 1" in output, output
    assert "Task(student=...)" in output, output


def test_the_sweeps_pre_flight_warns_for_structured_prune_on_the_lstm(tmp_path: Path) -> None:
    from orchestrator.engine.sweep import prepare_sweep

    space: dict[str, Any] = {
        "name": "lstm",
        "task": LSTM,
        "pipeline": ["teacher", "prune"],
        "params": {"prune.method": "structured", "prune.ratio": 0.5},
    }
    with pytest.warns(SqueezerayWarning) as caught:
        prepare_sweep(space, storage=tmp_path / "runs")
    messages = [_flat(str(w.message)) for w in caught if w.category is SqueezerayWarning]
    assert len(messages) == 1, messages
    assert messages[0].startswith(
        "prune.method='structured' prune.ratio=0.5: structured pruning removed 7.3% of the "
        "model's parameters where 50% was asked: LSTMClassifier lost only"
    ), messages
    assert "LSTM layers and what feeds them are not pruned" in messages[0], messages
    assert messages[0].endswith(
        "use an unstructured prune.method (l1_unstructured, global, random)"
    )


def test_a_plain_mlp_pruned_at_half_does_not_warn() -> None:
    task = make_mlp_task()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SqueezerayWarning)
        check_stages_apply(task, ["teacher", "distill"], {"distill.student_ratio": [0.5]})
        check_stages_apply(
            task, ["teacher", "prune"], {"prune.method": ["structured"], "prune.ratio": [0.5]}
        )


# -- F-RNN-2: the unstructured rule on the student the prune stage receives ---------------------


def test_validate_refuses_l1_unstructured_on_the_student_made_from_the_lstm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _space(
        tmp_path,
        "  distill.student_ratio: 0.5\n"
        "  prune.method: {choice: [l1_unstructured, structured]}\n"
        "  prune.ratio: 0.4\n",
    )
    code, output = _validate(monkeypatch, path)
    assert code == 2, output
    assert (
        "prune.method='l1_unstructured' cannot apply to the student made from the teacher at "
        "distill.student_ratio=0.5 (task 'lstm'): the unstructured methods zero Linear/Conv "
        "weights, which hold 7.8% of that student's parameters (below 10%; the teacher's: 14.6%"
    ) in output, output
    assert "not touched: Embedding (128000 parameters), LSTM (66560 parameters)" in output
    assert "accepted with that student: prune.method: structured or prune.ratio: 0" in output
    assert "or set distill.student_ratio: 1" in output, output
    assert "remove l1_unstructured from prune.method (or 0.5 from distill.student_ratio)" in output


def test_a_student_ratio_choice_names_the_failing_value_and_the_passing_ones() -> None:
    values = {
        "distill.student_ratio": [0.5, 0.9, 1.0],
        "prune.method": ["l1_unstructured"],
        "prune.ratio": [0.4],
    }
    with pytest.raises(SqueezerayError) as info:
        check_stages_apply(make_lstm_task(), ["teacher", "distill", "prune"], values)
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    assert "at distill.student_ratio=0.5 (task 'lstm')" in lines[0], lines
    assert "every trial with distill.student_ratio=0.5 and prune.method l1_unstructured" in lines[0]
    assert "or keep only distill.student_ratio 0.9, 1;" in lines[0], lines


@pytest.mark.parametrize(
    ("pipeline", "values"),
    [
        (["teacher", "prune"], {}),  # the teacher: 14.6%
        (["teacher", "distill", "prune"], {"distill.student_ratio": [1.0]}),  # a copy of it
        (["teacher", "distill", "prune"], {"prune.ratio": [0.0], "distill.student_ratio": [0.5]}),
    ],
)
def test_l1_unstructured_passes_where_the_model_pruned_holds_enough_linear_weights(
    pipeline: list[str], values: dict[str, list[Any]]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SqueezerayWarning)
        check_stages_apply(make_lstm_task(), pipeline, {"prune.ratio": [0.4], **values})


def test_structured_prune_after_a_made_student_is_judged_on_that_student() -> None:
    """The prune stage receives the student (Linear 256 -> 64 -> 3 after distill at 0.5): 0.4
    of it removes 3.2% of the student's parameters (5.9% of the teacher's, as it was judged)."""
    values = {
        "distill.student_ratio": [0.5],
        "prune.method": ["structured"],
        "prune.ratio": [0.4],
    }
    with pytest.warns(SqueezerayWarning) as caught:
        check_stages_apply(make_lstm_task(), ["teacher", "distill", "prune"], values)
    messages = [_flat(str(w.message)) for w in caught if w.category is SqueezerayWarning]
    assert [m.split(":")[0] for m in messages] == [
        "distill.student_ratio=0.5 (the student made from the teacher)",
        "prune.method='structured' prune.ratio=0.4",
    ], messages
    assert messages[1].startswith(
        "prune.method='structured' prune.ratio=0.4: structured pruning removed 3.2% of the "
        "model's parameters where 40% was asked: LSTMClassifier lost only 6760 parameters of "
        "its Linear layers (16643 -> 9883)"
    ), messages
