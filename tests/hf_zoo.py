"""A zoo of tiny Hugging Face models, built from configs (no downloads), as users have them.

Each model is built from a tiny config with a fixed seed, written with `save_pretrained` into a
per-process temporary directory and loaded back with `from_pretrained`, so the teacher is what a
user's local checkpoint directory gives. The seed makes every process (every Ray worker) build
the same weights, so task fingerprints agree.

Entries (`ZOO`, zero-argument callables returning a `stages.Task`, named as
`task: tests.hf_zoo:<callable>`):

Each task is built by `stages.hf.sequence_classification_task` (`image_classification_task`
for ViT) from the model's directory, as a user builds one: the teacher as loaded, the student
made from it (`student=None`).

- `bert`: `BertForSequenceClassification` (hidden 32, 2 layers, 4 heads of 8, FFN 64), samples
  `{"input_ids", "attention_mask", "token_type_ids"}`; its directory also holds a WordPiece
  tokenizer (`vocab.txt`, `tokenizer_config.json`) as a real checkpoint does.
- `distilbert`: `DistilBertForSequenceClassification` (dim 32, 2 layers, 4 heads), samples
  `{"input_ids", "attention_mask"}` (DistilBERT takes no token_type_ids).
- `gpt2`: `GPT2ForSequenceClassification` (n_embd 32, 2 layers, 4 heads, `pad_token_id` set, so
  it classifies from the last non-pad token), samples `{"input_ids", "attention_mask"}`: the mask
  must reach `attention_mask`, not the second positional argument (`past_key_values`).
- `vit`: `ViTForImageClassification` (16x16 RGB, patch 8, hidden 32), samples
  `{"pixel_values"}`.

Data (a few dozen samples; int64 ids, masks with right padding): the label is learnable, so
accuracy means something: text class = `input_ids[:, 1] % NUM_CLASSES` (the first token after
`[CLS]`, drawn from a small set of ids so every id is seen in training); image class = the
colour channel made brighter.

Helpers for tests that need no Task: `checkpoint_dir(kind)` (the `save_pretrained` directory),
`load(kind)` (a fresh model from it), `text_splits(...)`, `image_splits(...)`,
`example_batch(kind)`.

Importing this module skips the importing test module when transformers is not installed.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from stages.hf import NamedTensorDataset, image_classification_task, sequence_classification_task
from stages.tasks import Task

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # no progress bars or config notes in test output
transformers.logging.disable_progress_bar()

SEED = 0
VOCAB = 64
SEQ_LEN = 16
NUM_CLASSES = 2
IMAGE_SIZE = 16
IMAGE_CLASSES = 3
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4  # BERT's special-token order
FIRST_WORD_ID = 5
KEY_IDS = tuple(range(FIRST_WORD_ID, FIRST_WORD_ID + 8))  # ids that decide the label
KINDS = ("bert", "distilbert", "gpt2", "vit")
SPLIT_SIZES = (64, 24, 24)  # train, val, test


# -- models -----------------------------------------------------------------------------------


def _config(kind: str) -> Any:
    t = transformers
    if kind == "bert":
        return t.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=SEQ_LEN, type_vocab_size=2,
            pad_token_id=PAD_ID, num_labels=NUM_CLASSES,
        )  # fmt: skip
    if kind == "distilbert":
        return t.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=SEQ_LEN, pad_token_id=PAD_ID, num_labels=NUM_CLASSES,
        )  # fmt: skip
    if kind == "gpt2":
        return t.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=SEQ_LEN,
            pad_token_id=PAD_ID, bos_token_id=CLS_ID, eos_token_id=SEP_ID, num_labels=NUM_CLASSES,
        )  # fmt: skip
    if kind == "vit":
        return t.ViTConfig(
            image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=32,
            num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            num_labels=IMAGE_CLASSES,
        )  # fmt: skip
    raise ValueError(f"kind={kind!r}; accepted: {', '.join(KINDS)}")


def _model_class(kind: str) -> Any:
    t = transformers
    return {
        "bert": t.BertForSequenceClassification,
        "distilbert": t.DistilBertForSequenceClassification,
        "gpt2": t.GPT2ForSequenceClassification,
        "vit": t.ViTForImageClassification,
    }[kind]


def _write_bert_tokenizer(directory: Path) -> None:
    """A WordPiece tokenizer over the zoo's vocabulary, saved as a real checkpoint has it."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"w{i}" for i in range(VOCAB - len(vocab))]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    tokenizer.model_max_length = SEQ_LEN
    tokenizer.save_pretrained(str(directory))


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="squeezeray-hf-zoo-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def checkpoint_dir(kind: str) -> Path:
    """The `save_pretrained` directory of the zoo's `kind` model (built once per process)."""
    directory = _root() / kind
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = _model_class(kind)(_config(kind))
    model.save_pretrained(str(directory))
    if kind == "bert":
        _write_bert_tokenizer(directory)
    return directory


