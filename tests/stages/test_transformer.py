"""A user-style nn.TransformerEncoder classifier through lowrank, LoRA and every int8 mode.

Before issue 12 item 3, lowrank/lora/dynamic_int8 failed on it (the encoder layer's fast path
reads `linear1.weight`), qat failed on the Embedding's qscheme, and static_int8 quantized only
the classifier head. Also: stages that would do nothing say so (item 6), and quantization
reports what it did as `quantized_fraction` (item 4).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from stages.attention import LinearAttention, convert_attention
from stages.base import StageInput, StageOutput
from stages.checkpoint import ModelCheckpoint
from stages.errors import SqueezerayError
from stages.layers import restore_slow_path
from stages.lora import LoraParams, inject_lora, lora, lora_targets
from stages.lowrank import LowRankParams, lowrank
from stages.metrics import count_weights, quantized_fraction, size_bytes
from stages.precheck import check_stages_apply
from stages.quantize import QuantizeParams, quantize
from stages.rebuild import build_model
from stages.tasks import Task, load_task
from stages.teacher import TeacherParams, train_teacher
from stages.training import accuracy
from tests.stages.conv_only_task import conv_only
from tests.stages.transformer_task import TokenTransformer

TASK = "tests.stages.transformer_task:make_task"
CONV_ONLY = "tests.stages.conv_only_task:make_task"
CPU = torch.device("cpu")
FFN = [f"encoder.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)]
ATTENTION = [f"encoder.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("in_proj", "out_proj")]


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(TASK)


@pytest.fixture(scope="module")
def teacher(task: Task) -> ModelCheckpoint:
    """The d_model-32, 2-layer teacher, 6 epochs (~3 s): val accuracy ~1.0."""
    out = train_teacher(StageInput(task=task, parent=None, seed=0), TeacherParams(epochs=6))
    assert out.metrics["val_accuracy"] > 0.9
    return out.checkpoint


def _roundtrip(ckpt: ModelCheckpoint) -> ModelCheckpoint:
    """Through the bytes every cache file holds (torch.load weights_only=True)."""
    return ModelCheckpoint.from_bytes(ckpt.to_bytes())


def _same_outputs(task: Task, out: StageOutput) -> None:
    """The checkpoint rebuilds (from bytes) into a model with the stage's val accuracy."""
    rebuilt = build_model(task, _roundtrip(out.checkpoint))
    assert accuracy(rebuilt, task.val, device=CPU) == out.metrics["val_accuracy"]


# -- the fast path ----------------------------------------------------------------------------


def test_fast_path_is_turned_off_only_where_a_layer_was_replaced() -> None:
    model = TokenTransformer().eval()
    x = torch.randint(0, 24, (4, 12))
    with torch.no_grad():
        reference = model(x)
    assert restore_slow_path(model) == 0  # nothing replaced: the fast path stays
    assert all(layer.activation_relu_or_gelu for layer in model.encoder.layers)
    layer0 = model.encoder.layers[0]
    layer0.linear1 = nn.Sequential(layer0.linear1)  # same function, no `.weight`
    with pytest.raises(AttributeError, match="weight"), torch.no_grad():
        model(x)  # what users hit before: the fast path reads linear1.weight
    assert restore_slow_path(model) == 1
    assert not layer0.activation_relu_or_gelu and model.encoder.layers[1].activation_relu_or_gelu
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-5)


# -- lowrank ------------------------------------------------------------------------------------


def test_lowrank_factorises_the_feed_forward_linears(task: Task, teacher: ModelCheckpoint) -> None:
    out = lowrank(StageInput(task=task, parent=teacher), LowRankParams(rank_ratio=0.25))
    # linear1 (64x32) and linear2 (32x64) of both layers, r = 8; the 3x32 head is below
    # min_features; attention projections are not factorised.
    assert out.checkpoint.recipe["lowrank"] == dict.fromkeys(FFN, 8)
    assert out.metrics["layers_factorized"] == 4
    assert out.metrics["params_total_after"] < out.metrics["params_total_before"]
    assert "encoder.layers.0.self_attn.in_proj_weight" in out.checkpoint.state_dict
    assert out.metrics["val_accuracy"] > 0.8
    _same_outputs(task, out)


def test_lowrank_that_would_factorise_nothing_says_why(
    task: Task, teacher: ModelCheckpoint
) -> None:
    params = LowRankParams(rank_ratio=0.25, min_features=100)
    with pytest.raises(SqueezerayError, match=r"factorised no layer.*min_features=100"):
        lowrank(StageInput(task=task, parent=teacher), params)
    # rank_ratio 1.0 is the documented no-op, and says so in its metrics.
    same = lowrank(StageInput(task=task, parent=teacher), LowRankParams(rank_ratio=1.0))
    assert same.metrics["layers_factorized"] == 0
    assert "lowrank" not in same.checkpoint.recipe


