"""From a results row to a deployable file: `squeezeray export` (`export_trial`).

The row is chosen as `orchestrator.query.choose` does, and its model is the trial's
checkpoint (`orchestrator.query.checkpoints`). `export_trial` writes it in the runtime the
row was measured in:

- `onnxruntime`: `model.onnx` (the exact bytes that were measured);
- `torchscript`: `model.pt`, the traced and frozen module (`torch.jit.load`);
- `eager`: `model.pt` (TorchScript, for deployment without the model's code; left out for a
  model that does not trace, e.g. torchao's dynamic int8), plus `state_dict.pt`
  (`torch.load(weights_only=True)`) and `recipe.json`, how to rebuild the eager module from the
  task's own factory (`stages.build_model`); `checkpoint.pt` holds both;
- `compiled`: the eager rebuild files (no `model.pt`); the deployment rebuilds the module and
  calls `torch.compile` on it, as the row was measured.
- besides, for a Hugging Face model (`transformers.PreTrainedModel`) of float weights
  (`quantize.mode: none`, no lowrank), in any runtime: `huggingface/`, its `save_pretrained`
  directory (config.json with the sizes structured pruning left, model.safetensors) plus the
  task's `export_files` (tokenizer/processor files), loaded back with `from_pretrained` and
  compared logit for logit (`stages.hfexport`); an int8 or low-rank row's card says why it
  has none (`huggingface`: {"class", "skipped"}, no "dir");
- and, for a task with `export_files` (a Hugging Face task's tokenizer/processor files),
  copies of them beside the artifact in every runtime (next to model.onnx, as Optimum's
  ORTModel layout has them), listed in the card's `sha256`;

and a `model.json` card (`orchestrator.query.card`). The exported file is then loaded back as
a deployment would load it and its accuracy on the task's test split is checked against the
row's (`orchestrator.query.recheck`); a mismatch is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.query.card import (
    ARTIFACT,
    CARD,
    artifact_name,
    input_card,
    is_pt2e,
    load_card,
    model_card,
    task_metric_values,
    traced_shapes,
)
from orchestrator.query.checkpoints import trial_checkpoint
from orchestrator.query.choose import OptionStyle, find_row
from orchestrator.query.recheck import recheck
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    from torch import nn

    from stages.checkpoint import ModelCheckpoint
    from stages.tasks import Task

# every file an export writes, in any runtime: what `overwrite=True` may remove
HF_DIR = "huggingface"  # = stages.hfexport.HF_DIR (not imported here: that loads torch)
EXPORT_FILES = (
    "model.onnx",
    "model.pt",
    "model.pt2",  # an eager static_int8/qat row's torch.export program
    "state_dict.pt",
    "checkpoint.pt",
    "recipe.json",
    CARD,
    HF_DIR,  # a directory: the save_pretrained form of a Hugging Face model
)


@dataclass(frozen=True)
class ExportResult:
    """What `export_trial` wrote. files: file name -> sha256; card: the model.json content."""

    output: Path
    files: dict[str, str]
    card: dict[str, Any]


def export_trial(
    storage: str | os.PathLike[str],
    trial_id: str | None = None,
    *,
    output: str | os.PathLike[str],
    sweep: str = "latest",
    where: str | None = None,
    pick: str | None = None,
    recompute: bool = False,
    overwrite: bool = False,
    option_style: OptionStyle = "python",
) -> ExportResult:
    """Write a trial's deployable artifact and `model.json` card under `output` (created).

    The trial is `trial_id`, or the best `pick` (`COLUMN[:min|max]`) among ok trials matching
    `where`. The written artifact is loaded back and its test-split accuracy must equal the
    row's `accuracy`, and a `huggingface/` directory (see the module docstring) must give the
    rebuilt model's logits; otherwise a SqueezerayError says so (the files stay for
    inspection). The files are written all or nothing (`store.outputs.output_folder`): a write
    that fails (a full disk, an error while writing or re-checking) leaves `output` as it was.

    `output` must be new or empty, so no file of another export is left beside this one; with
    `overwrite`, a folder holding only files an export writes (`EXPORT_FILES`, and the task
    files its card lists) is emptied of them first (after the trial and its checkpoint were
    found). Any other file there is a SqueezerayError, checked before anything is read.
    `option_style`: errors spell options `sweep=` ("python") or `--sweep` ("cli").
    """
    from orchestrator.store.outputs import output_folder
    from stages.tasks import load_task

    out = Path(output)
    stale = _check_output(out, overwrite=overwrite, option_style=option_style)
    row, sweep_rows = find_row(
        storage, trial_id, sweep=sweep, where=where, pick=pick, option_style=option_style
    )
    ckpt = trial_checkpoint(storage, row, recompute=recompute)
    task = load_task(str(row["task"]))
    model = None if ckpt.runtime == "onnxruntime" else _build(task, ckpt)
    # Staged in `out`, moved in (old files removed) once all is written, or `out` left as it was.
    with output_folder(out, replace=stale) as staging:
        written, not_written = _write_artifacts(task, ckpt, model, row, staging)
        check = _recheck_row(task, ckpt, staging, row)
        hf_card, hf_files = _export_pretrained(task, ckpt, model, staging)
        written += hf_files + _copy_export_files(task, staging)
        files = {name: _sha256(staging / name) for name in written}
        shapes = _artifact_shapes(task, ckpt, model, staging)
        card = model_card(
            row,
            sweep_rows,
            ckpt,
            files,
            check,
            storage=_storage_text(storage),
            input_card=input_card(task, ckpt, model, artifact_shapes=shapes),
        )
        card.update(huggingface=hf_card, **load_card(ckpt, written, not_written, shapes=shapes))
        (staging / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
    _raise_unless_reproduced(check, hf_card, ckpt, row, out)
    return ExportResult(output=out, files={**files, CARD: _sha256(out / CARD)}, card=card)


def _storage_text(storage: str | os.PathLike[str]) -> str:
    """The storage as the card names it: a local root path, else its URI."""
    from orchestrator.store.storage import open_storage

    store = open_storage(storage)
    return store.root if store.is_local else store.uri


def _raise_unless_reproduced(
    check: Mapping[str, Any],
    hf_card: Mapping[str, Any] | None,
    ckpt: ModelCheckpoint,
    row: Mapping[str, Any],
    out: Path,
) -> None:
    """SqueezerayError when a written artifact does not compute what the row measured."""
    if hf_card is not None and not hf_card.get("recheck", {}).get("ok", True):
        raise SqueezerayError(
            f"the exported {HF_DIR}/ directory loaded with from_pretrained does not compute the "
            f"trial's logits ({hf_card['recheck']}); see {out / CARD}"
        )
    if not check["ok"]:
        raise SqueezerayError(
            f"the exported {artifact_name(ckpt)} has test accuracy {check['accuracy']:.6f}, "
            f"the row says {row['test_accuracy']:.6f}: the checkpoint does not reproduce trial "
            f"{row['trial_id']!r}; see {out / CARD}"
        )


def _check_output(out: Path, *, overwrite: bool, option_style: OptionStyle) -> list[Path]:
    """The files of a previous export in `out` that `overwrite` removes (none for a new or
    empty folder); SqueezerayError when `out` is a file, or holds files and not `overwrite`,
    or holds files an export does not write. The staging folder a killed export left
    (`store.outputs.output_folder`) does not count, and is removed with them."""
    from orchestrator.store.outputs import STAGING_PREFIX

    if out.exists() and not out.is_dir():
        raise SqueezerayError(f"output {str(out)!r} is a file; choose a new or empty folder")
    listed = sorted(out.iterdir()) if out.is_dir() else []
    leftovers = [p for p in listed if p.name.startswith(STAGING_PREFIX)]
    present = [p for p in listed if p not in leftovers]
    if not present:
        return leftovers
    flag = "--overwrite" if option_style == "cli" else "overwrite=True"
    names = ", ".join(p.name for p in present[:8]) + (", ..." if len(present) > 8 else "")
    if not overwrite:
        raise SqueezerayError(
            f"output folder {str(out)!r} is not empty ({names}): an export there would leave "
            "another model's files beside this one; choose a new or empty folder, or pass "
            f"{flag} to replace a previous export in it"
        )
    ours = set(EXPORT_FILES) | _copied_before(out)
    foreign = [
        p.name
        for p in present
        if p.name not in ours or not (p.is_file() or (p.name == HF_DIR and p.is_dir()))
    ]
    if foreign:
        raise SqueezerayError(
            f"output folder {str(out)!r} holds files an export does not write "
            f"({', '.join(foreign[:8])}); {flag} only replaces a previous export "
            f"({', '.join(EXPORT_FILES)}): choose a new or empty folder"
        )
    return present + leftovers


def _copied_before(out: Path) -> set[str]:
    """The task files (`_copy_export_files`) a previous export in `out` wrote beside its
    artifact: the top-level names its card's sha256 lists."""
    try:
        card = json.loads((out / CARD).read_text())
        return {name for name in card["sha256"] if "/" not in name}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _recheck_row(task: Task, ckpt: ModelCheckpoint, out: Path, row: Mapping[str, Any]) -> Any:
    """`recheck` of the written files against `row`, at the batch size the row was measured."""
    batch_size = int(row.get("eval_batch_size") or task.eval_batch_size)
    return recheck(task, ckpt, out, float(row["test_accuracy"]), custom=task_metric_values(row),
                   batch_size=batch_size)  # fmt: skip