def load(kind: str) -> nn.Module:
    """A fresh model loaded with `from_pretrained` from `checkpoint_dir(kind)` (eval mode)."""
    model: nn.Module = _model_class(kind).from_pretrained(str(checkpoint_dir(kind)))
    return model.eval()


# -- data -------------------------------------------------------------------------------------


def _text(n: int, *, seed: int, keys: tuple[str, ...]) -> NamedTensorDataset:
    """`n` right-padded sequences of SEQ_LEN int64 ids: [CLS] key w w ... [SEP] [PAD]...

    label = key % NUM_CLASSES; lengths vary in [SEQ_LEN // 2, SEQ_LEN]; attention_mask is 1 on
    real tokens; token_type_ids are 0.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_WORD_ID, VOCAB, (n, SEQ_LEN), generator=g)
    key = torch.tensor(KEY_IDS)[torch.randint(len(KEY_IDS), (n,), generator=g)]
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (n,), generator=g)
    ids[:, 0], ids[:, 1] = CLS_ID, key
    positions = torch.arange(SEQ_LEN)[None, :]
    ids = torch.where(positions == (lengths - 1)[:, None], SEP_ID, ids)
    mask = (positions < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, PAD_ID)
    columns = {
        "input_ids": ids.long(),
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
    }
    return NamedTensorDataset({k: columns[k] for k in keys}, (key % NUM_CLASSES).long())


def _images(n: int, *, seed: int) -> NamedTensorDataset:
    """`n` noisy 3x16x16 float32 images; class = the colour channel (0-2) made brighter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, IMAGE_CLASSES, (n,), generator=g)
    x[torch.arange(n), y] += 1.0
    return NamedTensorDataset({"pixel_values": x}, y.long())


TEXT_KEYS: dict[str, tuple[str, ...]] = {
    "bert": ("input_ids", "attention_mask", "token_type_ids"),
    "distilbert": ("input_ids", "attention_mask"),
    "gpt2": ("input_ids", "attention_mask"),
}


def text_splits(
    keys: tuple[str, ...] = ("input_ids", "attention_mask"),
) -> tuple[NamedTensorDataset, NamedTensorDataset, NamedTensorDataset]:
    """Train/val/test token datasets (SPLIT_SIZES), each split from its own seed."""
    return tuple(  # type: ignore[return-value]
        _text(n, seed=SEED + i, keys=keys) for i, n in enumerate(SPLIT_SIZES)
    )


def image_splits() -> tuple[NamedTensorDataset, NamedTensorDataset, NamedTensorDataset]:
    return tuple(  # type: ignore[return-value]
        _images(n, seed=SEED + i) for i, n in enumerate(SPLIT_SIZES)
    )


def splits(kind: str) -> tuple[NamedTensorDataset, NamedTensorDataset, NamedTensorDataset]:
    return image_splits() if kind == "vit" else text_splits(TEXT_KEYS[kind])


def num_classes(kind: str) -> int:
    return IMAGE_CLASSES if kind == "vit" else NUM_CLASSES


def example_batch(kind: str, batch_size: int = 2) -> dict[str, torch.Tensor]:
    """The first `batch_size` test samples of `kind`, collated: {name: (batch_size, ...)}."""
    test = splits(kind)[2]
    return {k: v[:batch_size] for k, v in test.inputs.items()}


# -- tasks ------------------------------------------------------------------------------------


def _task(kind: str) -> Task:
    """The zoo's `kind` as a user builds it: `stages.hf`'s helper on the local directory."""
    train, val, test = splits(kind)
    make = image_classification_task if kind == "vit" else sequence_classification_task
    return make(checkpoint_dir(kind), train=train, val=val, test=test, name=f"hf-zoo-{kind}")


def bert() -> Task:
    return _task("bert")


def distilbert() -> Task:
    return _task("distilbert")


def gpt2() -> Task:
    return _task("gpt2")


def vit() -> Task:
    return _task("vit")


ZOO: dict[str, Callable[[], Task]] = {
    "bert": bert,
    "distilbert": distilbert,
    "gpt2": gpt2,
    "vit": vit,
}
