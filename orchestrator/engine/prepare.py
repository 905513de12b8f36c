"""Every check a sweep can fail before Ray starts, ending in a `PreparedSweep`.

The options (`SweepOptions`, or its fields as keywords), the sweep id, the storage, the space
(as given, or on `--resume` the YAML text and options its manifest kept), the task (imported
here, on the driver), `teacher.weights` (loaded into the teacher once, its sha256 pinned) and
the task's fingerprint. A bad input raises a SqueezerayError naming the key, the value and
what is accepted; nothing is created in the storage until everything has passed. Last, the
storage is probed writable (a full or read-only storage is refused before Ray starts) and no
other driver may be running the sweep (`store.lock.check_no_driver`).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.engine.events import Progress, report_step
from orchestrator.engine.manifest import (
    latest_sweep_id,
    manifest_path,
    read_manifest,
    resume_command,
    resumed_options,
    stored_results,
)
from orchestrator.engine.plan import TRAINING_SEED
from orchestrator.engine.records import PreparedSweep
from orchestrator.engine.runtime import check_reachable
from orchestrator.space.config import load_space, parse_space_text
from orchestrator.space.config import space_text as config_space_text
from orchestrator.space.model import SearchSpace
from orchestrator.space.options import SweepOptions
from orchestrator.space.parse import check_stages_apply_to_task
from orchestrator.store.lock import check_no_driver
from orchestrator.store.storage import Storage, open_storage, probe_writable
from stages.errors import SqueezerayError


def prepare_sweep(
    space: SearchSpace | Mapping[str, Any] | str | Path | None,
    options: SweepOptions | None = None,
    *,
    sweep_id: str | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    **keywords: Any,
) -> PreparedSweep:
    """Every check that can fail before Ray starts (`progress` hears a `step` event as each
    check on the task starts: `engine.events`).

    `options` (or its fields as keywords, see `SweepOptions.build`) override the space.
    `teacher_weights`: a state_dict file loaded into the task's teacher (`teacher.weights`;
    `teacher.epochs` becomes 0, use as given, unless the space sets it).
    With `resume`, the options and the space come from the sweep's manifest; an option given
    again with another value is refused (placement options - storage, address, num_cpus,
    latency_resource - may change). A resumed sweep that already finished comes back with
    `finished` set, its task not imported: there is nothing to run."""
    opts = sweep_options(options, keywords)
    if sweep_id is not None:
        _check_sweep_id(sweep_id)
    # The storage directory is created only once everything else has passed.
    store = _checked_storage(opts.storage, sweep_id, resume=resume)
    start = _resumed(store, opts, sweep_id, space) if resume else _Start(space, opts, sweep_id)
    loaded, space_text = _load_given(start.space)
    space_text = start.space_text if resume else space_text
    loaded = loaded.with_overrides(
        task=start.options.task,
        trials=start.options.trials,
        seed=start.options.seed,
        name=start.options.name,
        time_budget_s=start.options.time_budget_s,
        algorithm=start.options.algorithm,
        check_task=not start.finished,
    )
    if not start.finished:  # a typo in --address fails now, not after the task's checks
        check_reachable(start.options.address)
    # A finished sweep runs nothing: its task is not imported (nor re-checked) to say so.
    loaded, fingerprint, model_bytes, activation_bytes = (
        (loaded, {}, 0, 0)
        if start.finished
        else bound_to_task(loaded, start.options, progress=progress)
    )
    final_id = start.sweep_id or new_sweep_id(loaded.name)
    return PreparedSweep(
        space=loaded,
        storage=_ready_storage(start.options.storage, final_id, finished=start.finished),
        sweep_id=final_id,
        options=start.options,
        resume=resume,
        fingerprint=fingerprint,
        model_bytes=model_bytes,
        activation_bytes=activation_bytes,
        space_text=space_text,
        budget_elapsed_s=start.budget_elapsed_s,
        finished=start.finished,
        tune_experiment=start.tune_experiment,
        tune_carried=start.tune_carried,
    )


DICT_SOURCE = "(space given as a dict)"


def _load_given(given: Any) -> tuple[SearchSpace, str | None]:
    """The space as given - a SearchSpace, a dict with the YAML's keys, a YAML path or a
    packaged space name, None for the default - and the YAML text a manifest keeps for
    --resume (None when there is none). Anything else is a SqueezerayError."""
    if isinstance(given, SearchSpace):
        return given, config_space_text(given)
    if isinstance(given, Mapping):
        import yaml

        from orchestrator.space.parse import parse_space

        loaded = parse_space(dict(given), source=DICT_SOURCE, check_task=False)
        try:
            return loaded, yaml.safe_dump(dict(given), sort_keys=False)
        except yaml.YAMLError:  # values YAML cannot write: the sweep runs, --resume cannot
            return loaded, None
    if given is not None and not isinstance(given, str | Path):
        import search_spaces

        raise SqueezerayError(
            f"space={given!r} is a {type(given).__name__}; accepted: a SearchSpace, a dict "
            "with a search space's keys (task, pipeline, params, ...), a YAML path or a "
            f"packaged space name ({', '.join(search_spaces.names())})"
        )
    loaded = load_space(given, check_task=False)
    return loaded, config_space_text(loaded)


@dataclass(frozen=True)
class _Start:
    """What a sweep starts from: the space as given (or kept by the manifest), its options,
    its id when known, and the seconds of its time budget spent by earlier runs."""

    space: SearchSpace | Mapping[str, Any] | str | Path | None
    options: SweepOptions
    sweep_id: str | None
    space_text: str | None = None  # the YAML the manifest kept (a resumed sweep)
    budget_elapsed_s: float = 0.0
    finished: bool = False  # a resumed sweep whose manifest says it finished: nothing to run
    tune_experiment: str | None = None  # the Tune experiment its manifest names (a resume)
    tune_carried: tuple[str, ...] = ()  # the finished trials it did not run (its manifest)


def _resumed(
    store: Storage,
    given: SweepOptions,
    sweep_id: str | None,
    given_space: SearchSpace | Mapping[str, Any] | str | Path | None,
) -> _Start:
    """A resumed sweep's start, from its manifest: the options it was started with (plus the
    placement options given now) and the space as started (its YAML text), whatever became of
    its file since; only a manifest from before the text was kept (or a space built in
    Python) reads the file. A space given now must be the one started (`_check_same_space`)."""
    if sweep_id is None:
        sweep_id = latest_sweep_id(store)
    manifest = read_manifest(store, sweep_id)
    budget_elapsed_s = float(manifest.get("budget_elapsed_s") or 0.0)
    space_text = manifest.get("space_yaml")
    space: SearchSpace | str = manifest["space_source"]
    if space_text is not None:
        space = parse_space_text(space_text, source=manifest["space_source"], check_task=False)
    if given_space is not None:
        _check_same_space(given_space, space, manifest, store, sweep_id)
    opts = resumed_options(manifest, given, store, sweep_id)
    finished = manifest.get("status") == "finished" and not _rerun_rows(store, sweep_id)
    experiment = manifest.get("tune_experiment")
    carried = tuple(manifest.get("tune_carried") or ())
    return _Start(
        space, opts, sweep_id, space_text, budget_elapsed_s, finished, experiment, carried
    )


def _rerun_rows(store: Storage, sweep_id: str) -> list[str]:
    """The trial ids (the baseline's too) whose row `--resume` runs again (`lost` to Ray): a
    sweep that finished with such rows still has them to run, so it is not finished."""
    from orchestrator.store.schema import RERUN_STATUSES

    stored = stored_results(store, sweep_id)
    return sorted(t for t, r in stored.items() if r.get("status") in RERUN_STATUSES)


# What makes two spaces the same sweep (`source`, the file's path, does not; `task_metric` is
# filled in from the task later).
_SPACE_CONTENT = ("name", "task", "pipeline", "objectives", "params", "search", "constraints",
                  "latency")  # fmt: skip


def _check_same_space(
    given: SearchSpace | Mapping[str, Any] | str | Path,
    started: SearchSpace | str,
    manifest: Mapping[str, Any],
    store: Storage,
    sweep_id: str,
) -> None:
    """A space given with --resume must read as the one the sweep was started with (the same
    content, wherever its file is): resuming runs the space the manifest kept, so another
    space would be silently ignored. Raises SqueezerayError naming the file, the sweep, its
    task and the ways out."""
    mine = _load_given(given)[0]
    try:
        theirs = (
            started if isinstance(started, SearchSpace) else load_space(started, check_task=False)
        )
    except SqueezerayError:
        theirs = None  # the started space's file is gone and the manifest kept no text
    if theirs is not None and all(
        getattr(mine, key) == getattr(theirs, key) for key in _SPACE_CONTENT
    ):
        return
    raise SqueezerayError(
        f"{mine.source}: --resume continues sweep {sweep_id!r} (task {manifest.get('task')}, "
        f"space {manifest.get('space_source')}), which was started with another search space; "
        f"leave the space out to resume {sweep_id!r} as started, pass --sweep-id of the sweep "
        f"this space belongs to (list them with `squeezeray sweeps --storage {store.uri}`), "
        f"or start a new sweep with it (without --resume)"
    )


def _checked_storage(storage: str, sweep_id: str | None, *, resume: bool) -> Storage:
    """The storage, not created yet: not in memory (Ray workers write from their own
    processes), and without a sweep of that id unless it is resumed."""
    store = open_storage(storage)
    if storage.startswith("memory://"):
        raise SqueezerayError(
            f"--storage={storage!r}: an in-memory filesystem lives in one process, "
            "and Ray workers write stage checkpoints from theirs; use a directory, file://, "
            "s3:// or gs://"
        )
    if sweep_id is not None:
        check_no_driver(store, sweep_id)  # the same --sweep-id twice: name the running driver
    if not resume and sweep_id is not None and store.exists(*manifest_path(sweep_id)):
        raise SqueezerayError(
            f"--sweep-id {sweep_id!r} already exists in {store.uri}; continue it with "
            f"`{resume_command(store, sweep_id)}` or choose another id"
        )
    return store


def _ready_storage(storage: str, sweep_id: str, *, finished: bool) -> Storage:
    """The storage, created, once every other check has passed: writable (a full, read-only or
    forbidden storage is a StorageFault naming it and the fix, before Ray starts), and with no
    other driver running sweep `sweep_id` (StorageLocked naming its pid and host). A finished
    sweep writes nothing, so read-only storage is fine for it."""
    store = open_storage(storage)
    if finished:
        return store
    probe_writable(store)
    check_no_driver(store, sweep_id)
    return store


def bound_to_task(
    space: SearchSpace, opts: SweepOptions, *, progress: Progress | None = None
) -> tuple[SearchSpace, dict[str, str], int, int]:
    """The space checked against its task (`checked_against_task`), the task's fingerprint
    (architectures, weights and data go into the stage keys, so an edited model or dataset is
    recomputed instead of served from the cache), its larger model's bytes (the models built
    for the fingerprint, counted) and, for a model large enough to get memory requests, the
    activation bytes of a training step at the space's largest batch (`engine.memory`)."""
    from orchestrator.engine.memory import REQUEST_FROM_BYTES, training_batch_size
    from stages.activations import task_activation_bytes
    from stages.fingerprint import task_fingerprint

    space, task_obj = loaded_and_checked(space, opts, progress=progress)
    report_step(progress, "pre-flight: fingerprinting the task (models, weights, data digest)")
    fingerprint = task_fingerprint(task_obj, seed=TRAINING_SEED)
    activations = 0
    if fingerprint.model_bytes >= REQUEST_FROM_BYTES:
        report_step(progress, "pre-flight: measuring a training step's activation memory")
        activations = task_activation_bytes(task_obj, training_batch_size(space))
    # The models the checks built are garbage now: their pages go back to the OS, not kept
    # by the driver for the whole sweep (the 30M BERT's pre-flight: ~200 MiB more).
    from orchestrator.engine.stage_tasks import release_memory

    release_memory(freeze=False)
    return space, fingerprint.as_dict(), fingerprint.model_bytes, activations


