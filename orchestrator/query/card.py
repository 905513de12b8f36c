"""The `model.json` card of an export (`model_card`): task, sweep and trial ids, every
effective knob, the row's metrics, the baseline's and the ratios to it, code version, stage
keys, the sha256 of every file, the model's inputs (`input_card`) and how to load the
artifact (`load_card`, `artifact_name`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from torch import nn

    from stages.checkpoint import ModelCheckpoint
    from stages.tasks import Task

CARD = "model.json"
# the file a deployment loads, by runtime (model.pt2 for an eager PT2E row: `artifact_name`)
ARTIFACT = {
    "onnxruntime": "model.onnx",
    "torchscript": "model.pt",
    "eager": "model.pt",
    # torch.compile output is not a file: the eager rebuild files, compiled at load
    "compiled": "checkpoint.pt",
}
METRICS_IN_CARD = (
    "val_accuracy",
    "test_accuracy",
    "size_bytes",
    "params_total",
    "params_nonzero",
    "latency_ms_sweep",
    "latency_ms_sweep_p90",
    "latency_ms_final",
    "latency_ms_final_p90",
    "latency_cv",
    "speedup",
)


def model_card(
    row: Mapping[str, Any],
    sweep_rows: pa.Table,
    ckpt: ModelCheckpoint,
    files: dict[str, str],
    check: dict[str, Any],
    *,
    storage: str,
    input_card: dict[str, Any] | list[dict[str, Any]],
) -> dict[str, Any]:
    """The model.json card of `row` (`sweep_rows`: its sweep, for the baseline's metrics)."""
    from importlib import metadata

    from orchestrator.engine.keys import code_version
    from orchestrator.query.frontview import accuracy_delta_pts, size_ratio
    from orchestrator.query.steadiness import speedup_unsteady

    baselines = [r for r in sweep_rows.to_pylist() if r["is_baseline"]]
    base = baselines[0] if baselines else None
    metrics = _card_metrics(row)
    try:
        version = metadata.version("squeezeray")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "task": row["task"],
        "sweep_id": row["sweep_id"],
        "trial_id": row["trial_id"],
        "storage": storage,
        "runtime": ckpt.runtime,
        "artifact": artifact_name(ckpt),
        "input": input_card,
        "output": {"name": "logits", "shape": ["batch", "num_classes"]},
        # the batch size the metrics were measured at (per-batch int8 activations depend on it)
        "eval_batch_size": row.get("eval_batch_size"),
        "knobs": json.loads(row.get("params") or "{}"),
        "metrics": metrics,
        "baseline": _card_metrics(base) if base else None,
        # the same definitions as the front table's: speedup is the row's paired speedup
        # (baseline / model latency per round of the final phase), null when not re-measured
        "ratios": {
            "size_x": size_ratio(base, row),
            "speedup": row.get("speedup"),
            # true when speedup rests on an unsteady latency (the model's or the baseline's)
            "latency_unsteady": speedup_unsteady(row, base)
            if row.get("speedup") is not None
            else None,
            "accuracy_delta_pts": accuracy_delta_pts(base, row),
        },
        "recipe": ckpt.recipe,
        "code_version": row.get("code_version"),
        "code_version_now": code_version(),
        "squeezeray_version": version,
        "stage_keys": list(row.get("stage_keys") or []),
        "sha256": files,
        "recheck": check,
        "exported_at": datetime.now(timezone.utc).isoformat(),
    }


# Beside the accuracies: the batch they were computed at. Latency is timed at batch 1
# (latency.batch_size); an int8 mode that quantizes activations per batch (dynamic_int8,
# onnx_int8) can score otherwise at batch 1 than at eval_batch_size (newuser7 F-F).
ACCURACY_BATCH_KEY = "eval_batch_size"  # the row's column, under its own name


def _card_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's metrics as the card gives them: the accuracies followed by the batch size they
    were computed at (`eval_batch_size`, the row's column of that name; the task metric's
    too), the other metrics, `latency_unsteady` (its latency_cv above the threshold:
    `orchestrator.query.steadiness`) and the task's own metric."""
    from orchestrator.query.steadiness import latency_unsteady

    metrics = {m: row.get(m) for m in METRICS_IN_CARD}
    accuracies = {m: metrics.pop(m) for m in ("val_accuracy", "test_accuracy")}
    return {
        **accuracies,
        ACCURACY_BATCH_KEY: row.get("eval_batch_size"),
        **metrics,
        "latency_unsteady": latency_unsteady(row),
        **_task_metric_columns(row),
    }


