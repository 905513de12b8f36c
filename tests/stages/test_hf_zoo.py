"""The Hugging Face zoo (tests/hf_zoo.py): tiny models from configs, loaded from local dirs."""

from __future__ import annotations

import pytest
import torch

from tests import hf_zoo


@pytest.mark.parametrize("kind", hf_zoo.KINDS)
def test_zoo_model_loads_from_its_directory_and_takes_named_inputs(kind: str) -> None:
    directory = hf_zoo.checkpoint_dir(kind)
    assert (directory / "config.json").is_file()
    assert (directory / "model.safetensors").is_file()
    task = hf_zoo.ZOO[kind]()
    batch = hf_zoo.example_batch(kind, 3)
    with torch.no_grad():
        a = task.teacher()(**batch).logits
        b = hf_zoo.load(kind)(**batch).logits
    assert a.shape == (3, task.num_classes)
    assert torch.equal(a, b)  # the directory is the teacher, loaded the same way twice
    x, y = task.train[0]
    assert isinstance(x, dict) and set(x) == set(batch) and 0 <= int(y) < task.num_classes
