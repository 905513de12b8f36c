"""A trial's model from the store: its checkpoint (`trial_checkpoint`) and a ready predictor
of it (`load_model`).

A trial's model is the checkpoint of its last stage, `<storage>/cache/<key>.ckpt` (its sha256
is checked against the `.json` manifest beside it).

A trial whose checkpoint is gone or damaged is recomputed with `recompute=True` (the stages
are deterministic for a fixed seed): its stage chain is read from the `stages` table and run
in this process, each missing stage written back to the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.query.choose import find_row
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    from orchestrator.store.storage import Storage
    from stages.checkpoint import ModelCheckpoint
    from stages.runtime import LoadedModule, OnnxPredictor


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

    Like a `from_pretrained` model, the module is in eval mode with its parameters trainable,
    so a plain call records autograd: for inference call it under `torch.inference_mode()`
    (ONNX Runtime's logits never carry autograd).
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
