"""The re-check of an export: the written files loaded back as a deployment would load them,
and their accuracy (and the task's own metric) on the task's test split compared with the
row's (`recheck`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.checkpoint import ModelCheckpoint
    from stages.tasks import Task


def recheck(
    task: Task,
    ckpt: ModelCheckpoint,
    out: Path,
    expected: float,
    *,
    custom: Mapping[str, float] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Load the written artifact as a deployment would and measure its test accuracy, in
    batches of `batch_size` (the row's `eval_batch_size`: per-batch int8 activations make
    the number depend on it).

    onnxruntime: an InferenceSession on model.onnx; torchscript: torch.jit.load(model.pt);
    eager: the module rebuilt from state_dict.pt + the recipe (the row's own runtime), and
    model.pt through torch.jit.load as well. ok: every accuracy equals `expected` (the same
    number of correct test samples).
    """
    from stages.quiet import int8_tensor_warnings

    n = len(task.test)  # type: ignore[arg-type]
    with int8_tensor_warnings():  # torch's own, loading model.pt's int8 tensors
        accuracies_found = _written_accuracies(task, ckpt, out, batch_size)
    # batches as the row was measured (dynamic int8 quantizes each batch's activations with
    # that batch's range, so its outputs depend on the batching)
    result: dict[str, Any] = {
        "split": "test",
        "samples": n,
        "batch_size": batch_size,
        "expected": expected,
        **accuracies_found,
    }
    accuracies = [
        result[k] for k in ("accuracy", "torchscript_accuracy", "pt2_accuracy") if k in result
    ]
    result["ok"] = all(round(a * n) == round(expected * n) for a in accuracies)
    if task.metric is not None and custom and task.metric.name in custom:
        result.update(_recheck_metric(task, ckpt, custom, batch_size, ok=result["ok"]))
    return result


def _recheck_metric(
    task: Task, ckpt: ModelCheckpoint, custom: Mapping[str, float], batch_size: int, *, ok: bool
) -> dict[str, Any]:
    """The task's own metric on the test split, through the row's runtime, against the row."""
    from stages.runtime import make_predictor

    metric = task.metric
    assert metric is not None
    logits, targets = make_predictor(task, ckpt).outputs(task.test, batch_size=batch_size)
    value = metric(logits, targets)
    expected = custom[metric.name]
    same = math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)
    return {metric.name: value, f"expected_{metric.name}": expected, "ok": ok and same}


def _written_accuracies(
    task: Task, ckpt: ModelCheckpoint, out: Path, batch_size: int
) -> dict[str, float]:
    """{accuracy (the row's runtime), torchscript_accuracy (when model.pt was written),
    pt2_accuracy (model.pt2, torch.export.load)} of the
    files in `out`, loaded as a deployment loads them (compiled: rebuilt, then compiled)."""
    import torch

    from stages.batches import input_names
    from stages.checkpoint import ModelCheckpoint
    from stages.rebuild import build_model
    from stages.runtime import OnnxPredictor, TorchPredictor, make_predictor

    if ckpt.runtime == "onnxruntime":
        onnx = OnnxPredictor((out / "model.onnx").read_bytes(), threads=1)
        return {"accuracy": onnx.accuracy(task.test, batch_size=batch_size)}
    found: dict[str, float] = {}
    if (out / "model.pt").exists():
        names = input_names(task.example_input(1))  # model.pt takes named inputs in this order
        scripted = TorchPredictor(torch.jit.load(str(out / "model.pt")), "torchscript", names=names)
        found["torchscript_accuracy"] = scripted.accuracy(task.test, batch_size=batch_size)
    if (out / "model.pt2").exists():  # loaded as the card says (its ops are registered here)
        names = input_names(task.example_input(1))
        program = torch.export.load(str(out / "model.pt2")).module()
        # called as model.pt is: positional tensors in the card's input order
        positional = TorchPredictor(program, "torchscript", names=names)
        found["pt2_accuracy"] = positional.accuracy(task.test, batch_size=batch_size)
    if ckpt.runtime == "torchscript":
        return {**found, "accuracy": found["torchscript_accuracy"]}
    state = torch.load(out / "state_dict.pt", weights_only=True)
    rebuilt = ModelCheckpoint(task=ckpt.task, state_dict=state, recipe=ckpt.recipe)
    if ckpt.runtime == "compiled":  # compiled as the deployment compiles it
        return {
            **found,
            "accuracy": make_predictor(task, rebuilt).accuracy(task.test, batch_size=batch_size),
        }
    eager = TorchPredictor(build_model(task, rebuilt), "eager")
    return {**found, "accuracy": eager.accuracy(task.test, batch_size=batch_size)}
