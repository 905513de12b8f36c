"""Hugging Face models that structured pruning cannot shrink as asked (new user 7).

- DeBERTa-v2 (`DisentangledSelfAttention`: query_proj/key_proj/value_proj, not pruned by
  heads) with distill.student_ratio: 0.5 or prune.method: structured lost only FFN neurons
  (5-8% of its parameters) and nothing said so. A structured prune that removes under half the
  share its ratio asked is now a `SqueezerayWarning` naming the model, what went and what
  stayed, both shares and the fix: validate and the sweep's pre-flight print it as `warning:`.
- ModernBERT (fused `attn.Wqkv` and fused gate+up `mlp.Wi`) was refused after torch-pruning
  had mangled `Wi`, blaming "a layer squeezeray cannot match to a config key" while the docs
  promised FFN-only pruning for fused layouts; it is now refused from its layers, before any
  pruning, as a family not supported for structured pruning, naming the fused layers.
- Swin (`num_heads` a per-stage list) crashed `squeezeray validate` with a raw TypeError
  (`int(list)` in `stages.hfheads.sizes`, exit 1); MobileViT (`hidden_sizes` per stage) was
  refused with a false cause ("a config holds one value for every layer" although the unpruned
  model already has a width per stage). Both are now one refusal, decided from the config before
  any pruning: the model class, the config key and its value, and the fix for the knob.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from typer.testing import CliRunner

from stages.errors import SqueezerayError, SqueezerayWarning
from stages.precheck import check_stages_apply
from tests.stages.hf_tiny import hf_task

pytest.importorskip("transformers")

STUDENT = (["teacher", "distill"], {"distill.student_ratio": [0.5]})
STRUCTURED = (["teacher", "prune"], {"prune.method": ["structured"], "prune.ratio": [0.5]})


def _flat(info: pytest.ExceptionInfo[SqueezerayError]) -> str:
    return " ".join(str(info.value).split())


# the two settings that prune structurally: (pipeline, values), how a message names it, its fix
KNOBS = [
    (STUDENT, "distill.student_ratio=0.5 (the student made from the teacher)",
     "set distill.student_ratio: 1"),
    (STRUCTURED, "prune.method='structured' prune.ratio=0.5", "use an unstructured prune.method"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "cls", "key"),
    [
        ("swin", "SwinForImageClassification", "num_heads=[2, 4]"),
        ("mobilevit", "MobileViTForImageClassification", "hidden_sizes=[16, 24, 32]"),
    ],
)
@pytest.mark.parametrize(("setting", "what", "fix"), KNOBS)
def test_a_per_stage_config_is_refused_before_ray_naming_key_value_and_fix(
    kind: str, cls: str, key: str, setting: tuple[list[str], dict[str, Any]], what: str, fix: str
) -> None:
    pipeline, values = setting
    with pytest.raises(SqueezerayError) as info:
        check_stages_apply(hf_task(kind), pipeline, values)
    message = _flat(info)
    assert message.startswith(f"task 'hf-{kind}': {what}: structured pruning of {cls}"), message
    assert f"its config holds per-stage widths ({key}" in message, message
    assert fix in message, message
    assert "one value for every layer" not in message, message  # MobileViT's false cause


def test_squeezeray_validate_on_swin_exits_2_not_a_traceback() -> None:
    from orchestrator.cli import app

    result = CliRunner().invoke(
        app, ["validate", "tiny", "--task", "tests.stages.hf_tiny:make_swin_task"]
    )
    assert result.exit_code == 2, (result.output, result.exception)
    output = " ".join(result.output.split())
    assert "SwinForImageClassification" in output and "num_heads=[2, 4]" in output, output
    assert "Traceback" not in output and "TypeError" not in output, output


@pytest.mark.parametrize(("setting", "what", "fix"), KNOBS)
def test_a_prune_far_below_its_ratio_warns_before_ray_naming_what_it_kept(
    setting: tuple[list[str], dict[str, Any]], what: str, fix: str
) -> None:
    pipeline, values = setting
    with pytest.warns(SqueezerayWarning) as caught:
        check_stages_apply(hf_task("deberta"), pipeline, values)
    messages = [" ".join(str(w.message).split()) for w in caught]
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.startswith(f"{what}: structured pruning removed "), message
    assert "% of the model's parameters where 50% was asked" in message, message
    assert "lost only its FFN width (intermediate_size 64 -> 32)" in message, message
    assert "and kept its 4 attention heads and hidden width 32" in message, message
    assert "DisentangledSelfAttention is not one" in message, message
    assert fix in message, message


def test_a_prune_that_reaches_its_ratio_does_not_warn() -> None:
    """BERT loses whole heads, hidden and FFN at 0.5: no warning (nor for ConvNext's channels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SqueezerayWarning)
        for kind in ("bert", "convnext"):
            check_stages_apply(hf_task(kind), *STUDENT)


def test_squeezeray_validate_prints_the_warning_and_exits_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator import cli

    monkeypatch.setattr(warnings, "showwarning", cli._show_warning)  # as cli.main installs it
    result = CliRunner().invoke(
        cli.app, ["validate", "tiny", "--task", "tests.stages.hf_tiny:make_deberta_task"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    output = " ".join(result.output.split())
    assert "warning: distill.student_ratio=0.5 (the student made from the teacher)" in output
    assert "DebertaV2ForSequenceClassification lost only its FFN width" in output, output


@pytest.mark.parametrize(("setting", "what", "fix"), KNOBS)
def test_a_fused_gated_ffn_is_refused_before_pruning_as_not_supported(
    setting: tuple[list[str], dict[str, Any]], what: str, fix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch_pruning as tp

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch-pruning ran on a model refused from its layers")

    monkeypatch.setattr(tp.pruner.MetaPruner, "__init__", never)
    pipeline, values = setting
    with pytest.raises(SqueezerayError) as info:
        check_stages_apply(hf_task("modernbert"), pipeline, values)
    message = _flat(info)
    assert message.startswith(
        f"task 'hf-modernbert': {what}: structured pruning of "
        "ModernBertForSequenceClassification (model_type 'modernbert') is not supported: "
    ), message
    assert "(model.layers.0.mlp.Wi: 32 -> 128 = 2 x intermediate_size 64)" in message, message
    assert "(model.layers.0.attn.Wqkv, ...)" in message, message
    assert fix in message, message