# -- LoRA ----------------------------------------------------------------------------------------


def test_lora_targets_attention_projections_and_feed_forward() -> None:
    names = [(name, attr) for name, _m, attr in lora_targets(TokenTransformer(layers=1))]
    assert names == [
        ("encoder.layers.0.self_attn", "in_proj_weight"),
        ("encoder.layers.0.self_attn.out_proj", "weight"),
        ("encoder.layers.0.linear1", "weight"),
        ("encoder.layers.0.linear2", "weight"),
        ("head", "weight"),
    ]


def test_lora_trains_and_merges_into_attention_and_feed_forward(
    task: Task, teacher: ModelCheckpoint
) -> None:
    out = lora(StageInput(task=task, parent=teacher), LoraParams(rank=2, mode="ce", epochs=1))
    # r * (out + in) per target: in_proj 96x32, out_proj 32x32, linear1 64x32, linear2 32x64
    # per layer (2 layers), head 3x32.
    assert out.metrics["trainable_params"] == 2 * (2 * (128 + 64 + 96 + 96) + 35)
    assert out.metrics["merge_max_abs_diff"] <= 1e-5
    state, before = out.checkpoint.state_dict, teacher.state_dict
    assert state.keys() == before.keys()  # merged: the plain model again
    for key in (
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.1.self_attn.out_proj.weight",
        "encoder.layers.0.linear1.weight",
    ):
        assert not torch.equal(state[key], before[key]), key
    assert torch.equal(state["embed.weight"], before["embed.weight"])  # not a target
    _same_outputs(task, out)


def test_lora_on_a_model_without_targets_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    with pytest.raises(SqueezerayError, match=r"no layer LoRA can adapt.*Conv2d x1"):
        inject_lora(model, rank=2, alpha=4.0, masked=False, seed=0)


# -- attention with Linear projections ------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "masks",
    ["none", "key_padding", "causal_bool", "float_and_padding", "no_weights", "per_head_weights"],
)
def test_linear_attention_computes_what_multihead_attention_does(
    batch_first: bool, masks: str
) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()  # PyTorch initialises biases to 0: make them count
        mha.out_proj.bias.normal_()
    attention = LinearAttention.from_mha(mha)
    assert sum(p.numel() for p in attention.parameters()) == sum(
        p.numel() for p in mha.parameters()
    )
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -2:] = True
    kwargs: dict[str, object] = {
        "none": {},
        "key_padding": {"key_padding_mask": padding},
        "causal_bool": {"attn_mask": torch.ones(5, 5, dtype=torch.bool).triu(1)},
        "float_and_padding": {
            "attn_mask": torch.randn(5, 5),
            "key_padding_mask": torch.zeros(3, 5).masked_fill(padding, float("-inf")),
        },
        "no_weights": {"need_weights": False, "key_padding_mask": padding},
        "per_head_weights": {"average_attn_weights": False},
    }[masks]
    with torch.no_grad():
        expected, expected_weights = mha(x, x, x, **kwargs)
        got, weights = attention(x, x, x, **kwargs)
        cross, _ = attention(x, x.flip(0), x.flip(0))
        cross_expected, _ = mha(x, x.flip(0), x.flip(0))
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(cross, cross_expected, atol=1e-5)
    if expected_weights is None:
        assert weights is None
    else:
        assert weights is not None and torch.allclose(weights, expected_weights, atol=1e-6)


def test_converted_encoder_keeps_its_outputs_and_leaves_other_attention() -> None:
    model = TokenTransformer().eval()
    x = torch.randint(0, 24, (4, 12))
    with torch.no_grad():
        reference = model(x)
    assert convert_attention(model, inside=lambda m: isinstance(m, nn.Sequential)) == 0
    assert convert_attention(model) == 2
    restore_slow_path(model)  # the fast path reads in_proj_weight, which is gone
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-5)
    unsupported = nn.MultiheadAttention(16, 4, kdim=8, vdim=8)
    assert not LinearAttention.supports(unsupported)


