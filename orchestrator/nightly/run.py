"""`run_nightly`: one dated sweep that builds on the earlier ones in its storage, then a report.

    lock the storage -> read every earlier result -> warm-start Optuna with the earlier ok
    trials of the same task -> run the sweep (stages already in `<storage>/cache/` are loaded,
    not recomputed, while the code is unchanged) -> compare with the previous sweep and the
    all-time front -> write `<sweep_id>.md` / `.html` -> exit code 3 on a regression.

The sweep is named `nightly-YYYYMMDD`; its id adds the time and a random suffix
(`nightly-YYYYMMDD-HHMMSS-xxxx`), so two runs on one day never mix rows. The search seed
defaults to that date, so successive nights explore differently and a night can be replayed.

An interrupted night is finished by `squeezeray nightly --resume` (`prepare_nightly(resume=
True)`): the same sweep resumed under the lock, then the report and the night's exit code, as
an uninterrupted night; the interruption's message says that command (`nightly_resume_command`).
"""

from __future__ import annotations

import dataclasses
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.engine.manifest import latest_sweep_id
from orchestrator.engine.sweep import (
    EXIT_LOST_TRIALS,
    PreparedSweep,
    SweepInterrupted,
    SweepSummary,
    execute_sweep,
    prepare_sweep,
    sweep_options,
)
from orchestrator.engine.warm import WarmStart, warm_start_from
from orchestrator.query.report import NightlyReport, Thresholds, build_report, write_report
from orchestrator.space.model import SearchSpace
from orchestrator.space.options import SweepOptions
from orchestrator.store.lock import DEFAULT_TIMEOUT_S, storage_lock
from orchestrator.store.storage import Storage, open_storage
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    from orchestrator.store.gc import GcPlan

EXIT_REGRESSION = 3


@dataclass(frozen=True)
class NightlyOutcome:
    sweep_id: str
    summary: SweepSummary
    report: NightlyReport
    report_paths: tuple[str, str]  # markdown, html
    warm_start_points: int
    gc: GcPlan | None = None  # the stage-cache collection after the night (--gc-keep-last)
    gc_error: str | None = None  # why that collection did not run (the night itself is fine)

    @property
    def exit_code(self) -> int:
        """EXIT_NO_TRIAL_OK when no trial of tonight succeeded, else the report's 3 on a
        regression, else EXIT_LOST_TRIALS when trials were lost (resume to complete), else 0."""
        if self.summary.exit_code == EXIT_LOST_TRIALS and self.report.exit_code:
            return self.report.exit_code
        return self.summary.exit_code or self.report.exit_code


def nightly_name(day: Date) -> str:
    return f"nightly-{day:%Y%m%d}"


def prepare_nightly(
    space: SearchSpace | str | Path | None = None,
    options: SweepOptions | None = None,
    *,
    day: Date | None = None,
    resume: bool = False,
    sweep_id: str | None = None,
    progress: Callable[[str, Mapping[str, Any]], None] | None = None,
    **keywords: Any,
) -> PreparedSweep:
    """Tonight's sweep, validated (no Ray, no lock yet; `progress` hears each pre-flight step,
    as `prepare_sweep`'s): named `nightly-YYYYMMDD` and seeded
    by the date unless the options give a name / seed. The options are `options` or its
    fields as keywords (as `prepare_sweep`; `storage=` is required). With keywords,
    `algorithm` defaults to "optuna" (warm starting needs it); None keeps the space's own.

    `resume=True`: the interrupted night `sweep_id` (default: the newest nightly sweep in the
    storage, or the newest named `--name`) as it was started (`prepare_sweep(resume=True)`:
    its manifest's options and space; another given is refused). Its `finished` says that
    the night already ended."""
    day = day or Date.today()
    if options is None:
        keywords.setdefault("algorithm", "optuna")
        if "storage" not in keywords:
            raise SqueezerayError(
                "prepare_nightly needs storage=: the results every night builds on"
            )
    opts = sweep_options(options, keywords)
    if resume:
        if sweep_id is None:
            store = open_storage(opts.storage)
            sweep_id = latest_sweep_id(store, name_prefix=opts.name or "nightly-")
        resumed = prepare_sweep(space, opts, sweep_id=sweep_id, resume=True, progress=progress)
        return dataclasses.replace(resumed, command="nightly")
    if sweep_id is not None:
        raise SqueezerayError(
            f"--sweep-id {sweep_id!r} is only for --resume: a new night's id is "
            "nightly-YYYYMMDD-HHMMSS-xxxx (give --name to change its prefix)"
        )
    opts = dataclasses.replace(
        opts,
        seed=int(f"{day:%Y%m%d}") if opts.seed is None else opts.seed,
        name=opts.name or nightly_name(day),
    )
    # The id repeats no date: nightly-YYYYMMDD-HHMMSS-xxxx (time and suffix: runs never mix).
    sweep_id = f"{opts.name}-{datetime.now():%H%M%S}-{secrets.token_hex(2)}"
    prepared = prepare_sweep(space, opts, sweep_id=sweep_id, progress=progress)
    return dataclasses.replace(prepared, command="nightly")


