"""Hugging Face models under structured pruning and with transformers' Conv1D (issue 22).

Tiny models from configs (tests/stages/hf_tiny.py); every result must load with
`from_pretrained` from a `save_pretrained` directory and give squeezeray's own logits.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from stages.base import StageInput, StageOutput
from stages.batches import forward_logits
from stages.checkpoint import ModelCheckpoint
from stages.conv1d import CONV1D_MARK, conv1d_form, is_conv1d, linear_form
from stages.distill import DistillParams, distill
from stages.errors import SqueezerayError
from stages.prune import PruneParams, prune
from stages.rebuild import build_model
from stages.tasks import Task
from stages.teacher import TeacherParams, train_teacher
from tests.stages.hf_tiny import hf_task

pytest.importorskip("transformers")


def _teacher(task: Task) -> ModelCheckpoint:
    return train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=0)).checkpoint


def _round_trip(model: nn.Module, directory: Path) -> nn.Module:
    """save_pretrained (Conv1D put back) -> from_pretrained, as a user would load it."""
    saved = copy.deepcopy(model)
    conv1d_form(saved)
    saved.save_pretrained(directory)
    return type(saved).from_pretrained(directory).eval()


def _ffn(config: object) -> int:
    for key in ("intermediate_size", "hidden_dim", "n_inner"):
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    raise AssertionError("no FFN width in the config")


def _check_loads_back(task: Task, out: StageOutput, tmp_path: Path) -> nn.Module:
    """Rebuilt from squeezeray's checkpoint and loaded with from_pretrained: same logits."""
    x = task.example_input(4)
    rebuilt = build_model(task, out.checkpoint)
    loaded = _round_trip(rebuilt, tmp_path)
    with torch.no_grad():
        ours = forward_logits(rebuilt, x)
        assert torch.equal(ours, forward_logits(out.model, x))
        assert torch.equal(forward_logits(loaded, x), ours)
    for key in ("hidden_size", "num_attention_heads"):
        assert getattr(loaded.config, key) == getattr(rebuilt.config, key)
    assert _ffn(loaded.config) == _ffn(rebuilt.config)
    return rebuilt


@pytest.mark.parametrize(
    "name", ["bert", pytest.param("distilbert", marks=pytest.mark.slow), "vit"]
)
def test_structured_prunes_whole_heads_and_the_config_follows(name: str, tmp_path: Path) -> None:
    task = hf_task(name)
    teacher = _teacher(task)
    before = build_model(task, teacher).config
    heads, hidden, ffn = before.num_attention_heads, before.hidden_size, _ffn(before)
    out = prune(StageInput(task=task, parent=teacher), PruneParams(ratio=0.5, method="structured"))
    config = out.model.config
    assert (config.num_attention_heads, config.hidden_size) == (heads // 2, hidden // 2)
    assert _ffn(config) == ffn // 2
    head_size = hidden // heads  # unchanged: whole heads go
    assert config.hidden_size // config.num_attention_heads == head_size
    assert out.metrics["params_total"] < 0.5 * build_model(task, teacher).num_parameters()
    _check_loads_back(task, out, tmp_path)
    # the factory's own config object is untouched: the next model it builds is full size
    assert task.build("teacher").config.num_attention_heads == heads


@pytest.mark.slow
def test_a_ratio_between_head_counts_rounds_to_whole_heads(tmp_path: Path) -> None:
    """0.3 of 4 heads -> 1 head removed (round), hidden 48 = 3 x 16; FFN int(128 x 0.7) = 89;
    gradual steps end at the same shapes."""
    task = hf_task("bert")
    params = PruneParams(ratio=0.3, method="structured", steps=2, finetune_epochs=1)
    out = prune(StageInput(task=task, parent=_teacher(task)), params)
    config = out.model.config
    assert (config.num_attention_heads, config.hidden_size, config.intermediate_size) == (3, 48, 89)
    _check_loads_back(task, out, tmp_path)


def test_gpt2_fused_attention_loses_whole_heads(tmp_path: Path) -> None:
    """GPT-2's fused c_attn: squeezeray removes whole heads itself (q, k and v rows, c_proj
    columns; torch-pruning 1.6 cannot map them), recorded in the pruning history and replayed;
    the model has its cache on (use_cache), which used to break tracing."""
    task = hf_task("gpt2")
    teacher = _teacher(task)
    assert build_model(task, teacher).config.use_cache
    out = prune(StageInput(task=task, parent=teacher), PruneParams(ratio=0.5, method="structured"))
    config = out.model.config
    assert (config.n_head, config.n_embd, config.n_inner) == (2, 32, 128)
    assert config.use_cache  # restored after tracing
    assert any(entry[0].endswith(":heads") for entry in out.checkpoint.recipe["pruned"])
    rebuilt = _check_loads_back(task, out, tmp_path)
    attn = rebuilt.transformer.h[0].attn
    assert (attn.c_attn.out_features, attn.c_proj.in_features, attn.split_size) == (96, 32, 32)


def test_removing_a_gpt2_head_that_adds_nothing_changes_nothing() -> None:
    """remove_heads takes the head's own q, k and v rows: a head whose c_proj columns are zero
    contributes nothing, and removing it leaves the logits as they were."""
    from stages.hfheads import remove_heads

    task = hf_task("gpt2")
    model = task.build("teacher")
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.c_proj.weight[:, 16:32] = 0.0  # head 1 of 4 (head size 16)
    x = task.example_input(4)
    with torch.no_grad():
        before = forward_logits(model, x)
        remove_heads(attn, [1])
        after = forward_logits(model, x)
    assert attn.c_attn.out_features == 3 * 48 and attn.num_heads == 3
    assert torch.allclose(before, after, atol=1e-6)
    with torch.no_grad():  # a head that does contribute changes them
        remove_heads(attn, [0])
        assert not torch.allclose(forward_logits(model, x), after, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "expected"), [("bert", (2, 32, 64)), ("gpt2", (2, 32, 128))], ids=["bert", "gpt2"]
)
def test_student_from_an_hf_teacher_has_half_the_heads_and_loads_with_from_pretrained(
    name: str, expected: tuple[int, int, int], tmp_path: Path
) -> None:
    """Issue 22's required check: student=None, distill.student_ratio 0.5 (BERT; and GPT-2,
    whose heads squeezeray removes itself)."""
    task = hf_task(name)
    teacher = _teacher(task)
    out = distill(
        StageInput(task=task, parent=teacher, seed=0), DistillParams(epochs=1, student_ratio=0.5)
    )
    assert out.checkpoint.arch == "teacher" and out.checkpoint.recipe["pruned"]
    config = out.model.config
    assert (config.num_attention_heads, config.hidden_size, _ffn(config)) == expected
    student = torch.load(_saved(out.checkpoint, tmp_path), weights_only=True)
    assert student["recipe"]["arch"] == "teacher"  # the recipe is plain data
    _check_loads_back(task, out, tmp_path / "hf")


