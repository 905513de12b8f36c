"""`quantize.mode: float16` / `bfloat16` on a model whose forward makes a float32 tensor
(newuser7 F-C): refused up front by validate's pre-flight, not an error row per trial.

The usual masked mean pooling, `m = attention_mask.unsqueeze(-1).float()`, multiplies the half
activations by a float32 mask, so the classifier gets float32 features against half weights
(`mat1 and mat2 must have the same dtype`). Before, `squeezeray validate` said ok and each
trial drawing the mode failed in its quantize stage after its earlier stages ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset
from typer.testing import CliRunner

from stages.base import StageInput
from stages.batches import forward_logits
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.precheck import check_casts_run, check_stages_apply
from stages.quantize import QuantizeParams, quantize
from stages.tasks import Task

VOCAB, DIM, LENGTH, CLASSES = 20, 8, 6, 3


class MeanPooled(nn.Module):
    """Embedding, masked mean pooling, Linear: `dtype_agnostic` picks `.to(h.dtype)` over
    `.float()` for the mask."""

    def __init__(self, *, dtype_agnostic: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.fc = nn.Linear(DIM, CLASSES)
        self.dtype_agnostic = dtype_agnostic

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        mask = attention_mask.unsqueeze(-1)
        m = mask.to(h.dtype) if self.dtype_agnostic else mask.float()
        return self.fc((h * m).sum(1) / m.sum(1).clamp(min=1))


class _Named(Dataset[tuple[dict[str, torch.Tensor], torch.Tensor]]):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
        lengths = torch.randint(2, LENGTH + 1, (n, 1), generator=g)
        self.mask = (torch.arange(LENGTH) < lengths).long()
        self.y = torch.randint(0, CLASSES, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.y[i]


def _task(name: str, factory: type[nn.Module] | object) -> Task:
    return Task(name, factory, None, _Named(24, 0), _Named(12, 1), _Named(12, 2), CLASSES)  # type: ignore[arg-type]


def float_pooling() -> Task:
    """The user's forward: `mask.float()`."""
    return _task("float-pooling", MeanPooled)


def dtype_agnostic_pooling() -> Task:
    """The fixed forward: `mask.to(h.dtype)`."""
    return _task("agnostic-pooling", lambda: MeanPooled(dtype_agnostic=True))


def test_the_quantize_stage_fails_on_it_at_run_time() -> None:
    """What the pre-flight stands for: the stage's own cast and evaluation fail."""
    task = float_pooling()
    parent = ModelCheckpoint(
        task=task.name, state_dict=task.build("teacher").state_dict(), recipe={"arch": "teacher"}
    )
    with pytest.raises(RuntimeError, match="must have the same dtype"):
        quantize(StageInput(task=task, parent=parent), QuantizeParams(mode="float16"))


@pytest.mark.parametrize("modes", [["float16"], ["none", "bfloat16"], ["float16", "bfloat16"]])
def test_each_reachable_cast_is_refused_naming_mode_error_and_fix(modes: list[str]) -> None:
    with pytest.raises(SqueezerayError) as info:
        check_stages_apply(float_pooling(), ["teacher", "quantize"], {"quantize.mode": modes})
    lines = str(info.value).splitlines()
    casts = [m for m in modes if m != "none"]
    assert len(lines) == len(casts), lines
    for mode, line in zip(casts, lines, strict=True):
        assert line.startswith(f"quantize.mode={mode!r} cannot run the teacher model"), line
        assert "must have the same dtype" in line, line
        assert ".to(hidden.dtype)" in line and f"remove {mode} from quantize.mode" in line, line


def test_a_dtype_agnostic_forward_passes_and_runs_cast() -> None:
    task = dtype_agnostic_pooling()
    values = {"quantize.mode": ["float16", "bfloat16"]}
    check_stages_apply(task, ["teacher", "quantize"], values)  # no error
    parent = ModelCheckpoint(
        task=task.name, state_dict=task.build("teacher").state_dict(), recipe={"arch": "teacher"}
    )
    out = quantize(StageInput(task=task, parent=parent), QuantizeParams(mode="float16"))
    assert out.model is not None
    assert forward_logits(out.model, task.example_input(2)).dtype == torch.float16


def test_not_checked_when_no_cast_is_reachable() -> None:
    task = float_pooling()
    check_casts_run(task, ["teacher", "quantize"], {"quantize.mode": ["none", "dynamic_int8"]})
    check_casts_run(task, ["teacher", "prune"], {"quantize.mode": ["float16"]})


def test_squeezeray_validate_exits_2_before_any_trial(tmp_path: Path) -> None:
    from orchestrator.cli import app

    space = {
        "task": "tests.stages.test_cast_precheck:float_pooling",
        "pipeline": ["teacher", "quantize"],
        "params": {"teacher.epochs": 0, "quantize.mode": {"choice": ["none", "float16"]}},
        "search": {"algorithm": "grid"},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert f"{path}: quantize.mode='float16' cannot run the teacher model" in output, output
    assert "mat1 and mat2 must have the same dtype" in output, output
    assert "remove float16 from quantize.mode" in output, output

    fixed = {**space, "task": "tests.stages.test_cast_precheck:dtype_agnostic_pooling"}
    path.write_text(yaml.safe_dump(fixed))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