def nightly_resume_command(
    store: Storage,
    sweep_id: str,
    *,
    report_dir: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
    gc_keep_last: int | None = None,
) -> str:
    """The shell command that finishes the interrupted night `sweep_id`: `squeezeray nightly
    --resume`, with the report's options that were not the defaults (the manifest keeps only
    the sweep's)."""
    location = store.root if store.is_local else store.uri
    words = ["squeezeray", "nightly", "--resume", "--sweep-id", sweep_id, "--storage", location]
    if report_dir is not None:
        words += ["--report-dir", str(Path(report_dir).resolve())]
    flags = {
        "--regression-threshold": "hypervolume_drop_pct",
        "--accuracy-threshold": "accuracy_drop_points",
        "--latency-threshold": "latency_increase_pct",
    }
    for flag, field in flags.items():
        if getattr(thresholds, field) != getattr(Thresholds(), field):
            words += [flag, f"{getattr(thresholds, field):g}"]
    if gc_keep_last is not None:
        words += ["--gc-keep-last", str(gc_keep_last)]
    return shlex.join(words)


def execute_nightly(
    prepared: PreparedSweep,
    *,
    report_dir: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
    wait: bool = True,
    lock_timeout_s: float = DEFAULT_TIMEOUT_S,
    address: str | None = None,
    num_cpus: int | None = None,
    latency_resource: str | None = None,
    progress: Callable[[str, Mapping[str, Any]], None] | None = None,
    gc_keep_last: int | None = None,
) -> NightlyOutcome:
    # address / num_cpus / latency_resource: None keeps the sweep's SweepOptions.
    """Run a prepared nightly sweep and write its report; see the module docstring.

    The storage lock is held from the first read to the report: a second run waits up to
    `lock_timeout_s` seconds (`wait=True`) or fails at once, naming the holder.
    `gc_keep_last=N` then removes the stage checkpoints no sweep among the N newest references
    (`orchestrator.store.gc`, still under the lock); when that cannot run (a manual sweep is
    running) the night still succeeds and `gc_error` says why.
    """
    if gc_keep_last is not None and gc_keep_last < 1:
        raise SqueezerayError(
            f"--gc-keep-last={gc_keep_last} must be >= 1 (tonight's sweep is always kept); "
            "leave it out to keep every checkpoint"
        )
    store = prepared.storage
    if prepared.finished:
        from orchestrator.engine.manifest import finished_note

        raise SqueezerayError(finished_note(store, prepared.sweep_id))
    with storage_lock(store, wait=wait, timeout_s=lock_timeout_s):
        warm, notes = _warm_start(prepared)
        try:
            outcome = execute_sweep(
                prepared,
                address=address,
                latency_resource=latency_resource,
                num_cpus=num_cpus,
                warm_start=warm,
                progress=progress,
            )
        except SweepInterrupted as exc:  # finished as a night: report, exit code, lock
            raise _as_night(exc, prepared, report_dir, thresholds, gc_keep_last) from None
        report = _report(prepared, outcome.summary, thresholds=thresholds, notes=notes)
        paths = write_report(report, store=store, report_dir=report_dir)
        gc_plan, gc_error = _collect_after_night(store.uri, gc_keep_last)
    return NightlyOutcome(
        sweep_id=prepared.sweep_id,
        summary=outcome.summary,
        report=report,
        report_paths=paths,
        warm_start_points=len(warm[0]) if warm else 0,
        gc=gc_plan,
        gc_error=gc_error,
    )