def _export_pretrained(
    task: Task, ckpt: ModelCheckpoint, model: nn.Module | None, out: Path
) -> tuple[dict[str, Any] | None, list[str]]:
    """The Hugging Face form of a trial's model (`stages.hfexport`): a `save_pretrained`
    directory `out/huggingface` plus the task's tokenizer/processor files, loaded back with
    `from_pretrained` and compared with the rebuilt model. Returns the card's "huggingface"
    section (None: not a transformers model) and the files written (paths relative to
    `out`). An onnxruntime row (float, or an ONNX int8 mode over float weights) is rebuilt
    here for it, and a PT2E row's float structure built, so its card says why it has none
    when it is int8."""
    from stages.hfexport import check_pretrained_dir, save_pretrained_dir

    if model is None:  # every ONNX mode keeps the float state_dict (build_model's float model)
        model = _build(task, ckpt)
    if is_pt2e(ckpt):  # an int8 graph: the class it was made from, to say why it has none
        model = _float_structure(task, ckpt)
    done = save_pretrained_dir(task, model, ckpt, out / HF_DIR)
    if done is None:
        return None, []
    if done.skipped is not None:  # nothing written: no "dir"
        return {"class": done.model_class, "skipped": done.skipped}, []
    card: dict[str, Any] = {"dir": HF_DIR, "class": done.model_class, "load": done.load}
    card["recheck"] = check_pretrained_dir(task, model, out / HF_DIR)
    return card, [f"{HF_DIR}/{name}" for name in done.files]


