"""Inputs and outputs as users have them (issue 12 item 5): int64 ids, several inputs,
tuple / dict / dataclass outputs, through training, KD, metrics, latency and export; what is
not supported is refused before any Ray work with a message naming the rule."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput
from stages.batches import OUTPUT_RULE, as_inputs, logits_of
from stages.distill import DistillParams, distill
from stages.errors import SqueezerayError
from stages.export import ExportParams, export
from stages.metrics import evaluate
from stages.tasks import Task, check_task, load_task
from stages.teacher import TeacherParams, train_teacher
from tests.zoo import hf_output, two_inputs


@dataclass
class _Out:
    logits: torch.Tensor


def test_logits_of_accepts_the_documented_forms() -> None:
    t = torch.randn(2, 3)
    assert logits_of(t) is t
    assert logits_of((t, torch.zeros(1))) is t
    assert logits_of([t]) is t
    assert logits_of({"logits": t, "loss": None}) is t
    assert logits_of(_Out(logits=t)) is t


@pytest.mark.parametrize("bad", ["logits", (None, torch.zeros(1)), {"scores": torch.zeros(1)}])
def test_logits_of_refuses_other_outputs_naming_the_rule(bad: object) -> None:
    with pytest.raises(SqueezerayError, match="tuple/list whose first element is the logits"):
        logits_of(bad)


def test_inputs_keep_their_dtype() -> None:
    ids = torch.randint(0, 5, (4, 3))
    assert as_inputs(ids).dtype == torch.int64
    assert as_inputs(torch.zeros(2, dtype=torch.float64)).dtype == torch.float32
    pair = as_inputs([ids, torch.zeros(4, 2)])
    assert isinstance(pair, tuple) and pair[0].dtype == torch.int64


class _IdsOnly(nn.Module):
    """Refuses anything but int64: a float cast anywhere in the pipeline fails the test."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        assert ids.dtype == torch.int64, ids.dtype
        return self.head(self.embed(ids).mean(dim=1))  # type: ignore[no-any-return]


def _ids_task() -> Task:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (64, 5), generator=g)
    y = (ids[:, 0] >= 5).long()
    ds = TensorDataset(ids, y)
    return Task("ids", _IdsOnly, _IdsOnly, ds, ds, ds, num_classes=2)


def test_int64_ids_reach_the_model_unchanged_through_every_runtime() -> None:
    task = _ids_task()
    check_task(task, source="ids")
    teacher = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=2))
    student = distill(
        StageInput(task=task, parent=teacher.checkpoint), DistillParams(epochs=1, alpha=0.5)
    )
    for runtime in ("eager", "torchscript", "onnxruntime"):
        out = export(StageInput(task=task, parent=student.checkpoint), ExportParams(runtime))
        metrics = evaluate(task, out.checkpoint, warmup=1, repeats=3)
        assert metrics.runtime == runtime
        assert metrics.accuracy == pytest.approx(out.metrics["val_accuracy"])  # same split


@pytest.mark.parametrize("factory", [two_inputs, hf_output], ids=["two_inputs", "hf_output"])
def test_tuple_inputs_and_hf_outputs_through_kd_metrics_and_export(factory: object) -> None:
    assert callable(factory)
    task = factory()
    check_task(task, source=task.name)
    teacher = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=15))
    student = distill(StageInput(task=task, parent=teacher.checkpoint), DistillParams(epochs=15))
    assert student.metrics["val_accuracy"] > 1.0 / task.num_classes  # it learned something
    eager = evaluate(task, student.checkpoint, warmup=1, repeats=3).accuracy
    for runtime in ("torchscript", "onnxruntime"):
        out = export(StageInput(task=task, parent=student.checkpoint), ExportParams(runtime))
        metrics = evaluate(task, out.checkpoint, warmup=1, repeats=3)
        assert metrics.latency_ms is not None and metrics.latency_ms > 0
        assert metrics.accuracy == pytest.approx(eager, abs=0.02)


class _Scores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.fc(x)}


def test_unsupported_output_is_refused_when_the_task_loads() -> None:
    ds = TensorDataset(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    task = Task("scores", _Scores, _Scores, ds, ds, ds, num_classes=2)
    with pytest.raises(SqueezerayError, match="teacher") as err:
        check_task(task, source="user:scores")
    assert OUTPUT_RULE in str(err.value) and "dict with keys ['scores']" in str(err.value)


def test_two_input_task_loads_and_a_wrong_arity_names_the_call() -> None:
    task = load_task("tests.zoo:two_inputs")  # no misleading "one element tensors" error
    assert isinstance(task.example_input(2), tuple)

    class OneArg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)  # type: ignore[no-any-return]

    wrong = Task("w", OneArg, OneArg, task.train, task.val, task.test, num_classes=3)
    arity = r"x = \[\(1, 8\) float32, \(1, 5\) float32\]: TypeError"
    with pytest.raises(SqueezerayError, match=arity):
        check_task(wrong, source="user:w")


