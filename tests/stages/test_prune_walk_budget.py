"""torch-pruning's group walk is bounded (`stages.surgery.bounded_walks`).

A user's own attention with rotary embeddings and a repeated key/value (the layout that hung
`validate` 20+ minutes on a Llama before its heads were recognised) makes torch-pruning follow
the query's channels into an ever larger group: 5000 entries took 10 s for one layer, and the
walk does not end. Structured pruning of such a model now stops within the budget, in the
stage that asked for it (prune, or distill's student made from the teacher) and in `validate`
before any Ray work, with one error naming the layer the walk started from and the fix. The
work is counted (group entries added), not timed. Also importable as a user task
(`tests.stages.test_prune_walk_budget:rotary_attention`).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from stages.base import StageInput
from stages.checkpoint import from_model
from stages.distill import SPEC as DISTILL
from stages.distill import DistillParams
from stages.errors import SqueezerayError
from stages.precheck import check_stages_apply
from stages.prune import SPEC as PRUNE
from stages.prune import PruneParams
from stages.runner import run_stage
from stages.surgery import WALK_VISITS_PER_NODE, GroupWalkTooLong
from stages.tasks import Task

VOCAB, SEQ, WIDTH = 20, 6, 16
# group entries one whole structured prune of this model may add (the walk that does not end
# stops at about 700); the old code passed it in the first group of its attention
WALK_BUDGET = 3000


class RotaryAttention(nn.Module):
    """Grouped-query attention written by hand: 4 query heads share 2 key/value heads, rotary
    embeddings by `rotate_half` (slices and a cat), `repeat_kv` by expand + reshape."""

    def __init__(self, width: int = WIDTH, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head = heads, kv_heads, width // heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, kv_heads * self.head)
        self.v = nn.Linear(width, kv_heads * self.head)
        self.o = nn.Linear(width, width)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, heads, self.head).transpose(1, 2)

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        b, _, s, d = x.shape
        rep = self.heads // self.kv_heads
        return x[:, :, None].expand(b, self.kv_heads, rep, s, d).reshape(b, self.heads, s, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, width = x.shape
        angle = torch.arange(s, dtype=x.dtype)[:, None] / 10
        q, k = self._split(self.q(x), self.heads), self._split(self.k(x), self.kv_heads)
        q, k = (t * angle.cos() + _rotate_half(t) * angle.sin() for t in (q, k))
        v = self._repeat(self._split(self.v(x), self.kv_heads))
        weights = torch.softmax(q @ self._repeat(k).transpose(-1, -2), dim=-1)
        return self.o((weights @ v).transpose(1, 2).reshape(b, s, width))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.attention = RotaryAttention()
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.head((h + self.attention(h)).mean(1))


def rotary_attention() -> Task:
    """The user task: the student is made from the teacher (student=None)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (24, SEQ), generator=g)
    data = TensorDataset(ids, ids[:, 0] % 3)
    return Task("rotary", RotaryNet, None, data, data, data, 3)


def _message(info: pytest.ExceptionInfo[SqueezerayError]) -> str:
    return " ".join(str(info.value).split())


def _assert_names_layer_and_fix(message: str, fix: str) -> None:
    assert "structured pruning cannot follow this model's layout" in message, message
    assert "layer 'attention." in message, message  # q, k or v: where the walk started
    assert f" {WALK_VISITS_PER_NODE} times with new channel indices" in message, message
    assert fix in message, message
    assert "docs/huggingface-pruning.md" in message, message


def test_structured_prune_stops_within_the_budget_naming_the_layer(walked: list[int]) -> None:
    task = rotary_attention()
    torch.manual_seed(0)
    parent = from_model(task, task.build("teacher"), {"arch": "teacher"})
    with pytest.raises(GroupWalkTooLong) as info:
        run_stage(
            PRUNE, StageInput(task=task, parent=parent), PruneParams(ratio=0.5, method="structured")
        )
    message = _message(info)
    assert message.startswith("prune.method='structured' prune.ratio=0.5: "), message
    _assert_names_layer_and_fix(message, "use an unstructured prune.method")
    assert 0 < walked[0] <= WALK_BUDGET


def test_the_student_made_from_the_teacher_blames_distill(walked: list[int]) -> None:
    task = rotary_attention()
    torch.manual_seed(0)
    teacher = from_model(task, task.build("teacher"), {"arch": "teacher"})
    with pytest.raises(GroupWalkTooLong) as info:
        run_stage(
            DISTILL,
            StageInput(task=task, parent=teacher),
            DistillParams(epochs=1, student_ratio=0.5),
        )
    message = _message(info)
    assert message.startswith("distill.student_ratio=0.5 (the student made from the teacher): ")
    _assert_names_layer_and_fix(message, "set distill.student_ratio: 1")
    assert 0 < walked[0] <= WALK_BUDGET


@pytest.mark.parametrize(
    ("pipeline", "values", "what"),
    [
        (["teacher", "prune"], {"prune.method": ["structured"], "prune.ratio": [0.1, 0.4]},
         "prune.method='structured' prune.ratio=0.4"),
        (["teacher", "distill"], {"distill.student_ratio": [0.5]},
         "distill.student_ratio=0.5 (the student made from the teacher)"),
    ],
)  # fmt: skip
def test_validate_refuses_it_up_front_for_every_trial(
    walked: list[int], pipeline: list[str], values: dict[str, list[Any]], what: str
) -> None:
    """Before, a model torch-pruning fails on was left to the stage (one error row per trial);
    a walk that does not end is refused here, naming the knob."""
    with pytest.raises(SqueezerayError) as info:
        check_stages_apply(rotary_attention(), pipeline, values)
    message = _message(info)
    assert message.startswith(f"task 'rotary': {what}: structured pruning cannot follow"), message
    assert 0 < walked[0] <= WALK_BUDGET


def test_squeezeray_validate_exits_2_naming_the_stage(walked: list[int]) -> None:
    from orchestrator.cli import app

    result = CliRunner().invoke(
        app, ["validate", "tiny", "--task", "tests.stages.test_prune_walk_budget:rotary_attention"]
    )
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "distill.student_ratio=0.5 (the student made from the teacher)" in output, output
    assert "structured pruning cannot follow this model's layout" in output, output
    assert 0 < walked[0] <= WALK_BUDGET


def test_a_model_whose_walk_ends_still_prunes(walked: list[int]) -> None:
    """The same attention without the rotary cat and the repeat: the walk ends, within budget."""

    class Plain(RotaryNet):
        def __init__(self) -> None:
            super().__init__()
            self.attention = RotaryAttention(kv_heads=4)
            self.attention.forward = self._plain  # type: ignore[method-assign]

        def _plain(self, x: torch.Tensor) -> torch.Tensor:
            a = self.attention
            return a.o(torch.softmax(a.q(x) @ a.k(x).transpose(1, 2), dim=-1) @ a.v(x))

    base = rotary_attention()
    task = Task("plain", Plain, None, base.train, base.val, base.test, 3)
    torch.manual_seed(0)
    parent = from_model(task, task.build("teacher"), {"arch": "teacher"})
    out, _ = run_stage(
        PRUNE, StageInput(task=task, parent=parent), PruneParams(ratio=0.5, method="structured")
    )
    assert out.metrics["params_total"] < sum(p.numel() for p in Plain().parameters())
    assert 0 < walked[0] <= WALK_BUDGET
