"""Known-harmless library lines stay off a sweep's terminal (`stages.quiet`), and real
warnings of the same loggers still show. Run in a fresh interpreter: torchao logs its lines
once per process, at import."""

from __future__ import annotations

import pytest

from tests.fresh_python import run_fresh

_SCRIPT = """
import logging, tempfile
import stages  # as every squeezeray process does first
import torch, torchao  # noqa: F401  (torchao: _C .so lines and _pytree notes at import)
from transformers import BertConfig, BertForSequenceClassification
from stages.hf import NamedTensorDataset, sequence_classification_task
d = tempfile.mkdtemp()
BertForSequenceClassification(BertConfig(
    vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, num_labels=2)).save_pretrained(d)
ids = torch.randint(0, 32, (4, 5))
data = NamedTensorDataset({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                          torch.tensor([0, 1, 0, 1]))
task = sequence_classification_task(d, train=data, val=data, test=data)
for _ in range(2):  # the factory runs in every stage
    model = task.build("teacher")
model.loss_function  # what torch.export reads: loss_type=None is harmless here
print("MARK", flush=True)
logging.getLogger("torchao").warning("a real torchao warning")
model.loss_type = "NoSuchLoss"
model.loss_function  # a loss_type the user set that transformers does not know: shown
"""


@pytest.mark.slow
def test_harmless_library_lines_are_dropped_and_real_warnings_kept() -> None:
    proc = run_fresh(_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    before, _, after = (proc.stdout + proc.stderr).partition("MARK")
    for noise in ("Failed to load", "_C_", "is an Enum subclass", "Loading weights",
                  "loss_type=None"):  # fmt: skip
        assert noise not in before, (noise, before[-2000:])
    assert "a real torchao warning" in after
    assert "loss_type=NoSuchLoss" in after