def _as_night(
    exc: SweepInterrupted,
    prepared: PreparedSweep,
    report_dir: str | Path | None,
    thresholds: Thresholds,
    gc_keep_last: int | None,
) -> SweepInterrupted:
    """An interrupted night's error, naming `squeezeray nightly --resume` (which writes the
    report and gives the night's exit code under the lock) instead of `sweep --resume`."""
    command = nightly_resume_command(
        prepared.storage, prepared.sweep_id, report_dir=report_dir, thresholds=thresholds,
        gc_keep_last=gc_keep_last,
    )  # fmt: skip
    return SweepInterrupted(dataclasses.replace(exc.summary, resume_command=command))


def _warm_start(prepared: PreparedSweep) -> tuple[WarmStart | None, list[str]]:
    """The earlier trials of the task that seed tonight's Optuna study (None for another
    algorithm or a first night), and the report note that says so."""
    from orchestrator.store.results import load_results

    space = prepared.space
    earlier = _load_or_none(load_results, prepared.storage.uri)
    if space.search.algorithm != "optuna":
        return None, [
            f"Warm start: not used (search algorithm {space.search.algorithm}; it needs optuna)."
        ]
    warm = warm_start_from(earlier, space)
    count = len(warm[0]) if warm else 0
    return warm, [f"Warm start: {count} earlier knob point(s) of this task seeded Optuna."]


def _report(
    prepared: PreparedSweep,
    summary: SweepSummary,
    *,
    thresholds: Thresholds,
    notes: list[str],
) -> NightlyReport:
    """Tonight against the earlier sweeps in the storage, with what the stage cache saved."""
    from orchestrator.store.results import load_results

    store, space = prepared.storage, prepared.space
    cache_note = (
        f"Stage cache: {summary.stages_executed} stage(s) computed, {summary.stages_loaded} "
        f"loaded from checkpoints of earlier sweeps, {summary.stage_requests} requested by "
        "the trials."
    )
    return build_report(
        load_results(store.uri, sweep="all"),
        prepared.sweep_id,
        objectives={o.name: o.direction for o in space.objectives},
        thresholds=thresholds,
        knob_names=list(space.searched()),
        storage=store.uri,
        notes=[*notes, cache_note],
    )


def _collect_after_night(uri: str, gc_keep_last: int | None) -> tuple[GcPlan | None, str | None]:
    """`--gc-keep-last`: the stage-cache collection under tonight's lock, or why it could not
    run (a manual sweep is running; the night itself is fine)."""
    from orchestrator.store.gc import collect

    if gc_keep_last is None:
        return None, None
    try:
        return collect(uri, keep_last=gc_keep_last, locked=True), None
    except SqueezerayError as exc:
        return None, str(exc)


def run_nightly(
    space: SearchSpace | str | Path | None = None,
    options: SweepOptions | None = None,
    *,
    report_dir: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
    wait: bool = True,
    lock_timeout_s: float = DEFAULT_TIMEOUT_S,
    day: Date | None = None,
    progress: Callable[[str, Mapping[str, Any]], None] | None = None,
    gc_keep_last: int | None = None,
    resume: bool = False,
    sweep_id: str | None = None,
    **keywords: Any,
) -> NightlyOutcome:
    """`prepare_nightly` then `execute_nightly` (the Python API of `squeezeray nightly`);
    the sweep options as `options` or as keywords (`storage=`, `trials=`, `trial_timeout=`,
    ... every field of `SweepOptions`). `resume=True` finishes an interrupted night (see
    `prepare_nightly`; one that already finished raises SqueezerayError saying so)."""
    prepared = prepare_nightly(
        space, options, day=day, resume=resume, sweep_id=sweep_id, **keywords
    )
    return execute_nightly(
        prepared,
        report_dir=report_dir,
        thresholds=thresholds,
        wait=wait,
        lock_timeout_s=lock_timeout_s,
        progress=progress,
        gc_keep_last=gc_keep_last,
    )


def _load_or_none(load: Callable[..., Any], uri: str) -> Any:
    try:
        return load(uri)
    except SqueezerayError:
        return None  # no results yet: the first night