# -- quantize ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dynamic_int8", "static_int8", "qat", "onnx_int8"])
def test_every_int8_mode_quantizes_the_encoder(
    task: Task, teacher: ModelCheckpoint, mode: str
) -> None:
    out = quantize(
        StageInput(task=task, parent=teacher, seed=0), QuantizeParams(mode=mode, qat_epochs=1)
    )
    ckpt = _roundtrip(out.checkpoint)
    fraction = quantized_fraction(ckpt)
    assert out.metrics["quantized_fraction"] == fraction
    assert 0.5 < fraction < 1.0  # most weights are int8; the Embedding stays float
    assert quantized_fraction(teacher) == 0.0
    assert size_bytes(ckpt) < size_bytes(teacher)
    assert out.metrics["val_accuracy"] > 0.8
    if mode != "onnx_int8":
        state = ckpt.state_dict
        embed = "embed.weight" if mode == "dynamic_int8" else "model.embed.weight"  # LogitsOnly
        assert state[embed].dtype == torch.float32
        if mode == "dynamic_int8":
            packed = [k for k in state if k.endswith("._packed_params._packed_params")]
            # The feed-forward Linears and the attention projections inside
            # nn.TransformerEncoder are int8.
            for name in FFN + ATTENTION:
                assert any(k.startswith(f"{name}.") for k in packed), (name, packed)
        else:  # PT2E: one int8 constant per Linear of the exported graph, head included
            int8 = [k for k in state if "_frozen_param" in k]
            assert len(int8) == len(FFN + ATTENTION) + 1, sorted(state)
        counts = count_weights(ckpt)
        layer_weights = 2 * (64 * 32 + 32 * 64) + 2 * (96 * 32 + 32 * 32)
        assert counts.int8 >= layer_weights
        _same_outputs(task, out)


def test_quantizing_nothing_is_an_error_that_says_why() -> None:
    conv_task = load_task(CONV_ONLY)
    parent = ModelCheckpoint(
        task=conv_task.name, state_dict=conv_only(4).state_dict(), recipe={"arch": "student"}
    )
    with pytest.raises(
        SqueezerayError, match=r"dynamic_int8.*quantized no weight.*nn\.Linear.*Conv2d x2"
    ):
        quantize(StageInput(task=conv_task, parent=parent), QuantizeParams(mode="dynamic_int8"))
    static = quantize(StageInput(task=conv_task, parent=parent), QuantizeParams(mode="static_int8"))
    assert static.metrics["quantized_fraction"] > 0.9  # the conv weights; biases stay float


# -- refused up front ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "values", "message"),
    [
        (
            ["teacher", "distill", "lora"],
            {"lora.rank": [0, 4]},
            r"lora\.rank=4 cannot apply to the student model.*Conv2d x2.*lora\.rank: 0",
        ),
        (
            ["teacher", "lowrank"],
            {"lowrank.rank_ratio": [0.25, 1.0]},
            r"lowrank\.rank_ratio=0\.25 cannot apply to the teacher model.*nn\.Linear",
        ),
        (
            ["teacher", "quantize"],
            {"quantize.mode": ["none", "dynamic_int8"]},
            r"quantize\.mode='dynamic_int8' cannot apply.*static_int8, qat or onnx_int8",
        ),
    ],
)
def test_stages_that_cannot_apply_are_refused_up_front(
    pipeline: list[str], values: dict[str, list[object]], message: str
) -> None:
    conv_task = load_task(CONV_ONLY)
    with pytest.raises(SqueezerayError, match=message):
        check_stages_apply(conv_task, pipeline, values)
    # What can apply passes: the no-op values, another quantize mode, a model with Linears.
    check_stages_apply(
        conv_task,
        pipeline,
        {"lora.rank": [0], "lowrank.rank_ratio": [1.0], "quantize.mode": ["static_int8"]},
    )
    check_stages_apply(load_task(TASK), pipeline, values)


def test_lowrank_sizes_are_checked_up_front_min_features_also_when_resized() -> None:
    task = load_task(TASK)  # student: d_model 16, ff 32, head 3x16
    too_big = {"lowrank.rank_ratio": [0.25, 0.5], "lowrank.min_features": [64]}
    with pytest.raises(
        SqueezerayError, match=r"rank_ratio=0\.25 with lowrank\.min_features=64 cannot factorise"
    ):
        check_stages_apply(task, ["teacher", "distill", "lowrank"], too_big)
    # The smallest reachable min_features decides (a range reaching 16 can factorise).
    check_stages_apply(
        task, ["teacher", "distill", "lowrank"], {**too_big, "lowrank.min_features": [16, 64]}
    )
    # Structured pruning upstream only shrinks layers: below min_features as built stays below.
    with pytest.raises(SqueezerayError, match=r"min_features=64 cannot factorise"):
        check_stages_apply(
            task,
            ["teacher", "distill", "prune", "lowrank"],
            {**too_big, "prune.method": ["structured"]},
        )
    # Whether the rank shrinks a layer depends on its pruned shape: left to the stage (a 16x16
    # layer at rank_ratio 0.99 does not shrink as built, but passes here).
    check_stages_apply(
        task,
        ["teacher", "distill", "prune", "lowrank"],
        {
            "lowrank.rank_ratio": [0.99],
            "lowrank.min_features": [16],
            "prune.method": ["structured"],
        },
    )