def test_config_refuses_a_bad_user_task_before_ray_with_the_rule() -> None:
    from orchestrator.space.parse import parse_space

    with pytest.raises(SqueezerayError, match="x of type str"):
        parse_space(
            {"task": "tests.stages.test_inputs:_strings_task", "pipeline": ["teacher"]},
            source="s.yaml",
        )


def _strings_task() -> Task:
    class Strings(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> tuple[str, int]:
            return "some text", 0

    return Task("strings", _Scores, _Scores, Strings(), Strings(), Strings(), num_classes=2)


class _Keywords(nn.Module):
    """forward(input_ids, past=None, attention_mask=None), as GPT-2's: the mask is not the
    second positional parameter, so only a call by keyword gives the model its mask (a mask
    passed as `past` raises)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.head = nn.Linear(width, 2)

    def forward(
        self,
        input_ids: torch.Tensor,
        past: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> _Out:
        assert past is None, "the mask went to `past`: inputs were passed positionally"
        assert attention_mask is not None
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return _Out(logits=self.head(pooled))


class _Named(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
        self.ids, self.mask, self.y = ids, mask, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.y[i]


def _named_task() -> Task:
    # class 0: real tokens in 1..4, class 1: in 5..9; padding holds the other class's tokens,
    # so a model that does not get its mask learns nothing
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    low, high = (
        torch.randint(1, 5, (64, 6), generator=g),
        torch.randint(5, 10, (64, 6), generator=g),
    )
    mask = (torch.arange(6)[None, :] < torch.randint(2, 5, (64, 1), generator=g)).long()
    real = torch.where(y[:, None] == 1, high, low)
    ids = torch.where(mask.bool(), real, torch.where(y[:, None] == 1, low, high))
    ds = _Named(ids, mask, y)
    return Task("named", _Keywords, lambda: _Keywords(width=4), ds, ds, ds, num_classes=2)


def test_named_inputs_reach_forward_by_keyword_through_every_stage_and_runtime() -> None:
    import onnx

    from stages.runtime import make_predictor

    task = _named_task()
    check_task(task, source="named")
    x = task.example_input(3)
    assert isinstance(x, dict) and list(x) == ["input_ids", "attention_mask"]
    teacher = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=15, lr=0.02))
    student = distill(
        StageInput(task=task, parent=teacher.checkpoint), DistillParams(epochs=15, lr=0.02)
    )
    assert student.metrics["val_accuracy"] > 0.6  # it learned: the mask reached the model
    eager = make_predictor(task, student.checkpoint)
    expected = eager(x)
    for runtime in ("torchscript", "onnxruntime"):
        out = export(StageInput(task=task, parent=student.checkpoint), ExportParams(runtime))
        predictor = make_predictor(task, out.checkpoint)
        # by keyword in any order, or as the dict a DataLoader yields
        reordered = predictor(attention_mask=x["attention_mask"], input_ids=x["input_ids"])
        torch.testing.assert_close(reordered, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(predictor(x), expected, rtol=1e-4, atol=1e-5)
        assert evaluate(task, out.checkpoint, warmup=1, repeats=3).accuracy == pytest.approx(
            eager.accuracy(task.test)
        )
        if runtime == "onnxruntime":
            assert out.checkpoint.onnx is not None
            graph = onnx.load_from_string(out.checkpoint.onnx).graph
            axes = {
                i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in graph.input
            }
            assert axes == {
                "input_ids": ["batch", "sequence"],
                "attention_mask": ["batch", "sequence"],
            }
            # another sequence length runs
            short = {k: v[:, :4] for k, v in x.items()}
            torch.testing.assert_close(predictor(short), eager(short), rtol=1e-4, atol=1e-5)


def test_named_inputs_refused_where_a_tool_is_positional_only() -> None:
    from stages.batches import as_args

    with pytest.raises(SqueezerayError, match="named inputs \\(input_ids\\) cannot be passed"):
        as_args({"input_ids": torch.zeros(1, 2, dtype=torch.long)})
