"""The teacher stage: accuracy on real tasks, determinism, the checkpoint contract, params."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from stages.base import StageInput, StageOutput
from stages.errors import SqueezerayError
from stages.rebuild import build_model
from stages.tasks import Task, load_task
from stages.teacher import SPEC, TeacherParams, train_teacher
from stages.training import accuracy
from tests.stages.conftest import same_state

CPU = torch.device("cpu")


def test_digits_teacher_is_accurate(digits: Task, digits_teacher: StageOutput) -> None:
    ckpt = digits_teacher.checkpoint
    assert ckpt.recipe == {"arch": "teacher"}
    assert ckpt.task == "digits"
    assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())
    assert digits_teacher.metrics["val_accuracy"] >= 0.95
    # the reported metric is the restored model's, and the test split agrees
    model = build_model(digits, ckpt)
    assert accuracy(model, digits.val, device=CPU) == digits_teacher.metrics["val_accuracy"]
    assert accuracy(model, digits.test, device=CPU) >= 0.93
    assert digits_teacher.metrics["params_total"] == sum(p.numel() for p in model.parameters())


def test_blobs_teacher_is_accurate() -> None:
    task = load_task("blobs")
    out = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=5))
    assert out.metrics["val_accuracy"] >= 0.95
    assert accuracy(build_model(task, out.checkpoint), task.test, device=CPU) >= 0.95


def test_same_seed_same_weights(digits: Task) -> None:
    params = TeacherParams(epochs=1)
    a = train_teacher(StageInput(task=digits, parent=None, seed=3), params)
    b = train_teacher(StageInput(task=digits, parent=None, seed=3), params)
    c = train_teacher(StageInput(task=digits, parent=None, seed=4), params)
    assert same_state(a.checkpoint, b.checkpoint)
    assert not same_state(a.checkpoint, c.checkpoint)


def test_spec() -> None:
    assert SPEC.name == "teacher"
    assert SPEC.needs_parent is False
    assert SPEC.make_params({"epochs": 3}) == TeacherParams(epochs=3)
    with pytest.raises(
        SqueezerayError, match=r"teacher\.epoch is not a parameter.*teacher\.epochs"
    ):
        SPEC.make_params({"epoch": 3})


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("epochs", -1, "[0, inf]"),
        ("lr", 0.0, "(0, inf]"),
        ("lr", -1e-3, "(0, inf]"),
        ("batch_size", 0, "[1, inf]"),
        ("weight_decay", -0.1, "[0, inf]"),
    ],
)
def test_params_out_of_range(field: str, value: float, accepted: str) -> None:
    with pytest.raises(SqueezerayError) as info:
        TeacherParams(**{field: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert f"teacher.{field}={value!r}" in message
    assert accepted in message


def test_params_reject_non_integers() -> None:
    with pytest.raises(SqueezerayError, match=r"teacher\.epochs=2\.5 is not an integer"):
        TeacherParams(epochs=2.5)  # type: ignore[arg-type]


def test_default_params_match_the_contract() -> None:
    assert TeacherParams() == TeacherParams(epochs=40, lr=1e-3, batch_size=64, weight_decay=1e-4)


def test_epochs_zero_uses_the_given_teacher_unchanged(digits: Task) -> None:
    """A factory returning a trained module (with BatchNorm, whose statistics a forward pass in
    train mode would move): epochs=0 checkpoints exactly its weights and buffers."""
    from torch import nn

    from stages.fingerprint import task_fingerprint
    from tests.stages.conftest import train_checkpoint

    torch.manual_seed(0)
    trained = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    trained_ckpt = train_checkpoint(digits, "teacher", epochs=2, model=trained)
    state = {k: v.clone() for k, v in trained_ckpt.state_dict.items()}

    def load() -> nn.Module:
        model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
        model.load_state_dict(state)
        return model

    task = Task(name="given", teacher=load, student=digits.student, train=digits.train,
                val=digits.val, test=digits.test, num_classes=10)  # fmt: skip
    out = train_teacher(StageInput(task=task, parent=None), TeacherParams(epochs=0))
    assert out.checkpoint.state_dict.keys() == state.keys()
    assert all(torch.equal(out.checkpoint.state_dict[k], state[k]) for k in state)
    assert out.metrics["val_accuracy"] == accuracy(load(), digits.val, device=CPU)
    assert "train_loss" not in out.metrics
    # the fingerprint in every stage key follows the weights
    fingerprint = task_fingerprint(task).teacher
    assert fingerprint == task_fingerprint(task).teacher
    state["3.bias"] += 1.0
    assert task_fingerprint(task).teacher != fingerprint


def test_epochs_below_zero_is_rejected() -> None:
    with pytest.raises(SqueezerayError, match=r"teacher.epochs=-1 .*\[0, inf\]"):
        TeacherParams(epochs=-1)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_teacher_weights_param_loads_and_checks_the_file(digits: Task, tmp_path) -> None:
    import hashlib
    import pickle

    from stages.teacher import load_weights

    torch.manual_seed(1)
    trained = digits.build("teacher")
    path = tmp_path / "w.pt"
    torch.save({"state_dict": trained.state_dict()}, path)  # a training script's layout
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    params = TeacherParams(epochs=0, weights=str(path), weights_sha256=digest)
    out = train_teacher(StageInput(task=digits, parent=None), params)
    assert all(
        torch.equal(out.checkpoint.state_dict[k], v) for k, v in trained.state_dict().items()
    )
    with pytest.raises(SqueezerayError, match="changed since the sweep started"):
        load_weights(digits.build("teacher"), str(path), sha256="0" * 64)
    with pytest.raises(SqueezerayError, match="no such file or directory; accepted: "):
        load_weights(digits.build("teacher"), str(tmp_path / "missing.pt"))
    torch.save({"net.0.weight": torch.zeros(1)}, path)
    with pytest.raises(SqueezerayError, match="does not fit the task's teacher"):
        load_weights(digits.build("teacher"), str(path))
    path.write_bytes(pickle.dumps(TeacherParams()))  # a pickle that is not weights-only
    with pytest.raises(SqueezerayError, match="weights_only=True"):
        load_weights(digits.build("teacher"), str(path))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_of_another_size_name_the_shapes_first_then_the_counts(
    tmp_path: Any, suffix: str
) -> None:
    """The shapes that explain a mismatch come first, with counts, not torch's full key list."""
    from safetensors.torch import save_file

    from stages.models import MLP
    from stages.teacher import load_weights

    wide = MLP(4, [16, 16, 16], 2).state_dict()  # another width and one layer more
    state = {k: v.contiguous() for k, v in wide.items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    with pytest.raises(SqueezerayError) as info:
        load_weights(MLP(4, [8, 8], 2), str(path))
    message = str(info.value)
    assert "tensor(s) differ in shape, e.g. net.0.weight: file (16, 4) vs model (8, 4)" in message
    assert "not in the model, e.g." in message and "give the weights of the architecture" in message
    assert message.index("differ in shape") < message.index("not in the model")


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "pt2"])
def test_a_whole_exported_model_is_named_for_what_it_is(tmp_path: Any, kind: str) -> None:
    """New user F7: `--teacher-weights model.onnx` was called a pickle of Python objects."""
    from stages.models import MLP
    from stages.onnxio import to_onnx_bytes
    from stages.teacher import load_weights

    model = MLP(4, [8], 2).eval()
    example = torch.zeros(2, 4)
    path = tmp_path / "model.bin"  # the header decides, not the suffix
    if kind == "onnx":
        path.write_bytes(to_onnx_bytes(model, example))
        said = "is an ONNX model (a protobuf"
    elif kind == "torchscript":
        torch.jit.save(torch.jit.trace(model, example), str(path))
        said = "is a TorchScript module (torch.jit.save"
    else:
        torch.export.save(torch.export.export(model, (example,)), str(path))
        said = "is a torch.export program (torch.export.save"
    with pytest.raises(SqueezerayError) as info:
        load_weights(MLP(4, [8], 2), str(path))
    message = str(info.value)
    assert f"teacher.weights={str(path)!r} {said}" in message
    assert "not weights to load; accepted: a state_dict saved with torch.save" in message
    assert ".safetensors" in message and "save_pretrained" in message
    assert "pickles" not in message