def test_sweep_and_validate_refuse_before_ray(tmp_path: Path) -> None:
    from orchestrator.engine.sweep import prepare_sweep

    space = tmp_path / "space.yaml"
    space.write_text(
        f"task: {CONV_ONLY}\npipeline: [teacher, distill, lora]\n"
        "params:\n  lora.rank: {choice: [0, 2]}\nsearch: {algorithm: grid}\n"
    )
    with pytest.raises(SqueezerayError, match=r"lora\.rank=2 cannot apply"):
        prepare_sweep(space, storage=tmp_path / "results")
    # `squeezeray validate` runs the same check: exit 2 with the message.
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["validate", str(space)])
    assert result.exit_code == 2
    assert "lora.rank=2 cannot apply" in " ".join(result.output.split())


def test_qat_keeps_a_pruned_encoders_zeros(task: Task, teacher: ModelCheckpoint) -> None:
    from stages.prune import PruneParams, prune

    pruned = prune(
        StageInput(task=task, parent=teacher), PruneParams(method="l1_unstructured", ratio=0.5)
    ).checkpoint
    zeros = {
        name: pruned.state_dict[f"{name}.weight"] == 0
        for name in FFN
        if bool((pruned.state_dict[f"{name}.weight"] == 0).any())
    }
    assert zeros, "l1_unstructured zeroes the feed-forward Linears"
    out = quantize(StageInput(task=task, parent=pruned), QuantizeParams(mode="qat", qat_epochs=1))
    # PT2E keeps the int8 weights as graph constants (`_frozen_param<i>`, in graph order); the
    # feed-forward ones are those of the FFN shapes, in FFN's order.
    state = out.checkpoint.state_dict
    ffn_shapes = {tuple(mask.shape) for mask in zeros.values()}
    frozen = sorted(
        (k for k in state if k.startswith("_frozen_param")),
        key=lambda k: int(k.removeprefix("_frozen_param")),
    )
    int8 = [state[k] for k in frozen if tuple(state[k].shape) in ffn_shapes]
    assert len(int8) == len(FFN)
    for name, weight in zip(FFN, int8, strict=True):
        if name not in zeros:
            continue
        mask = zeros[name]
        assert weight.dtype == torch.int8 and tuple(weight.shape) == tuple(mask.shape), name
        assert bool((weight[mask] == 0).all()), name  # QAT trained through the mask


class _EncoderDecoder(nn.Module):
    """nn.Transformer (encoder + decoder, causal target mask) over token ids -> 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 16)
        self.transformer = nn.Transformer(16, 2, 1, 1, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.head(self.transformer(h, h, tgt_mask=causal).mean(dim=1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["dynamic_int8"])
def test_encoder_decoder_attention_and_masks_through_int8(mode: str) -> None:
    from torch.utils.data import TensorDataset

    ids = torch.randint(0, 16, (120, 6), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(ids, ids[:, 0] % 3)
    task = Task("enc-dec", _EncoderDecoder, _EncoderDecoder, data, data, data, 3)
    torch.manual_seed(0)
    parent = ModelCheckpoint(
        task="enc-dec", state_dict=_EncoderDecoder().state_dict(), recipe={"arch": "student"}
    )
    out = quantize(StageInput(task=task, parent=parent), QuantizeParams(mode=mode))
    state = out.checkpoint.state_dict
    # Self- and cross-attention of the decoder are int8 too (cross-attention: query != key).
    for name in ("decoder.layers.0.self_attn", "decoder.layers.0.multihead_attn"):
        assert any(
            k.startswith(f"transformer.{name}.in_proj.") and k.endswith("_packed_params")
            for k in state
        ), name
    assert out.metrics["quantized_fraction"] > 0.8
    float_model = build_model(task, parent)
    rebuilt = build_model(task, _roundtrip(out.checkpoint))
    with torch.no_grad():  # int8 error only: same predictions on most samples
        agree = (float_model(ids).argmax(1) == rebuilt(ids).argmax(1)).float().mean()
    assert agree > 0.9


def test_static_int8_refuses_what_torch_export_cannot_capture_with_the_reason() -> None:
    """nn.Transformer compares `tgt_mask` with a causal mask in Python (`torch.equal`, a
    data-dependent branch): torch.export refuses it, so PT2E static_int8 is an error that says
    so and names the modes that work (FX used to trace it; dynamic_int8 still quantizes it)."""
    from torch.utils.data import TensorDataset

    ids = torch.randint(0, 16, (64, 6), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(ids, ids[:, 0] % 3)
    task = Task("enc-dec", _EncoderDecoder, _EncoderDecoder, data, data, data, 3)
    parent = ModelCheckpoint(
        task="enc-dec", state_dict=_EncoderDecoder().state_dict(), recipe={"arch": "student"}
    )
    message = r"static_int8: torch.export could not capture the model.*dynamic_int8"
    with pytest.raises(SqueezerayError, match=message):
        quantize(StageInput(task=task, parent=parent), QuantizeParams(mode="static_int8"))