def task_metric_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's task-metric values as stored ({name: test, val_<name>: validation})."""
    return {k: float(v) for k, v in json.loads(row.get("custom_metrics") or "{}").items()}


def _task_metric_columns(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's task-metric values under their column names (test_<name>, val_<name>)."""
    return {
        k if k.startswith("val_") else f"test_{k}": v for k, v in task_metric_values(row).items()
    }


def input_card(
    task: Task,
    ckpt: ModelCheckpoint,
    model: nn.Module | None,
    *,
    artifact_shapes: list[list[int | str]] | None = None,
) -> dict[str, Any] | list[dict[str, Any]]:
    """{name, dtype, shape} of the model input (a list of them for a model with several
    inputs), in every runtime named as the parameters of the model's `forward`: read from the
    ONNX graph (which the export named so), else `stages.onnxio.onnx_input_names` of `model`
    (the rebuilt module; x, x0, x1, ... when its forward takes `*args`), or for named inputs
    (a dict sample, passed by keyword) the dict's keys in order. Shapes: "batch", then the
    example's sizes, or the axes the written file accepts: the ONNX graph's (a dynamic one by
    its name, "sequence"), or `artifact_shapes`, those of a model.pt2
    (`stages.pt2e.program_shapes`) or a TorchScript model.pt (`traced_shapes`)."""
    from stages.batches import tensors
    from stages.onnxio import model_input_names

    example = task.example_input(1)
    args = tensors(example)
    names = model_input_names(example, model)
    shapes: list[list[int | str]] = [["batch", *(int(d) for d in t.shape[1:])] for t in args]
    if ckpt.runtime == "onnxruntime" and ckpt.onnx is not None:
        import onnx

        graph_inputs = list(onnx.load_from_string(ckpt.onnx).graph.input)
        if len(graph_inputs) == len(args):
            names = [i.name for i in graph_inputs]
            # the graph's own axes: a dynamic sequence axis by its name, fixed ones as numbers
            shapes = [
                [
                    "batch",
                    *(d.dim_param or int(d.dim_value) for d in i.type.tensor_type.shape.dim[1:]),
                ]
                for i in graph_inputs
            ]
    if artifact_shapes is not None and len(artifact_shapes) == len(args):
        shapes = artifact_shapes  # what model.pt2 or model.pt accepts: a fixed axis is a number
    cards = [
        {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": shape}
        for name, t, shape in zip(names, args, shapes, strict=True)
    ]
    return cards[0] if len(cards) == 1 else cards


def traced_shapes(
    task: Task, ckpt: ModelCheckpoint, model: nn.Module, traced: torch.jit.ScriptModule
) -> list[list[int | str]]:
    """Per input, the shape a TorchScript model.pt (`traced`, of the rebuilt `model`) accepts:
    "batch", then each axis the trace gives `model`'s logits at another length on (by name,
    "sequence": `stages.selfcheck.traced_axes`), else the size it was traced at, a number."""
    from stages.batches import LogitsOnly, input_names, tensors
    from stages.onnxio import axis_names, model_input_names
    from stages.selfcheck import traced_axes

    example = task.example_input(2)  # as `stages.runtime._trace_and_freeze` traced it
    args = tensors(example)
    names = model_input_names(example, model)
    eager = LogitsOnly(model.eval(), input_names(example)).eval()
    readable = axis_names(names, args, traced_axes(traced, eager, args, ckpt.quantize))
    return [
        [readable[i].get(axis, int(size)) for axis, size in enumerate(t.shape)]
        for i, t in enumerate(args)
    ]


def named_axes(shapes: Sequence[Sequence[int | str]] | None) -> list[str]:
    """The dynamic axes of a written artifact's inputs (`program_shapes`, `traced_shapes`),
    each name once in order: ["batch"] for an image model, ["batch", "sequence"] for text."""
    names = [d for shape in shapes or () for d in shape if isinstance(d, str)]
    return list(dict.fromkeys(names))


def load_card(
    ckpt: ModelCheckpoint,
    written: list[str],
    not_written: Mapping[str, str] | None = None,
    *,
    shapes: Sequence[Sequence[int | str]] | None = None,
) -> dict[str, Any]:
    """The card's `load` (how a fresh Python process loads the artifact, for the rows that
    need more than torch), `not_written` ({file: why}) and, when model.pt or model.pt2 could
    not be written (`not_written`: the export's reasons), `artifact` (the rebuild files) of an
    eager row; for an eager row's TorchScript model.pt, its `load` line and `measured_on`
    (the row's latency is the eager module's: the trace can run at another speed); for a
    compiled row the rebuild line and the `torch.compile` the sweep measured. `shapes`: the
    input shapes the written model.pt2 accepts (`program_shapes`), whose dynamic axes a PT2E
    row's reasons name."""
    if ckpt.runtime == "compiled":  # measured as the rebuilt module through torch.compile
        return {"load": _COMPILED_LOAD}
    if ckpt.runtime == "eager" and not is_pt2e(ckpt) and "model.pt" not in written:
        return {
            "artifact": "checkpoint.pt",
            "load": _REBUILD_LOAD,
            "not_written": dict(not_written or {"model.pt": "the model does not trace"}),
        }
    if ckpt.runtime == "eager" and not is_pt2e(ckpt):
        return {
            "load": "import torch; model = torch.jit.load('model.pt')",
            "measured_on": "the eager module (checkpoint.pt rebuilt by squeezeray's "
            "build_model, or huggingface/ where written), as the sweep ran it: model.pt is a "
            "TorchScript trace of it, for deployment without the model's code, and can run "
            "at another speed; sweep with export.runtime: torchscript to measure that",
        }
    if not is_pt2e(ckpt) or ckpt.runtime not in ("eager", "torchscript"):
        return {}
    return _pt2e_load(ckpt, written, named_axes(shapes))


def _pt2e_load(ckpt: ModelCheckpoint, written: list[str], axes: Sequence[str]) -> dict[str, Any]:
    """`load_card` of a PT2E (static_int8, qat) row: its model.pt or model.pt2, or why not;
    `axes`: model.pt2's dynamic axes (["batch"] for an image model, no sequence axis)."""
    from stages.pt2e import LOAD_IMPORT

    if ckpt.runtime == "torchscript":
        return {"load": f"import torch; {LOAD_IMPORT}; model = torch.jit.load('model.pt')"}
    said = " and ".join(axes)  # "batch" (an image model), "batch and sequence" (text)
    plural = len(axes) > 1
    sizes = f"{said} size{'s' if plural else ''}" if axes else "sizes"
    why_not_pt = (
        f"quantize.mode={ckpt.quantize!r}: a TorchScript trace of the int8 graph keeps the "
        f"example's {sizes}"
    )
    if "model.pt2" not in written:
        return {
            "artifact": "checkpoint.pt",
            "load": _REBUILD_LOAD,
            "not_written": {
                "model.pt": why_not_pt,
                "model.pt2": "torch.export could not capture the int8 graph again; deploy "
                "checkpoint.pt (rebuilt with squeezeray's build_model) or export.runtime: "
                "compiled",
            },
        }
    dynamic = f", dynamic {said} ax{'es' if plural else 'is'}" if axes else ""
    return {
        "load": f"import torch; {LOAD_IMPORT}; "
        "model = torch.export.load('model.pt2').module()  # logits = model(*inputs), "
        "the tensors in the card's input order",
        "not_written": {
            "model.pt": f"{why_not_pt}; model.pt2 (torch.export{dynamic}) is written instead"
        },
    }


_REBUILD = (
    "from stages import ModelCheckpoint, build_model, load_task; "
    "ckpt = ModelCheckpoint.from_bytes(open('checkpoint.pt', 'rb').read()); "
    "model = build_model(load_task(TASK), ckpt)"
)
_TASK_NOTE = "  # TASK: the card's task"
_REBUILD_LOAD = _REBUILD + _TASK_NOTE
_COMPILED_LOAD = f"import torch; {_REBUILD}; model = torch.compile(model){_TASK_NOTE}"


def artifact_name(ckpt: ModelCheckpoint) -> str:
    """The file a deployment loads: ARTIFACT of the runtime, model.pt2 for an eager PT2E row."""
    return "model.pt2" if ckpt.runtime == "eager" and is_pt2e(ckpt) else ARTIFACT[ckpt.runtime]


def is_pt2e(ckpt: ModelCheckpoint) -> bool:
    from stages.names import PT2E_MODES

    return ckpt.quantize in PT2E_MODES