def _float_structure(task: Task, ckpt: ModelCheckpoint) -> nn.Module:
    """The float module a quantized checkpoint was made from, without its weights."""
    from stages.rebuild import float_structure

    recipe = ckpt.recipe
    pruned, lowrank = recipe.get("pruned") or [], recipe.get("lowrank") or {}
    return float_structure(task, ckpt.arch, pruned, lowrank, weights="empty")


def _copy_export_files(task: Task, out: Path) -> list[str]:
    """Copies of the task's `export_files` (a Hugging Face task's tokenizer/processor files)
    beside the artifact in `out`, as Optimum's ORTModel layout has them next to model.onnx,
    whatever the runtime (`huggingface/` gets its own). Returns their names. A file named
    like one the export writes (`EXPORT_FILES`) is a SqueezerayError."""
    import shutil

    names = [Path(file).name for file in task.export_files]
    clash = sorted(set(names) & set(EXPORT_FILES))
    if clash:
        raise SqueezerayError(
            f"task {task.name!r}: export_files names {', '.join(clash)}, a file the export "
            "writes itself; rename it, or leave it out of the task's export_files"
        )
    for file, name in zip(task.export_files, names, strict=True):
        shutil.copy2(file, out / name)
    return names


def _build(task: Task, ckpt: ModelCheckpoint) -> nn.Module:
    from stages.rebuild import build_model

    return build_model(task, ckpt)