def _saved(ckpt: ModelCheckpoint, tmp_path: Path) -> Path:
    path = tmp_path / "student.pt"
    path.write_bytes(ckpt.to_bytes())
    return path


def test_a_config_that_cannot_follow_is_refused_naming_the_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An FFN layer stages.hfheads does not know: its config key is not updated, so the
    pruned shapes differ from what the config builds: a SqueezerayError names the layer."""
    import stages.hfheads

    monkeypatch.setattr(stages.hfheads, "FFN_LAYERS", ())
    task = hf_task("bert")
    with pytest.raises(SqueezerayError, match=r"intermediate\.dense\.weight .* save_pretrained"):
        prune(
            StageInput(task=task, parent=_teacher(task)),
            PruneParams(ratio=0.5, method="structured"),
        )


# -- transformers' Conv1D ------------------------------------------------------------------


def test_task_build_swaps_conv1d_for_an_exact_linear() -> None:
    task = hf_task("gpt2")
    raw = task.teacher()
    built = task.build("teacher")
    assert any(is_conv1d(m) for m in raw.modules())
    assert not any(is_conv1d(m) for m in built.modules())
    marked = [n for n, m in built.named_modules() if getattr(m, CONV1D_MARK, False)]
    assert len(marked) == 8  # c_attn, c_proj, mlp.c_fc, mlp.c_proj in each of 2 blocks
    assert list(raw.state_dict()) == list(built.state_dict())
    x = task.example_input(4)
    with torch.no_grad():
        assert torch.equal(forward_logits(raw, x), forward_logits(built, x))
    assert conv1d_form(built) == 8 and linear_form(built) == 8  # back and forth
    with torch.no_grad():
        assert torch.equal(forward_logits(raw, x), forward_logits(built, x))


def test_teacher_weights_saved_from_the_conv1d_model_load(tmp_path: Path) -> None:
    task = hf_task("gpt2")
    trained = task.teacher()
    with torch.no_grad():
        trained.transformer.h[0].attn.c_proj.weight.mul_(3.0)  # square: a transpose would load
    path = tmp_path / "gpt2.pt"
    torch.save(trained.state_dict(), path)
    out = train_teacher(
        StageInput(task=task, parent=None), TeacherParams(epochs=0, weights=str(path))
    )
    x = task.example_input(4)
    with torch.no_grad():
        assert torch.equal(forward_logits(out.model, x), forward_logits(trained, x))


def test_every_linear_stage_reaches_gpt2_conv1d_weights() -> None:
    """LoRA, dynamic int8, lowrank and unstructured pruning act on the blocks' Conv1D
    weights, not on the classifier alone (0.2% of the weights before)."""
    from stages.lora import lora_targets
    from stages.lowrank import LowRankParams, lowrank
    from stages.metrics import quantized_fraction
    from stages.quantize import QuantizeParams, quantize

    task = hf_task("gpt2")
    teacher = _teacher(task)
    model = build_model(task, teacher)
    assert {n.rsplit(".", 1)[-1] for n, _, _ in lora_targets(model)} >= {"c_attn", "c_fc"}
    q = quantize(StageInput(task=task, parent=teacher), QuantizeParams(mode="dynamic_int8"))
    assert quantized_fraction(q.checkpoint) > 0.5
    low = lowrank(StageInput(task=task, parent=teacher), LowRankParams(rank_ratio=0.25))
    assert low.metrics["layers_factorized"] >= 8
    pruned = prune(StageInput(task=task, parent=teacher), PruneParams(ratio=0.5))
    c_attn = pruned.model.transformer.h[0].attn.c_attn.weight
    assert float((c_attn == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_precheck_refuses_it_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failure, for the student made from the teacher, stops before Ray."""
    import stages.hfheads
    from stages.precheck import check_pruned_widths

    task = hf_task("bert")
    check_pruned_widths(task, ["teacher", "distill"], {})  # prunable: passes
    monkeypatch.setattr(stages.hfheads, "FFN_LAYERS", ())
    with pytest.raises(SqueezerayError, match=r"distill.student_ratio=0.5 .*intermediate\.dense"):
        check_pruned_widths(task, ["teacher", "distill"], {})


