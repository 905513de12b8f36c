"""Parameters outside the layers torch-pruning prunes (ViT's `cls_token` and position
embeddings, Llama's RMSNorm weights, ConvNext's layer scales, a user's per-channel
`nn.Parameter`) are given to torch-pruning with the dimension it prunes
(`stages.surgery.unwrapped_parameters`).

Before, `squeezeray validate` and every structured prune of such a model printed
torch-pruning's "Unwrapped parameters detected: [...]" warning. They are pruned with their
channels, and the checkpoint rebuilds to the same logits (the replay's graph couples them the
same way).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from stages.base import StageInput
from stages.batches import forward_logits
from stages.checkpoint import from_model
from stages.precheck import check_stages_apply
from stages.prune import SPEC as PRUNE
from stages.prune import PruneParams
from stages.rebuild import build_model
from stages.runner import run_stage
from stages.surgery import unwrapped_parameters
from stages.tasks import Task
from tests.stages.hf_tiny import hf_task
from tests.stages.test_pruned_widths import scaled_parameter

STRUCTURED = PruneParams(ratio=0.5, method="structured")


@pytest.fixture
def unwrapped_warnings() -> Iterator[Callable[[], list[str]]]:
    """torch-pruning's "Unwrapped parameters detected" warnings so far (a call reads them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield lambda: [str(w.message) for w in caught if "Unwrapped parameters" in str(w.message)]


def _pruned(task: Task) -> Any:
    torch.manual_seed(0)
    parent = from_model(task, task.build("teacher"), {"arch": "teacher"})
    out, _ = run_stage(PRUNE, StageInput(task=task, parent=parent), STRUCTURED)
    rebuilt = build_model(task, out.checkpoint)
    x = task.example_input(4)
    with torch.no_grad():
        assert torch.equal(forward_logits(rebuilt, x), forward_logits(out.model, x))
    return out.model


def _vit_checks(model: Any) -> None:
    embeddings = model.vit.embeddings
    hidden = model.config.hidden_size
    assert hidden == 16  # 4 heads of 8 -> 2
    assert embeddings.cls_token.shape == (1, 1, hidden)
    assert embeddings.position_embeddings.shape[-1] == hidden


def _convnext_checks(model: Any) -> None:
    for stage in model.convnext.encoder.stages:
        for layer in stage.layers:
            assert layer.layer_scale_parameter.shape == (layer.dwconv.out_channels,)


def _scaled_checks(model: Any) -> None:
    assert model.scale.shape == (model.fc1.out_features,) == (8,)


CASES: dict[str, tuple[Callable[[], Task], Callable[[Any], None]]] = {
    "vit": (lambda: hf_task("vit"), _vit_checks),
    "convnext": (lambda: hf_task("convnext"), _convnext_checks),
    "user-parameter": (scaled_parameter, _scaled_checks),
}


@pytest.mark.parametrize("name", list(CASES))
def test_structured_prune_gives_torch_pruning_the_unwrapped_parameters(
    name: str, unwrapped_warnings: Callable[[], list[str]]
) -> None:
    make, check = CASES[name]
    task = make()
    assert unwrapped_parameters(task.build("teacher")), "the model has some"
    check(_pruned(task))
    assert unwrapped_warnings() == []


def test_llama_rmsnorm_weights_are_given_along_their_channels() -> None:
    model = hf_task("llama").build("teacher")
    given = {id(p): dim for p, dim in unwrapped_parameters(model)}
    norms = [m.weight for name, m in model.named_modules() if name.endswith("norm")]
    assert norms and all(given.get(id(w)) == 0 for w in norms)
    wrapped = model.model.layers[0].self_attn.q_proj.weight  # a Linear: torch-pruning's own
    assert id(wrapped) not in given


def test_validate_prints_no_unwrapped_parameters_warning(
    unwrapped_warnings: Callable[[], list[str]],
) -> None:
    check_stages_apply(
        hf_task("vit"), ["teacher", "prune"], {"prune.method": ["structured"], "prune.ratio": [0.5]}
    )
    assert unwrapped_warnings() == []