def _write_artifacts(
    task: Task,
    ckpt: ModelCheckpoint,
    model: nn.Module | None,
    row: Mapping[str, Any],
    out: Path,
) -> tuple[list[str], dict[str, str]]:
    """The trial's model in the runtime it was measured in: model.onnx, or a frozen
    TorchScript model.pt of `model` (the rebuilt module; eager adds its rebuild files).
    Returns the file names written, and {file: why} of an eager row's model.pt or model.pt2
    that could not be made (a model that does not trace: the rebuild files are its artifact)."""
    runtime = ckpt.runtime
    if runtime == "onnxruntime":
        assert ckpt.onnx is not None
        (out / ARTIFACT[runtime]).write_bytes(ckpt.onnx)
        return [ARTIFACT[runtime]], {}
    import torch

    from stages.runtime import _trace_and_freeze

    assert model is not None
    # Serialised in memory, then written by Python: torch's own file writer reports a full
    # disk as a RuntimeError ("unexpected pos"), which no handler can tell from a bug.
    if runtime == "torchscript":
        (out / "model.pt").write_bytes(_saved(torch.jit.save, _trace_and_freeze(task, model, ckpt)))
        return ["model.pt"], {}
    scripted: list[str] = []
    not_written: dict[str, str] = {}
    if runtime == "eager" and is_pt2e(ckpt):  # a traced PT2E graph keeps the example's sizes
        from stages.pt2e import program_bytes

        try:  # a graph torch.export cannot capture again: the card's not_written says so
            (out / "model.pt2").write_bytes(program_bytes(model, task.example_input(2)))
            scripted = ["model.pt2"]
        except SqueezerayError:
            pass
    elif runtime == "eager":
        try:  # a convenience beside the rebuild files: kept only when the model traces
            traced = _trace_and_freeze(task, model, ckpt)
            (out / "model.pt").write_bytes(_saved(torch.jit.save, traced))
            scripted = ["model.pt"]
        except SqueezerayError as exc:
            not_written["model.pt"] = (
                f"the model does not trace to TorchScript ({exc}); deploy checkpoint.pt, "
                "rebuilt with squeezeray's build_model (as the sweep measured it)"
            )
    return [*scripted, *_write_eager_rebuild(ckpt, row, out)], not_written


def _artifact_shapes(
    task: Task, ckpt: ModelCheckpoint, model: nn.Module | None, out: Path
) -> list[list[int | str]] | None:
    """The input shapes the model.pt2 or TorchScript model.pt written in `out` accepts (for
    the card's `input` and the axes its reasons name); None when neither was written."""
    if (out / "model.pt2").exists():
        from stages.pt2e import program_shapes

        return program_shapes((out / "model.pt2").read_bytes())
    if (out / "model.pt").exists() and model is not None:
        import torch

        return traced_shapes(task, ckpt, model, torch.jit.load(str(out / "model.pt")))
    return None


def _saved(save: Any, obj: Any) -> bytes:
    """`save(obj, buffer)` (torch.save, torch.jit.save) as bytes."""
    import io

    buffer = io.BytesIO()
    save(obj, buffer)
    return buffer.getvalue()


def _write_eager_rebuild(ckpt: ModelCheckpoint, row: Mapping[str, Any], out: Path) -> list[str]:
    """An eager trial's state_dict.pt, checkpoint.pt and recipe.json (how to rebuild the
    module with `build_model`). Returns the file names written."""
    import torch

    (out / "state_dict.pt").write_bytes(_saved(torch.save, ckpt.state_dict))
    (out / "checkpoint.pt").write_bytes(ckpt.to_bytes())
    recipe = {
        "task": row["task"],
        "recipe": ckpt.recipe,
        "rebuild": (
            "from stages import ModelCheckpoint, build_model, load_task; "
            "ckpt = ModelCheckpoint.from_bytes(open('checkpoint.pt', 'rb').read()); "
            f"model = build_model(load_task({row['task']!r}), ckpt)"
        ),
        "note": "state_dict.pt loads with torch.load(weights_only=True) into the "
        "module build_model rebuilds; model.pt (torch.jit.load) and model.pt2 "
        "(torch.export.load) need no model code (model.json's 'load' names any import)",
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return ["state_dict.pt", "checkpoint.pt", "recipe.json"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
