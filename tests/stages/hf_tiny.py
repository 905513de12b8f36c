"""Tiny Hugging Face models (built from configs, no hub) and Tasks around them, for the
structured-pruning and Conv1D tests. Each builds in well under a second."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.tasks import Task

VOCAB, SEQ, CLASSES = 50, 8, 3
IMAGE = 16  # the CNNs' image side


def bert(*, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=SEQ,
        num_labels=CLASSES,
    )
    return BertForSequenceClassification(config).eval()


def distilbert(*, seed: int = 0) -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=VOCAB,
        dim=64,
        n_layers=2,
        n_heads=4,
        hidden_dim=128,
        max_position_embeddings=SEQ,
        num_labels=CLASSES,
    )
    return DistilBertForSequenceClassification(config).eval()


def roberta(*, seed: int = 0) -> nn.Module:
    """Position ids made from input_ids with int32 arithmetic (pad id 0: positions 1..SEQ)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=SEQ + 2,
        pad_token_id=0,
        num_labels=CLASSES,
    )
    return RobertaForSequenceClassification(config).eval()


def gpt2(*, seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=SEQ,
        num_labels=CLASSES,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    return GPT2ForSequenceClassification(config).eval()


def vit(*, seed: int = 0) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=CLASSES,
    )
    return ViTForImageClassification(config).eval()


def llama(*, seed: int = 0) -> nn.Module:
    """Grouped-query attention: 4 query heads share 2 key/value heads (head size 8)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        num_labels=CLASSES,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(config).eval()


def convnext(*, seed: int = 0) -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(seed)
    config = ConvNextConfig(
        num_channels=3,
        patch_size=2,
        num_stages=3,
        hidden_sizes=[8, 16, 32],
        depths=[1, 1, 2],
        image_size=IMAGE,
        num_labels=CLASSES,
    )
    return ConvNextForImageClassification(config).eval()


def resnet(*, seed: int = 0) -> nn.Module:
    """Bottleneck blocks (inner width out / 4, derived from hidden_sizes) and BatchNorm."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16, 32],
        depths=[1, 1, 1],
        layer_type="bottleneck",
        num_labels=CLASSES,
    )
    return ResNetForImageClassification(config).eval()


def deberta(*, seed: int = 0) -> nn.Module:
    """DeBERTa-v2 with relative attention (c2p and p2c, separate pos_key/pos_query Linears):
    `DisentangledSelfAttention`'s query_proj/key_proj/value_proj are not pruned by heads."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        relative_attention=True,
        position_buckets=4,
        pos_att_type=["p2c", "c2p"],
        num_labels=CLASSES,
        pad_token_id=0,
    )
    return DebertaV2ForSequenceClassification(config).eval()


def modernbert(*, seed: int = 0) -> nn.Module:
    """Fused attention (`attn.Wqkv`) and a fused gated FFN (`mlp.Wi`: gate and up in one Linear
    of 2 x intermediate_size outputs, split with `chunk`)."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    torch.manual_seed(seed)
    config = ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        num_labels=CLASSES,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
    )
    return ModernBertForSequenceClassification(config).eval()


def swin(*, seed: int = 0) -> nn.Module:
    """A hierarchical transformer: `num_heads` and `depths` are per-stage lists."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(seed)
    config = SwinConfig(
        image_size=IMAGE,
        patch_size=2,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[2, 4],
        window_size=2,
        num_labels=CLASSES,
    )
    return SwinForImageClassification(config).eval()


def mobilevit(*, seed: int = 0) -> nn.Module:
    """Attention blocks of per-stage widths (`hidden_sizes`) between conv blocks."""
    from transformers import MobileViTConfig, MobileViTForImageClassification

    torch.manual_seed(seed)
    config = MobileViTConfig(
        image_size=IMAGE,
        patch_size=2,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32],
        num_labels=CLASSES,
    )
    return MobileViTForImageClassification(config).eval()


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "bert": bert,
    "distilbert": distilbert,
    "roberta": roberta,
    "gpt2": gpt2,
    "vit": vit,
    "llama": llama,
    "convnext": convnext,
    "resnet": resnet,
    "deberta": deberta,
    "modernbert": modernbert,
    "swin": swin,
    "mobilevit": mobilevit,
}
# image models: side of their images
IMAGES = {"vit": 8, "convnext": 16, "resnet": 16, "swin": IMAGE, "mobilevit": IMAGE}


def _splits(name: str) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    n = 48
    if name in IMAGES:
        x = torch.randn(n, 3, IMAGES[name], IMAGES[name], generator=g)
        y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + (x[:, 1].mean(dim=(1, 2)) > 0.3).long()
    else:
        x = torch.randint(1, VOCAB, (n, SEQ), generator=g)  # 0 is GPT-2's pad token
        y = (x[:, 0] % CLASSES).long()
    parts = (slice(0, 32), slice(32, 40), slice(40, 48))
    return tuple(TensorDataset(x[p], y[p]) for p in parts)  # type: ignore[return-value]


def hf_task(name: str, *, student: bool = False) -> Task:
    """A Task on the tiny model `name` (a `BUILDERS` key), inputs positional
    (input_ids alone, or pixel_values); `student=True` adds a student of the same kind."""
    build = BUILDERS[name]
    train, val, test = _splits(name)
    return Task(
        name=f"hf-{name}",
        teacher=build,
        student=(lambda: build(seed=1)) if student else None,
        train=train,
        val=val,
        test=test,
        num_classes=CLASSES,
    )


def make_bert_task() -> Task:
    """Import path for sweeps: `tests.stages.hf_tiny:make_bert_task`."""
    return hf_task("bert")


def make_convnext_task() -> Task:
    """Import path for sweeps: `tests.stages.hf_tiny:make_convnext_task`."""
    return hf_task("convnext")


def make_swin_task() -> Task:
    """Import path for `squeezeray validate --task tests.stages.hf_tiny:make_swin_task`."""
    return hf_task("swin")


def make_deberta_task() -> Task:
    """Import path for `squeezeray validate --task tests.stages.hf_tiny:make_deberta_task`."""
    return hf_task("deberta")
