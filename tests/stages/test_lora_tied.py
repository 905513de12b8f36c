"""LoRA on tied (shared) weights (issue 21 item 10): one adapter per shared tensor, registered on
every module that holds it, merged once; the tie survives the merge and the checkpoint. Lowrank
leaves a tied Linear whole (factorising one holder would untie it and grow the model).

Before, each holder got its own adapter on the one tensor, the first merge wrote into the
shared tensor and the second added its update on top: "LoRA merge check failed ... the merged
weights do not reproduce the trained adapters"."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.base import StageInput
from stages.layers import tied_holders
from stages.lora import SPEC as LORA
from stages.lora import LoraParams, inject_lora, merge_lora
from stages.lowrank import SPEC as LOWRANK
from stages.lowrank import LowRankParams
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.tasks import Task
from stages.teacher import SPEC as TEACHER
from stages.teacher import TeacherParams


class SharedLinears(nn.Module):
    """Two Linears sharing one weight Parameter (the reported case)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.b(torch.relu(self.a(x))))


class TiedHead(nn.Module):
    """Token ids -> embedding -> Linear, the output head tied to the embedding (an LM-style
    tie), whose vocabulary-sized output is read as the class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(3, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.emb(ids).mean(1))))


def _task(model: type[nn.Module]) -> Task:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    if model is TiedHead:
        x: torch.Tensor = (y[:, None] + torch.randint(0, 2, (60, 5), generator=g)) % 3
    else:
        x = torch.randn(60, 8, generator=g) + y[:, None].float()
    data = TensorDataset(x, y)
    return Task("tied", model, None, data, data, data, 3)


def test_tied_holders_are_found() -> None:
    shared, tied = SharedLinears(), TiedHead()
    assert [[a for _m, a in h] for h in tied_holders(shared).values()] == [["weight", "weight"]]
    assert list(tied_holders(tied).values()) == [[(tied.emb, "weight"), (tied.head, "weight")]]


def test_one_adapter_per_shared_tensor_merged_once_keeps_the_tie() -> None:
    for model_type in (SharedLinears, TiedHead):
        torch.manual_seed(0)
        model = model_type()
        adapters = inject_lora(model, rank=2, alpha=4.0, masked=False, seed=0)
        # two adapted tensors each: (a=b, out) and (body, head=emb): A and B for each
        assert len(adapters) == 4
        with torch.no_grad():
            for p in adapters[1::2]:
                p.normal_(0, 0.3)  # trained B: a nonzero update
        example = _task(model_type).example_input(8)
        check = merge_lora(model, example)
        assert check.max_abs_diff <= 1e-5
        pairs = list(tied_holders(model).values())
        assert len(pairs) == 1, "the tie survives the merge"


def test_the_lora_stage_adapts_tied_weights_end_to_end() -> None:
    for model_type in (SharedLinears, TiedHead):
        task = _task(model_type)
        teacher = TEACHER.run(StageInput(task=task, parent=None), TeacherParams(epochs=2))
        out, _ = run_stage(
            LORA,
            StageInput(task=task, parent=teacher.checkpoint, teacher=teacher.checkpoint),
            LoraParams(rank=2, epochs=2, mode="ce", lr=1e-2),
        )
        assert out.metrics["merge_max_abs_diff"] <= 1e-5
        rebuilt = build_model(task, out.checkpoint)
        assert len(tied_holders(rebuilt)) == 1


def test_lowrank_leaves_a_tied_linear_whole() -> None:
    task = _task(TiedHead)
    teacher = TEACHER.run(StageInput(task=task, parent=None), TeacherParams(epochs=1))
    inp = StageInput(task=task, parent=teacher.checkpoint)
    out, _ = run_stage(LOWRANK, inp, LowRankParams(rank_ratio=0.25, min_features=3))
    assert out.checkpoint.recipe["lowrank"] == {"body": 2}  # head (tied to emb) left whole
    assert out.metrics["params_total_after"] < out.metrics["params_total_before"]
    assert len(tied_holders(build_model(task, out.checkpoint))) == 1