def loaded_and_checked(
    space: SearchSpace, opts: SweepOptions, *, progress: Progress | None = None
) -> tuple[SearchSpace, Any]:
    """The space's task loaded and the space checked against it (`checked_against_task`),
    each step told to `progress`: `squeezeray sweep` and `squeezeray validate` alike."""
    from stages.tasks import load_task

    report_step(progress, f"pre-flight: loading task {space.task}")
    task_obj = load_task(space.task)
    return checked_against_task(space, opts, task_obj, progress=progress), task_obj


def checked_against_task(
    space: SearchSpace, opts: SweepOptions, task_obj: Any, *, progress: Progress | None = None
) -> SearchSpace:
    """The space with the task's teacher weights and metric, every check that needs the task
    passed: the task import path (on the driver, before any Ray work), every sample of every
    split (labels in range, finite inputs: `stages.datacheck`), the teacher weights,
    `distill.student_ratio`, and every stage that could not change the task's model at all
    (issue 12 item 6). `squeezeray validate` runs these too, without the fingerprint."""
    from stages.datacheck import check_splits

    report_step(progress, "pre-flight: checking every sample of the train/val/test splits")
    check_splits(task_obj, source=space.task)
    space = _with_teacher_weights(space, opts.teacher_weights, task_obj)
    space = space.with_task_metric(task_obj.metric.name if task_obj.metric else None)
    if task_obj.student is not None and "distill.student_ratio" in space.params:
        raise SqueezerayError(
            f"{space.source}: params.distill.student_ratio: task {space.task!r} has its own "
            "student, so distill.student_ratio would change nothing; drop the key, or give the "
            "task student=None to have the student made from the teacher"
        )
    report_step(progress, "pre-flight: checking that each stage applies to the task's model")
    check_stages_apply_to_task(space)
    return space