def _albert() -> nn.Module:
    from transformers import AlbertConfig, AlbertForSequenceClassification

    torch.manual_seed(0)
    config = AlbertConfig(
        vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=8, num_labels=3,
    )  # fmt: skip
    return AlbertForSequenceClassification(config).eval()


def test_albert_refusal_advises_the_knob_that_asked_for_structured_pruning() -> None:
    """ALBERT's shared FFN (`ffn`/`ffn_output`) is not one stages.hfheads knows: structured
    pruning is refused before Ray. For the student made from the teacher an unstructured
    prune.method does not help (the student is cut whatever it is; new user F4): the advice
    is distill.student_ratio: 1 or the task's own student; for prune.method: structured, an
    unstructured method."""
    from stages.precheck import check_pruned_widths

    bert = hf_task("bert")
    task = Task(
        name="albert", teacher=_albert, student=None, train=bert.train, val=bert.val,
        test=bert.test, num_classes=3,
    )  # fmt: skip
    with pytest.raises(SqueezerayError) as distilled:
        check_pruned_widths(task, ["teacher", "distill"], {"distill.student_ratio": [0.5]})
    message = " ".join(str(distilled.value).split())
    assert "distill.student_ratio=0.5 (the student made from the teacher)" in message, message
    assert "set distill.student_ratio: 1" in message and "Task(student=...)" in message
    assert "prune.method" not in message
    check_pruned_widths(task, ["teacher", "distill"], {"distill.student_ratio": [1.0]})
    with pytest.raises(SqueezerayError) as pruned:
        check_pruned_widths(task, ["teacher", "prune"], {"prune.method": ["structured"]})
    message = " ".join(str(pruned.value).split())
    assert "prune.method='structured'" in message, message
    assert "unstructured prune.method (l1_unstructured, global, random)" in message
    assert "student_ratio" not in message


def test_one_linear_predicate_in_the_stages() -> None:
    """Every stage asks `stages.layers.is_linear` what a Linear is (GPT-2's Conv1D is one
    after Task.build); no stage module tests `nn.Linear` types on its own (asserts aside)."""
    import re

    root = Path(__file__).resolve().parents[2] / "stages"
    own = re.compile(r"type\([^)]*\) is nn\.Linear|isinstance\([^)]*,\s*nn\.Linear\)")
    found = [
        f"{path.name}:{number}"
        for path in sorted(root.glob("*.py"))
        if path.name != "layers.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if own.search(line) and not line.strip().startswith("assert")
    ]
    assert not found, f"use stages.layers.is_linear: {found}"
