"""What a sweep keeps in its storage to be resumed, and reading back what it wrote.

The manifest, `<storage>/sweeps/<sweep id>.json`, is written when the sweep starts and when it
ends (`running`, then `finished`, `interrupted` or `failed` with the error). It holds the
options (`SweepOptions.to_dict`), the space's YAML text and the seconds of the time budget
spent so far: `--resume` runs exactly what was started (`resumed_options`), whatever became of
the space's file since. `stored_results` and `sweep_table` read back the rows already written:
a resumed trial reports its stored result again, and the summary counts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.engine.records import PreparedSweep
from orchestrator.space.options import FLAGS, PLACEMENT, SweepOptions
from orchestrator.store.rows import now
from orchestrator.store.storage import SWEEPS_DIR, Storage
from stages.errors import SqueezerayError


def manifest_path(sweep_id: str) -> tuple[str, str]:
    return SWEEPS_DIR, f"{sweep_id}.json"


def write_manifest(
    store: Storage,
    sweep: PreparedSweep,
    *,
    status: str,
    error: str | None = None,
    budget_elapsed_s: float | None = None,
    hypervolume_reference: dict[str, float] | None = None,
) -> None:
    """`budget_elapsed_s`: seconds of the sweep's run time so far, over all its runs (a
    resumed sweep's time budget is what is left of it); default: as at its start.
    `hypervolume_reference`: the sweep's reference point once its baseline is measured
    (`orchestrator.query.pareto.metrics_reference`: 0 for max metrics, 2 x the baseline for
    min ones), stored so hypervolumes of later sweeps of the task compare with it."""
    space = sweep.space
    elapsed = sweep.budget_elapsed_s if budget_elapsed_s is None else budget_elapsed_s
    data = {
        "sweep_id": sweep.sweep_id,
        "name": space.name,
        "space_source": str(Path(space.source).resolve()),
        "space_yaml": sweep.space_text,  # what --resume runs (None: a space built in Python)
        "budget_elapsed_s": elapsed,
        "task": space.task,
        "trials": space.trial_count(),  # a grid's own count (search.trials does not apply)
        "seed": space.search.seed,
        "algorithm": space.search.algorithm,
        "time_budget_s": space.search.time_budget_s,
        "cpus_per_trial": sweep.cpus_per_trial,
        "gpus_per_trial": sweep.gpus_per_trial,
        "trial_timeout_s": sweep.trial_timeout_s,
        "max_concurrent": sweep.max_concurrent,
        "teacher_weights": sweep.teacher_weights,
        "options": sweep.options.to_dict(),  # what --resume runs (SweepOptions)
        "tune_experiment": sweep.tune_experiment or sweep.sweep_id,  # what --resume restores
        "tune_carried": list(sweep.tune_carried),  # finished trials it did not run (a rebuild)
        "status": status,
        "error": error,
        "resume_command": resume_command(store, sweep.sweep_id, command=sweep.command),
        "hypervolume_reference": hypervolume_reference,
        "started_at": _started_at(store, sweep.sweep_id),
        "updated_at": now().isoformat(),
    }
    store.write_atomic(json.dumps(data, indent=2).encode(), *manifest_path(sweep.sweep_id))


def _started_at(store: Storage, sweep_id: str) -> str:
    """When the sweep started (ISO time, UTC): its manifest's first write (Ray up, every
    check passed), kept by every later write and by --resume; now for a first write."""
    if store.exists(*manifest_path(sweep_id)):
        with contextlib.suppress(OSError, ValueError):
            started = json.loads(store.read_bytes(*manifest_path(sweep_id))).get("started_at")
            if isinstance(started, str):
                return started
    return str(now().isoformat())


def resume_command(store: Storage, sweep_id: str, *, command: str = "sweep") -> str:
    """The shell command that continues sweep `sweep_id` (absolute for local storage, so it
    works from any directory); `command`: the one that started it (`nightly`: a resumed night
    also writes its report)."""
    location = store.root if store.is_local else store.uri
    return (
        f"squeezeray {command} --resume --sweep-id {shlex.quote(sweep_id)} "
        f"--storage {shlex.quote(location)}"
    )


def finished_note(store: Storage, sweep_id: str) -> str:
    """What `--resume` of a sweep that already finished says instead of running it."""
    location = store.root if store.is_local else store.uri
    return (
        f"sweep {sweep_id} already finished: nothing is left to resume (its rows are all "
        f"written). See its front with: squeezeray pareto --storage {shlex.quote(location)} "
        f"--sweep {shlex.quote(sweep_id)}"
    )


def read_manifest(store: Storage, sweep_id: str) -> dict[str, Any]:
    if not store.exists(*manifest_path(sweep_id)):
        raise SqueezerayError(
            f"sweep {sweep_id!r} has no manifest under {store.uri}/{SWEEPS_DIR}; "
            "list sweeps with `squeezeray sweeps --storage <storage>`"
        )
    return dict(json.loads(store.read_bytes(*manifest_path(sweep_id))))


def latest_sweep_id(store: Storage, *, name_prefix: str | None = None) -> str:
    """The newest sweep in `store` (by its manifest's time); with `name_prefix`, the newest
    whose name starts with it (`nightly-`: the latest nightly run)."""
    from pyarrow.fs import FileSelector

    if not store.exists(SWEEPS_DIR):
        raise SqueezerayError(f"no sweep to resume under {store.uri}: it holds no {SWEEPS_DIR}/")
    infos = store.fs.get_file_info(FileSelector(store.path(SWEEPS_DIR)))
    manifests = sorted(
        (i for i in infos if i.base_name.endswith(".json") and not i.base_name.startswith(".")),
        key=lambda i: i.mtime_ns or 0,
        reverse=True,
    )
    for info in manifests:
        sweep_id = str(info.base_name.removesuffix(".json"))
        if name_prefix is None:
            return sweep_id
        name = read_manifest(store, sweep_id).get("name") or ""
        if str(name).startswith(name_prefix):
            return sweep_id
    which = f"no sweep named {name_prefix}*" if name_prefix else "no sweep"
    raise SqueezerayError(f"{which} to resume under {store.uri}")


def resumed_options(
    manifest: Mapping[str, Any], given: SweepOptions, store: Storage, sweep_id: str
) -> SweepOptions:
    """The options a sweep was started with (its manifest), plus the placement options given
    now. Any other option given now with another value than the one the sweep used (the
    option, or the space's own value where the option was left out: `_effective`) is
    refused: a resumed sweep runs exactly what was started."""
    stored = manifest.get("options")
    if stored is None:  # a manifest written before SweepOptions: its flat fields
        stored = {
            "task": manifest.get("task"),
            "trials": manifest.get("trials"),
            "seed": manifest.get("seed"),
            "name": manifest.get("name"),
            "trial_timeout_s": manifest.get("trial_timeout_s"),
            "max_concurrent": manifest.get("max_concurrent"),
            "teacher_weights": manifest.get("teacher_weights"),
            "cpus_per_trial": manifest.get("cpus_per_trial") or 1.0,
            "gpus_per_trial": manifest.get("gpus_per_trial") or 0.0,
        }
    started = SweepOptions.from_dict(dict(stored))
    changes: dict[str, Any] = {}
    for key, value in given.given().items():
        if key in PLACEMENT:
            changes[key] = value
            continue
        used = _effective(manifest, started, key)
        if value != used:
            raise SqueezerayError(
                f"{FLAGS[key]}: sweep {sweep_id!r} was started with {used!r}, "
                f"not {value!r}; --resume runs exactly what was started, so leave "
                f"{FLAGS[key]} out, or start a new sweep with it (without --resume) in "
                f"{store.uri}"
            )
    return dataclasses.replace(started, **changes)


# The options whose None means "the space's own value", which the manifest records as used.
_FROM_SPACE = ("task", "trials", "seed", "name", "algorithm", "time_budget_s")


def _effective(manifest: Mapping[str, Any], started: SweepOptions, key: str) -> Any:
    """The value option `key` had in the sweep as it ran: the option as given at the start,
    else (None: the space's own) what the manifest recorded for the space."""
    value = getattr(started, key)
    if value is None and key in _FROM_SPACE:
        return manifest.get(key)
    return value


def stored_results(store: Storage, sweep_id: str) -> dict[str, dict[str, Any]]:
    """Trial id -> the result already written for it (what a resumed trial reports again)."""
    from orchestrator.store.results import load_results
    from orchestrator.store.schema import METRIC_COLUMNS

    try:
        table = load_results(store.uri, sweep=sweep_id)
    except SqueezerayError:  # nothing written yet
        return {}
    out: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        out[row["trial_id"]] = {
            "status": row["status"],
            "error": row["error"],
            "runtime": row["runtime"],
            "wall_s": row["wall_s"],
            "stage_keys": list(row["stage_keys"] or []),
            "effective_params": json.loads(row["params"] or "{}"),
            **{name: row[name] for name in METRIC_COLUMNS},
        }
        custom = json.loads(row.get("custom_metrics") or "{}")
        out[row["trial_id"]].update(custom, custom_metric_names=sorted(custom))
    return out


def sweep_table(store: Storage, sweep_id: str) -> Any:
    """The sweep's rows; an empty table when it was interrupted before writing any."""
    import pyarrow as pa

    from orchestrator.store.results import load_results
    from orchestrator.store.schema import RESULTS_SCHEMA

    try:
        return load_results(store.uri, sweep=sweep_id)
    except SqueezerayError:
        return pa.Table.from_pylist([], schema=RESULTS_SCHEMA)
