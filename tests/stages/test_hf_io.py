"""Hugging Face checkpoints in (issue 22 item 1): `stages.hf`'s task helpers, and teacher
weights as a .safetensors file or a save_pretrained directory (`stages.weightfiles`)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

from stages.base import StageInput
from stages.errors import SqueezerayError
from stages.hf import NamedTensorDataset, sequence_classification_task
from stages.tasks import check_task
from stages.teacher import TeacherParams, train_teacher
from stages.weightfiles import load_weights, weights_digest
from tests import hf_zoo


def _perturbed(kind: str) -> torch.nn.Module:
    """The zoo model with other weights: what a user's trained checkpoint holds."""
    model = hf_zoo.load(kind)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _logits(model: torch.nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**hf_zoo.example_batch(kind, 4)).logits


def test_sequence_classification_task_from_a_local_directory() -> None:
    train, val, test = hf_zoo.text_splits(hf_zoo.TEXT_KEYS["bert"])
    task = sequence_classification_task(
        hf_zoo.checkpoint_dir("bert"), train=train, val=val, test=test, name="my-bert"
    )
    check_task(task, source="my-bert")
    assert task.name == "my-bert" and task.num_classes == hf_zoo.NUM_CLASSES
    assert task.student is None  # made from the teacher
    torch.testing.assert_close(
        _logits(task.teacher(), "bert"), _logits(hf_zoo.load("bert"), "bert")
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_zoo.checkpoint_dir("bert")))
    assert tokenizer("w1 w2")["input_ids"] == [hf_zoo.CLS_ID, 6, 7, hf_zoo.SEP_ID]  # no [UNK]
    names = {Path(f).name for f in task.export_files}
    assert {"vocab.txt", "tokenizer_config.json"} <= names
    assert not names & {"config.json", "model.safetensors"}


def test_helper_errors_name_the_extra_and_the_directory(tmp_path: Path, monkeypatch) -> None:
    ds = NamedTensorDataset({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, [0, 1])
    with pytest.raises(SqueezerayError, match=r"has no config\.json"):
        sequence_classification_task(tmp_path, train=ds, val=ds, test=ds)
    with pytest.raises(SqueezerayError, match="is not a directory"):
        sequence_classification_task(tmp_path / "nope", train=ds, val=ds, test=ds)
    with pytest.raises(SqueezerayError, match="same length"):
        NamedTensorDataset({"input_ids": torch.zeros(3, 2)}, [0, 1])
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(SqueezerayError, match=r'pip install .*"\.\[hf\]"'):
        sequence_classification_task(tmp_path, train=ds, val=ds, test=ds)


def test_teacher_weights_as_safetensors_file_and_save_pretrained_directory(
    tmp_path: Path,
) -> None:
    from safetensors.torch import save_model

    trained = _perturbed("bert")
    expected = _logits(trained, "bert")
    file = tmp_path / "model.safetensors"
    save_model(trained, str(file))
    directory = tmp_path / "trained"
    trained.save_pretrained(str(directory))
    for path in (file, directory):
        model = hf_zoo.load("bert")
        load_weights(model, str(path), sha256=weights_digest(path))
        torch.testing.assert_close(_logits(model, "bert"), expected)


def test_teacher_weights_of_gpt2_load_before_the_conv1d_swap(tmp_path: Path) -> None:
    """A save_pretrained GPT-2 directory holds Conv1D weights; the teacher stage loads them
    into the factory's model before Task.build makes its Conv1D layers Linear."""
    trained = _perturbed("gpt2")
    trained.save_pretrained(str(tmp_path / "gpt2"))
    task = hf_zoo.gpt2()
    params = TeacherParams(epochs=0, weights=str(tmp_path / "gpt2"))
    out = train_teacher(StageInput(task=task, parent=None), params)
    torch.testing.assert_close(_logits(out.model, "gpt2"), _logits(trained, "gpt2"))


def test_teacher_weights_refusals_name_what_is_accepted(tmp_path: Path) -> None:
    model = hf_zoo.load("bert")
    accepted = "accepted: a state_dict saved with torch.save"
    with pytest.raises(SqueezerayError, match=f"no such file or directory; {accepted}"):
        load_weights(model, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SqueezerayError, match=r"directory without config\.json"):
        load_weights(model, str(tmp_path / "empty"))
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)  # a whole module, not a state_dict
    with pytest.raises(SqueezerayError, match="pickles Python objects besides tensors"):
        load_weights(model, str(whole))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(SqueezerayError, match="not a readable safetensors file"):
        load_weights(model, str(junk))
    other = tmp_path / "distilbert"
    hf_zoo.load("distilbert").save_pretrained(str(other))
    with pytest.raises(SqueezerayError, match="does not load as the task's teacher"):
        load_weights(model, str(other))
