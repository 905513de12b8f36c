"""From a results row to a deployable file: `squeezeray export` and `load_model`.

A trial's model is the checkpoint of its last stage, `<storage>/cache/<key>.ckpt` (its sha256
is checked against the `.json` manifest beside it). `export_trial` writes it in the runtime the
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
  has none;

and a `model.json` card: task, sweep and trial ids, every effective knob, the row's metrics,
the baseline's and the ratios to it, code version, stage keys, and the sha256 of every file.
The exported file is then loaded back as a deployment would load it and its accuracy on the
task's test split is checked against the row's; a mismatch is an error.

A trial whose checkpoint is gone or damaged is recomputed with `recompute=True` (the stages
are deterministic for a fixed seed): its stage chain is read from the `stages` table and run
in this process, each missing stage written back to the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa
    from torch import nn

    from orchestrator.store.storage import Storage
    from stages.checkpoint import ModelCheckpoint
    from stages.runtime import LoadedModule, OnnxPredictor
    from stages.tasks import Task

OptionStyle = Literal["python", "cli"]
CARD = "model.json"
ARTIFACT = {
    "onnxruntime": "model.onnx",
    "torchscript": "model.pt",
    "eager": "model.pt",
    # torch.compile output is not a file: the eager rebuild files, compiled at load
    "compiled": "checkpoint.pt",
}
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


@dataclass(frozen=True)
class ExportResult:
    """What `export_trial` wrote. files: file name -> sha256; card: the model.json content."""

    output: Path
    files: dict[str, str]
    card: dict[str, Any]


# -- choosing the row ----------------------------------------------------------------------


def parse_pick(text: str, directions: Mapping[str, str] | None = None) -> tuple[str, str]:
    """`COLUMN[:min|max]` -> (column, direction); a bare metric takes its usual direction
    (built-in metrics, and those in `directions`, e.g. a task metric's). The column follows
    the one naming rule (`orchestrator.space.metrics`: `accuracy` is refused)."""
    from orchestrator.space.metrics import resolve_metric
    from orchestrator.store.schema import DEFAULT_DIRECTIONS

    known = {**DEFAULT_DIRECTIONS, **(directions or {})}
    column, _, direction = text.partition(":")
    column = column.strip()
    resolve_metric("--pick", column, purpose="choose", columns=list(known))
    direction = direction.strip() or known.get(column, "")
    if not column or direction not in ("min", "max"):
        raise SqueezerayError(
            f"--pick {text!r} is not accepted; accepted: COLUMN[:min|max], e.g. size_bytes or "
            "val_accuracy:max (min|max may be left out for "
            f"{', '.join(DEFAULT_DIRECTIONS)})"
        )
    return column, direction


def select_row(
    table: pa.Table,
    trial_id: str | None = None,
    *,
    where: str | None = None,
    pick: str | None = None,
    option_style: OptionStyle = "python",
) -> dict[str, Any]:
    """The row to export: by trial id, or the best `pick` among ok trials matching `where`.

    `pick` names its column under the one naming rule, as the search and the front do
    (`val_accuracy`; a bare `accuracy` is refused, the test split is never picked on).
    `where` filters on the columns it names, as `squeezeray pareto --where` does.

    Raises SqueezerayError when the trial is unknown, ambiguous (`--sweep all` with one id in
    two sweeps), not ok, or when no trial id and no single candidate is given (`option_style`:
    errors spell the sweep option `sweep=` or `--sweep`).
    """
    if trial_id is not None and (where or pick):
        raise SqueezerayError(
            "give either a TRIAL_ID or --where/--pick to choose the row, not both"
        )
    if trial_id is not None:
        return _row_by_id(table, trial_id, option_style)
    from orchestrator.query.knobs import with_knob_columns

    table = with_knob_columns(table)  # --where and --pick may name any searched knob
    candidates = _ok_trials_matching(table, where)
    if pick is None:
        if candidates.num_rows == 1:
            return dict(candidates.to_pylist()[0])
        raise SqueezerayError(
            f"{candidates.num_rows} trials match; give a TRIAL_ID, or --pick COLUMN[:min|max] "
            "to take the best of them (e.g. --pick size_bytes)"
        )
    return _best_by_pick(candidates, pick, _task_metric_directions(table))


def _sweep_option(option_style: OptionStyle, sweep_id: str = "ID") -> str:
    """How the user chooses a sweep: `sweep='ID'` in Python, `--sweep ID` on the command line."""
    if option_style == "cli":
        return f"--sweep {sweep_id}"
    return "sweep=ID" if sweep_id == "ID" else f"sweep={sweep_id!r}"


def _row_by_id(
    table: pa.Table, trial_id: str, option_style: OptionStyle = "python"
) -> dict[str, Any]:
    """The one ok row of `trial_id` (unknown, in two sweeps or not ok: SqueezerayError)."""
    import pyarrow.compute as pc

    rows = table.filter(pc.equal(table.column("trial_id"), trial_id)).to_pylist()
    if not rows:
        known = [r["trial_id"] for r in table.to_pylist() if r["status"] == "ok"][:12]
        raise SqueezerayError(
            f"trial {trial_id!r} is not in the chosen sweep(s); ok trials there: "
            f"{', '.join(known) or 'none'} (choose the sweep with "
            f"{_sweep_option(option_style)})"
        )
    if len(rows) > 1:
        sweeps = sorted({str(r["sweep_id"]) for r in rows})
        raise SqueezerayError(
            f"trial {trial_id!r} is in {len(rows)} sweeps ({', '.join(sweeps)}); "
            f"choose one with {_sweep_option(option_style, sweeps[0])}"
        )
    row = rows[0]
    if row["status"] != "ok":
        raise SqueezerayError(
            f"trial {trial_id!r} of sweep {row['sweep_id']} has status {row['status']!r} "
            f"({row.get('error') or 'no model'}); only ok trials have a model to export"
        )
    return dict(row)


def _ok_trials_matching(table: pa.Table, where: str | None) -> pa.Table:
    """The ok, non-baseline rows `where` keeps; none left is a SqueezerayError."""
    import pyarrow.compute as pc

    candidates = table.filter(
        pc.and_(pc.equal(table.column("status"), "ok"), pc.invert(table.column("is_baseline")))
    )
    if where:
        from orchestrator.query.where import parse_where

        candidates = candidates.filter(parse_where(where, table.schema))
    if candidates.num_rows == 0:
        raise SqueezerayError(
            f"no ok trial matches{f' --where {where!r}' if where else ''}; loosen the filter "
            "or check the sweep with `squeezeray pareto`"
        )
    return candidates


def _best_by_pick(candidates: pa.Table, pick: str, directions: Mapping[str, str]) -> dict[str, Any]:
    """The candidate best on `pick`'s column; ties go to the smallest trial id."""
    from orchestrator.space.metrics import resolve_metric

    column, direction = parse_pick(pick, directions)
    resolve_metric("--pick", column, purpose="choose", columns=candidates.column_names)
    if column not in candidates.column_names:
        raise SqueezerayError(
            f"--pick {pick!r}: no column {column!r}; accepted: "
            + ", ".join(n for n in candidates.column_names if _numeric(candidates, n))
        )
    if not _numeric(candidates, column):
        raise SqueezerayError(f"--pick {pick!r}: column {column!r} is not numeric")
    rows = [r for r in candidates.to_pylist() if _finite(r[column])]
    if not rows:
        raise SqueezerayError(f"--pick {pick!r}: no matching trial has a value for {column!r}")
    sign = 1.0 if direction == "min" else -1.0
    return dict(min(rows, key=lambda r: (sign * float(r[column]), str(r["trial_id"]))))


def _task_metric_directions(table: pa.Table) -> dict[str, str]:
    """{name: direction, val_<name>: direction, test_<name>: direction} of the task metrics
    the rows record (the tasks are loaded only when some row has one); the bare name is known
    only to be refused as ambiguous."""
    from stages.tasks import load_task

    rows = table.select(["task", "custom_metrics"]).to_pylist()
    out: dict[str, str] = {}
    for task_name in sorted({str(r["task"]) for r in rows if r["custom_metrics"]}):
        metric = load_task(task_name).metric
        if metric is not None:
            for column in (metric.name, "val_" + metric.name, "test_" + metric.name):
                out[column] = metric.direction
    return out


def _numeric(table: pa.Table, name: str) -> bool:
    import pyarrow.types as pt

    dtype = table.schema.field(name).type
    return bool(pt.is_integer(dtype) or pt.is_floating(dtype))


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def find_row(
    storage: str | os.PathLike[str],
    trial_id: str | None = None,
    *,
    sweep: str = "latest",
    where: str | None = None,
    pick: str | None = None,
    option_style: OptionStyle = "python",
) -> tuple[dict[str, Any], pa.Table]:
    """(the chosen row, every row of its sweep).

    A `trial_id` that is not in the chosen sweep but in others of the storage is a
    SqueezerayError naming those sweeps and how to choose one (`option_style`).
    """
    import pyarrow.compute as pc

    from orchestrator.store.results import load_results

    try:
        table = load_results(os.fspath(storage), sweep=sweep)
    except SqueezerayError as exc:  # an unknown sweep: spelled as the caller passes it
        text = str(exc)
        if option_style == "python" and text.startswith("--sweep "):
            raise SqueezerayError("sweep=" + text.removeprefix("--sweep ")) from None
        raise
    if trial_id is not None and trial_id not in set(table.column("trial_id").to_pylist()):
        chosen = sorted({str(s) for s in table.column("sweep_id").to_pylist()})
        _raise_if_in_other_sweeps(storage, trial_id, sweep, chosen, option_style)
    row = select_row(table, trial_id, where=where, pick=pick, option_style=option_style)
    sweep_rows = table.filter(pc.equal(table.column("sweep_id"), row["sweep_id"]))
    return row, sweep_rows


def _raise_if_in_other_sweeps(
    storage: str | os.PathLike[str],
    trial_id: str,
    sweep: str,
    chosen_ids: list[str],
    option_style: OptionStyle,
) -> None:
    """SqueezerayError naming the sweeps of the storage that hold `trial_id` (if any do);
    `chosen_ids`: the sweep(s) `sweep` chose, where it is not."""
    import pyarrow.compute as pc

    from orchestrator.store.results import load_results

    everything = load_results(os.fspath(storage), sweep="all")
    found = everything.filter(pc.equal(everything.column("trial_id"), trial_id))
    holders = sorted({str(s) for s in found.column("sweep_id").to_pylist()})
    if holders:
        chosen = f"sweep {', '.join(chosen_ids)}"
        if sweep == "latest":
            chosen = f"the latest {chosen}"
        options = " or ".join(_sweep_option(option_style, h) for h in holders)
        raise SqueezerayError(
            f"trial {trial_id!r} is not in {chosen} but in sweep {', '.join(holders)}; "
            f"choose it with {options}"
        )


# -- the checkpoint ------------------------------------------------------------------------


def _stage_chain(store: Storage, keys: list[str]) -> dict[str, dict[str, Any]]:
    """key -> its `stages` table row (stage name, params JSON, parent key), where recorded."""
    import pyarrow.compute as pc

    from orchestrator.store.results import load_stages

    try:
        stages = load_stages(store.uri, sweep="all")
    except SqueezerayError:
        return {}
    found = stages.filter(pc.is_in(stages.column("stage_key"), value_set=_pa_array(keys)))
    return {str(r["stage_key"]): r for r in found.to_pylist()}


def _pa_array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def _read_cached(store: Storage, key: str) -> tuple[bytes | None, str]:
    """(checkpoint bytes, "") when present and intact, else (None, what is wrong)."""
    from orchestrator.engine.stage_tasks import CACHE_DIR, checkpoint_path

    data_name, manifest_name = checkpoint_path(key)
    where = f"{store.uri.rstrip('/')}/{CACHE_DIR}/{data_name}"
    if not store.exists(CACHE_DIR, data_name) or not store.exists(CACHE_DIR, manifest_name):
        return None, f"{where} is missing"
    try:
        manifest = json.loads(store.read_bytes(CACHE_DIR, manifest_name))
        data = store.read_bytes(CACHE_DIR, data_name)
    except (OSError, ValueError) as exc:
        return None, f"{where} is unreadable ({exc})"
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return None, f"{where} fails its sha256 check (damaged)"
    return data, ""


def trial_checkpoint(
    storage: str | os.PathLike[str], row: Mapping[str, Any], *, recompute: bool = False
) -> ModelCheckpoint:
    """The final checkpoint of a results row (checked against its manifest's sha256).

    A missing or damaged checkpoint is a SqueezerayError naming the stage and how to get it
    back; with `recompute`, the trial's stage chain is run again here (missing stages only)
    and written back to the cache.
    """
    from orchestrator.engine.stage_tasks import _load_input
    from orchestrator.store.storage import open_storage

    store = open_storage(storage)
    keys = [str(k) for k in (row.get("stage_keys") or [])]
    if not keys:
        raise SqueezerayError(
            f"trial {row.get('trial_id')!r} has no stage keys; it has no model to export"
        )
    data, problem = _read_cached(store, keys[-1])
    if data is None:
        if not recompute:
            chain = _stage_chain(store, keys)
            stage = chain.get(keys[-1], {}).get("stage", "last")
            raise SqueezerayError(
                f"the checkpoint of trial {row.get('trial_id')!r} (sweep {row.get('sweep_id')}, "
                f"its {stage} stage, key {keys[-1]}): {problem}. Re-run the trial's stages "
                "with `squeezeray export ... --recompute` (or load_model(..., recompute=True)):"
                " missing stages are computed again from the cached ones and checked "
                "against the row"
            )
        data = _recompute(store, row, keys)
    return _load_input(data, f"the checkpoint of stage {keys[-1]}")  # type: ignore[no-any-return]


def _recompute(store: Storage, row: Mapping[str, Any], keys: list[str]) -> bytes:
    """Run the trial's stage chain in this process, loading every intact cached stage."""
    from orchestrator.engine.keys import code_version
    from orchestrator.engine.plan import TRAINING_SEED
    from orchestrator.engine.requests import StageRequest
    from orchestrator.engine.stage_tasks import execute_stage

    if row.get("code_version") and row["code_version"] != code_version():
        raise SqueezerayError(
            f"trial {row.get('trial_id')!r} was computed by code version {row['code_version']},"
            f" this is {code_version()}: its stages cannot be recomputed to the same model; "
            "run a new sweep and export from it"
        )
    chain = _stage_chain(store, keys)
    missing = [k for k in keys if k not in chain]
    if missing:
        raise SqueezerayError(
            f"cannot recompute trial {row.get('trial_id')!r}: the stages table has no record "
            f"of stage key(s) {', '.join(missing)}; run a new sweep and export from it"
        )
    parent: bytes | None = None
    teacher: bytes | None = None
    parent_key: str | None = None
    for key in keys:
        info = chain[key]
        data, _ = _read_cached(store, key)
        if data is None:
            request = StageRequest(
                stage=str(info["stage"]),
                params=json.loads(info["params"] or "{}"),
                key=key,
                parent_key=parent_key,
                task=str(row["task"]),
                storage=store.uri,
                seed=TRAINING_SEED,
                sweep_id=str(row.get("sweep_id") or ""),
                trial_id=str(row.get("trial_id") or ""),
            )
            data, _info = execute_stage(request, parent, teacher)
        if info["stage"] == "teacher":
            teacher = data
        parent, parent_key = data, key
    assert parent is not None
    return parent


# -- loading -------------------------------------------------------------------------------


def load_model(
    storage: str | os.PathLike[str],
    trial_id: str,
    *,
    sweep: str = "latest",
    recompute: bool = False,
) -> LoadedModule | OnnxPredictor:
    """A ready predictor of a trial's model, in the runtime it was measured in.

    Every runtime is called the same way, like the user's model: `p(x)`, `p(cat_ids, numeric)`
    for a model of several inputs, or `p(input_ids=..., attention_mask=...)` for named inputs
    (one tuple or dict of them, as a DataLoader yields it, works too), and returns the (B,
    num_classes) logits tensor, whatever form the model's own output takes (a dict with
    "logits", a tuple, ...). eager and torchscript: a `stages.runtime.LoadedModule` (an
    `nn.Module` in eval mode, CPU; `.model` is the rebuilt module itself, or the traced and
    frozen TorchScript module); onnxruntime: an `OnnxPredictor` running the ONNX Runtime session
    (`.session`). The task must be importable here (eager and torchscript rebuild the module
    from its factory).
    """
    from stages.batches import input_names
    from stages.runtime import LoadedModule, OnnxPredictor, TorchPredictor, make_predictor
    from stages.tasks import load_task

    row, _ = find_row(storage, trial_id, sweep=sweep)
    ckpt = trial_checkpoint(storage, row, recompute=recompute)
    if ckpt.runtime == "onnxruntime":
        if ckpt.onnx is None:
            raise SqueezerayError(f"trial {trial_id!r}: its onnxruntime checkpoint has no ONNX")
        return OnnxPredictor(ckpt.onnx, threads=1)
    task = load_task(str(row["task"]))
    predictor = make_predictor(task, ckpt)
    assert isinstance(predictor, TorchPredictor)
    names = input_names(task.example_input(1))
    return LoadedModule(predictor.module, ckpt.runtime, names=names).eval()


# -- exporting -----------------------------------------------------------------------------


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
    `overwrite`, a folder holding only files an export writes (`EXPORT_FILES`) is emptied of
    them first (after the trial and its checkpoint were found). Any other file there is a
    SqueezerayError, checked before anything is read. `option_style`: how errors spell the
    options, `sweep=` ("python") or `--sweep` ("cli", the command line).
    """
    from orchestrator.store.outputs import output_folder
    from orchestrator.store.storage import open_storage
    from stages.tasks import load_task

    out = Path(output)
    stale = _check_output(out, overwrite=overwrite, option_style=option_style)
    row, sweep_rows = find_row(
        storage, trial_id, sweep=sweep, where=where, pick=pick, option_style=option_style
    )
    ckpt = trial_checkpoint(storage, row, recompute=recompute)
    task = load_task(str(row["task"]))
    model = None if ckpt.runtime == "onnxruntime" else _build(task, ckpt)
    store = open_storage(storage)
    # Staged in `out`, moved in (old files removed) once all is written, or `out` left as it was.
    with output_folder(out, replace=stale) as staging:
        written = _write_artifacts(task, ckpt, model, row, staging)
        check = _recheck_row(task, ckpt, staging, row)
        hf_card, hf_files = _export_pretrained(task, ckpt, model, staging)
        written += hf_files
        files = {name: _sha256(staging / name) for name in written}
        card = _card(
            row,
            sweep_rows,
            ckpt,
            files,
            check,
            storage=store.root if store.is_local else store.uri,
            input_card=_input_card(task, ckpt, model),
        )
        card.update(huggingface=hf_card, **_load_card(ckpt, written))
        (staging / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
    _raise_unless_reproduced(check, hf_card, ckpt, row, out)
    return ExportResult(output=out, files={**files, CARD: _sha256(out / CARD)}, card=card)


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
            f"the exported {_artifact(ckpt)} has test accuracy {check['accuracy']:.6f}, "
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
    foreign = [
        p.name
        for p in present
        if p.name not in EXPORT_FILES or not (p.is_file() or (p.name == HF_DIR and p.is_dir()))
    ]
    if foreign:
        raise SqueezerayError(
            f"output folder {str(out)!r} holds files an export does not write "
            f"({', '.join(foreign[:8])}); {flag} only replaces a previous export "
            f"({', '.join(EXPORT_FILES)}): choose a new or empty folder"
        )
    return present + leftovers


def _export_pretrained(
    task: Task, ckpt: ModelCheckpoint, model: nn.Module | None, out: Path
) -> tuple[dict[str, Any] | None, list[str]]:
    """The Hugging Face form of a trial's model (`stages.hfexport`): a `save_pretrained`
    directory `out/huggingface` plus the task's tokenizer/processor files, loaded back with
    `from_pretrained` and compared with the rebuilt model. Returns the card's "huggingface"
    section (None: not a transformers model) and the files written (paths relative to
    `out`). An onnxruntime row (float, or onnx_int8 over float weights) is rebuilt here for
    it, so its card says why it has none when it is int8."""
    from stages.hfexport import check_pretrained_dir, save_pretrained_dir

    if model is None and ckpt.quantize in ("none", "onnx_int8"):  # float state_dicts
        model = _build(task, ckpt)
    if model is None:
        return None, []
    done = save_pretrained_dir(task, model, ckpt, out / HF_DIR)
    if done is None:
        return None, []
    card: dict[str, Any] = {"dir": HF_DIR, "class": done.model_class}
    if done.skipped is not None:
        return {**card, "skipped": done.skipped}, []
    card["load"] = done.load
    card["recheck"] = check_pretrained_dir(task, model, out / HF_DIR)
    return card, [f"{HF_DIR}/{name}" for name in done.files]


def _build(task: Task, ckpt: ModelCheckpoint) -> nn.Module:
    from stages.rebuild import build_model

    return build_model(task, ckpt)


def _write_artifacts(
    task: Task,
    ckpt: ModelCheckpoint,
    model: nn.Module | None,
    row: Mapping[str, Any],
    out: Path,
) -> list[str]:
    """The trial's model in the runtime it was measured in: model.onnx, or a frozen
    TorchScript model.pt of `model` (the rebuilt module; eager adds its rebuild files).
    Returns the file names written."""
    runtime = ckpt.runtime
    if runtime == "onnxruntime":
        assert ckpt.onnx is not None
        (out / ARTIFACT[runtime]).write_bytes(ckpt.onnx)
        return [ARTIFACT[runtime]]
    import torch

    from stages.runtime import _trace_and_freeze

    assert model is not None
    # Serialised in memory, then written by Python: torch's own file writer reports a full
    # disk as a RuntimeError ("unexpected pos"), which no handler can tell from a bug.
    if runtime == "torchscript":
        (out / "model.pt").write_bytes(_saved(torch.jit.save, _trace_and_freeze(task, model, ckpt)))
        return ["model.pt"]
    scripted: list[str] = []
    if runtime == "eager" and _is_pt2e(ckpt):  # a traced PT2E graph keeps the example's sizes
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
        except SqueezerayError:
            pass
    return [*scripted, *_write_eager_rebuild(ckpt, row, out)]


def _is_pt2e(ckpt: ModelCheckpoint) -> bool:
    from stages.names import PT2E_MODES

    return ckpt.quantize in PT2E_MODES


def _artifact(ckpt: ModelCheckpoint) -> str:
    """The file a deployment loads: ARTIFACT of the runtime, model.pt2 for an eager PT2E row."""
    return "model.pt2" if ckpt.runtime == "eager" and _is_pt2e(ckpt) else ARTIFACT[ckpt.runtime]


def _load_card(ckpt: ModelCheckpoint, written: list[str]) -> dict[str, Any]:
    """The card's `load` (how a fresh Python process loads the artifact, for the rows that
    need more than torch), `not_written` ({file: why}) and, when model.pt2 could not be
    written, `artifact` (the rebuild files) of a static_int8/qat row; for an eager row's
    TorchScript model.pt, its `load` line and `measured_on` (the row's latency is the eager
    module's: the trace can run at another speed)."""
    if ckpt.runtime == "eager" and not _is_pt2e(ckpt) and "model.pt" in written:
        return {
            "load": "import torch; model = torch.jit.load('model.pt')",
            "measured_on": "the eager module (checkpoint.pt rebuilt by squeezeray's "
            "build_model, or huggingface/ where written), as the sweep ran it: model.pt is a "
            "TorchScript trace of it, for deployment without the model's code, and can run "
            "at another speed; sweep with export.runtime: torchscript to measure that",
        }
    if not _is_pt2e(ckpt) or ckpt.runtime not in ("eager", "torchscript"):
        return {}
    from stages.pt2e import LOAD_IMPORT

    if ckpt.runtime == "torchscript":
        return {"load": f"import torch; {LOAD_IMPORT}; model = torch.jit.load('model.pt')"}
    why_not_pt = (
        f"quantize.mode={ckpt.quantize!r}: a TorchScript trace of the int8 graph keeps the "
        "example's batch and sequence sizes"
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
    return {
        "load": f"import torch; {LOAD_IMPORT}; "
        "model = torch.export.load('model.pt2').module()  # logits = model(*inputs), "
        "the tensors in the card's input order",
        "not_written": {
            "model.pt": f"{why_not_pt}; model.pt2 (torch.export, dynamic batch and sequence "
            "axes) is written instead"
        },
    }


_REBUILD_LOAD = (
    "from stages import ModelCheckpoint, build_model, load_task; "
    "ckpt = ModelCheckpoint.from_bytes(open('checkpoint.pt', 'rb').read()); "
    "model = build_model(load_task(TASK), ckpt)  # TASK: the card's task"
)


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


def _custom(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's task-metric values as stored ({name: test, val_<name>: validation})."""
    return {k: float(v) for k, v in json.loads(row.get("custom_metrics") or "{}").items()}


def _custom_columns(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's task-metric values under their column names (test_<name>, val_<name>)."""
    return {k if k.startswith("val_") else f"test_{k}": v for k, v in _custom(row).items()}


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


def _recheck_row(task: Task, ckpt: ModelCheckpoint, out: Path, row: Mapping[str, Any]) -> Any:
    """`recheck` of the written files against `row`, at the batch size the row was measured."""
    batch_size = int(row.get("eval_batch_size") or task.eval_batch_size)
    return recheck(task, ckpt, out, float(row["test_accuracy"]), custom=_custom(row),
                   batch_size=batch_size)  # fmt: skip


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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _card_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's metrics as the card gives them, with `latency_unsteady` (its latency_cv above
    the threshold: `orchestrator.query.steadiness`) and the task's own metric."""
    from orchestrator.query.steadiness import latency_unsteady

    return {
        **{m: row.get(m) for m in METRICS_IN_CARD},
        "latency_unsteady": latency_unsteady(row),
        **_custom_columns(row),
    }


def _card(
    row: Mapping[str, Any],
    sweep_rows: pa.Table,
    ckpt: ModelCheckpoint,
    files: dict[str, str],
    check: dict[str, Any],
    *,
    storage: str,
    input_card: dict[str, Any] | list[dict[str, Any]],
) -> dict[str, Any]:
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
        "artifact": _artifact(ckpt),
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


def _input_card(
    task: Task, ckpt: ModelCheckpoint, model: nn.Module | None
) -> dict[str, Any] | list[dict[str, Any]]:
    """{name, dtype, shape} of the model input (a list of them for a model with several
    inputs), in every runtime named as the parameters of the model's `forward`: read from the
    ONNX graph (which the export named so), else `stages.onnxio.onnx_input_names` of `model`
    (the rebuilt module; x, x0, x1, ... when its forward takes `*args`), or for named inputs
    (a dict sample, passed by keyword) the dict's keys in order. Shapes: "batch", then the
    example's sizes, or for ONNX the graph's axes (a dynamic one by its name, "sequence")."""
    from stages.batches import input_names, tensors
    from stages.onnxio import onnx_input_names

    example = task.example_input(1)
    args = tensors(example)
    keywords = input_names(example)
    names = list(keywords) if keywords else onnx_input_names(len(args), model=model)
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
    if keywords and _is_pt2e(ckpt):  # model.pt2 was exported with a dynamic sequence axis
        shapes = [[s[0], "sequence", *s[2:]] if len(s) > 1 else s for s in shapes]
    cards = [
        {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": shape}
        for name, t, shape in zip(names, args, shapes, strict=True)
    ]
    return cards[0] if len(cards) == 1 else cards