def sweep_options(options: SweepOptions | None, keywords: Mapping[str, Any]) -> SweepOptions:
    """`options`, or `SweepOptions.build(**keywords)` (the keyword Python API); not both."""
    if options is None:
        return SweepOptions.build(**keywords)
    if keywords:
        raise SqueezerayError(
            f"give the sweep options either as SweepOptions or as keywords, not both "
            f"(keywords given: {', '.join(sorted(keywords))})"
        )
    return options


def new_sweep_id(name: str | None) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = secrets.token_hex(2)
    base = f"{name}-{stamp}" if name else stamp
    return f"{base}-{suffix}"


def _check_sweep_id(sweep_id: str) -> None:
    # It names files and directories (manifest, Tune experiment, results partition).
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", sweep_id):
        raise SqueezerayError(
            f"--sweep-id {sweep_id!r} is not a valid sweep id; accepted: 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    from orchestrator.store.results import check_sweep_id_unambiguous

    check_sweep_id_unambiguous(sweep_id, what="--sweep-id")


def _with_teacher_weights(
    space: SearchSpace, cli_path: str | os.PathLike[str] | None, task: Any
) -> SearchSpace:
    """Resolve `teacher.weights` (from --teacher-weights, relative to the current directory,
    or from the space, relative to its file) to an absolute path, pin its sha256 beside it
    (`teacher.weights_sha256`: new weights give new stage keys) and load it into the task's
    teacher once here, so a wrong file fails before Ray starts."""
    import dataclasses

    from orchestrator.space.model import Distribution
    from stages.weightfiles import ACCEPTED, load_weights, weights_digest

    given = space.params.get("teacher.weights")
    if cli_path is None and given is None:
        return space
    key = "--teacher-weights" if cli_path is not None else "params.teacher.weights"
    if cli_path is not None and given is not None:
        raise SqueezerayError(
            f"{space.source}: --teacher-weights and params.teacher.weights are both given; keep one"
        )
    if "teacher" not in space.pipeline:
        raise SqueezerayError(
            f"{space.source}: {key}: the pipeline has no teacher stage to load the weights into"
        )
    path = _weights_path(space, cli_path)
    if not path.exists():
        raise SqueezerayError(
            f"{space.source}: {key}={os.fspath(cli_path or path)!r}: no such file or directory "
            f"({path}); {ACCEPTED}"
        )
    digest = weights_digest(path)
    try:
        load_weights(task.teacher(), str(path), sha256=digest)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{space.source}: {key}: {exc}") from exc
    params = {
        **space.params,
        "teacher.weights": Distribution(kind="fixed", value=str(path)),
        "teacher.weights_sha256": Distribution(kind="fixed", value=digest),
    }
    if cli_path is not None and "teacher.epochs" not in params:
        params["teacher.epochs"] = Distribution(kind="fixed", value=0)
    return dataclasses.replace(space, params=params)


def _weights_path(space: SearchSpace, cli_path: str | os.PathLike[str] | None) -> Path:
    """The teacher weights' absolute path: --teacher-weights relative to the current
    directory, or `params.teacher.weights` (one plain file path) relative to the space's file."""
    if cli_path is not None:
        return Path(cli_path).expanduser().resolve()
    given = space.params["teacher.weights"]
    if given.kind != "fixed" or not isinstance(given.value, str) or not given.value:
        raise SqueezerayError(
            f"{space.source}: params.teacher.weights: {given.describe()} is not accepted; "
            "accepted: one file path (a plain value)"
        )
    path = Path(given.value).expanduser()
    if not path.is_absolute():
        path = (Path(space.source).resolve().parent / path).resolve()
    return path
