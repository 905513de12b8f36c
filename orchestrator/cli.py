"""The `squeezeray` command line. It only parses and prints: every command calls importable,
tested functions. Heavy imports (torch, ray, pyarrow) happen inside commands so `--help` is
instant. `SqueezerayError` becomes exit code 2 here, in one place (`_SqueezerayGroup`).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from stages.errors import SqueezerayError, SqueezerayWarning

# Piped or logged output is not cut to rich's 80-column default (front tables folded ids and
# values to "eaa7a_0…"); a terminal, or COLUMNS, sets the width as usual.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(stderr=True, width=_WIDTH)
out = Console(width=_WIDTH)


def _bare_flags(params: list[Any]) -> list[Any]:
    """Flags take no value, so --help shows no `<bool>` type beside them (typer prints one)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class _SqueezerayCommand(TyperCommand):
    """A command whose --help shows flags as `--flag/--no-flag` without a `<bool>` type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage line without hidden (deprecated) arguments."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class _SqueezerayGroup(TyperGroup):
    """Turns SqueezerayError into a one-line message and exit code 2 - the one place it happens
    (as is an OSError of a full, read-only or forbidden disk: `faults.as_storage_fault`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SqueezerayError as exc:
            _exit_2(exc)
        except KeyboardInterrupt as exc:  # outside the sweep's own handling (`stop_signals`)
            _interrupted(exc, command=ctx.invoked_subcommand or "")
        except OSError as exc:  # a full or read-only disk under any other file we write
            from orchestrator.store.faults import as_storage_fault

            fault = as_storage_fault(exc, str(exc.filename or "a file"))
            if fault is None:
                raise
            _exit_2(fault)


def _interrupted(exc: KeyboardInterrupt, *, command: str) -> NoReturn:
    """Ctrl-C where a command has no handling of its own (a sweep's pre-flight checks, Ray
    starting up, a query writing its files): the embedded Ray this process started is shut
    down (its agents outlived the process for minutes), and the exit says what is kept, with
    code 2 as an interrupted sweep's; only a sweep or a nightly run is offered `--resume`."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    console.quiet = False
    if command in ("sweep", "nightly"):
        line = (
            "interrupted (Ctrl-C): what was written before it is kept; `squeezeray sweeps` "
            "lists the sweeps that started and `squeezeray sweep --resume` continues one"
        )
    else:  # a query or an export: its files are written all or nothing
        line = (
            f"interrupted (Ctrl-C): `squeezeray {command}` stopped; files it had not finished "
            "are not left behind, and the results store is unchanged; run it again"
        )
    console.print(line, highlight=False, markup=False)
    raise typer.Exit(2) from exc


def _interrupted_printing(prepared: Any, exc: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C while a finished sweep's front is printed: the sweep is complete and saved
    (`--resume` has nothing left to run), only the printing stopped; exit 2, never a bare 130."""
    import shlex

    console.quiet = False
    console.print(
        f"\ninterrupted (Ctrl-C) while printing the front: sweep {prepared.sweep_id} finished "
        "and every row is saved; print it again with: squeezeray pareto --storage "
        f"{shlex.quote(prepared.storage.uri)} --sweep {shlex.quote(prepared.sweep_id)}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    raise typer.Exit(2) from exc


def _exit_2(exc: SqueezerayError) -> NoReturn:
    from rich.markup import escape

    message = f"[bold red]error:[/] {escape(str(exc))}"
    console.quiet = False  # -q hides progress and notes, never the reason for exit 2
    console.print(message, highlight=False, soft_wrap=True)
    raise typer.Exit(2) from exc


app = typer.Typer(
    cls=_SqueezerayGroup,
    name="squeezeray",
    help="Find the best small version of a neural network: compression sweeps on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Commands are grouped by owner module; each body is a thin call into that module.


def _print_version(value: bool) -> None:
    """`--version`: the installed distribution's version, then exit (before any command)."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("squeezeray")
        except PackageNotFoundError:  # run from a source tree that was never installed
            text = "unknown (not installed)"
        out.print(f"squeezeray {text}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print squeezeray's version and exit.",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet/--no-quiet",
            "-q",
            help="Print only results and errors: no progress bar, start lines or notes.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose/--no-verbose",
            "-v",
            help="Show Ray's worker output (stage logs, warnings) and Ray's INFO logs.",
        ),
    ] = False,
    dashboard: Annotated[
        bool,
        typer.Option(
            "--dashboard/--no-dashboard",
            help="Keep Ray's web dashboard on an embedded Ray (needs ray\\[default]).",
        ),
    ] = False,
) -> None:
    """Find the best small version of a neural network: compression sweeps on Ray.

    Options before the command apply to every command, e.g. squeezeray -q sweep quick."""
    from orchestrator.engine.runtime import RayDisplay, set_ray_display

    if quiet and verbose:
        raise SqueezerayError("-q/--quiet and -v/--verbose exclude each other; give one")
    console.quiet = quiet
    set_ray_display(RayDisplay(verbose=verbose, dashboard=dashboard))


# --- sweep (orchestrator.engine.sweep) ------------------------------------------------------------


# The sweep options (orchestrator.space.options.SweepOptions), defined once: `sweep` and `nightly`
# take every one of them (each command sets its own defaults) and build SweepOptions from the
# parsed flags with `_sweep_options`.
def packaged_space_names() -> str:
    """The packaged spaces (`search_spaces/*.yaml`), as help lists them: "bench-quality,
    default, ..." (read from the installed package, so a space added there is listed)."""
    import search_spaces

    return ", ".join(search_spaces.names())


SpaceArg = Annotated[
    str | None,
    typer.Argument(help=f"Search-space YAML, or a packaged space name ({packaged_space_names()})."),
]
StorageOpt = Annotated[
    str,
    typer.Option(
        help="Results directory or URI (file://, s3://, gs://); nightly: the one every night "
        "shares."
    ),
]
TaskOpt = Annotated[
    str | None, typer.Option(help="Built-in task name or 'package.module:callable'.")
]
TrialsOpt = Annotated[
    int | None, typer.Option(help="Number of trials (default: the search space's).")
]
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster: 'auto' or ray://host:port. None: embedded.")
]
CpusPerTrialOpt = Annotated[float, typer.Option(help="CPUs for each stage task.")]
GpusPerTrialOpt = Annotated[float, typer.Option(help="GPUs for each stage task.")]
SeedOpt = Annotated[
    int | None,
    typer.Option(help="Search seed (default: the space's; nightly: tonight's date, YYYYMMDD)."),
]
NameOpt = Annotated[
    str | None,
    typer.Option(help="Sweep name, the prefix of its id (nightly default: nightly-YYYYMMDD)."),
]
AlgorithmOpt = Annotated[
    str | None,
    typer.Option(
        help="Search algorithm: optuna, random or grid (nightly warm-starts optuna from "
        "earlier sweeps)."
    ),
]
TimeBudgetOpt = Annotated[
    str | None, typer.Option(help="Stop launching trials after this long, e.g. 30m.")
]
TrialTimeoutOpt = Annotated[
    str | None,
    typer.Option(
        help="Per-trial limit on the time its stages run (queueing for a slot is not "
        "counted), e.g. 5m; rows past it get 'timeout'."
    ),
]
MaxConcurrentOpt = Annotated[
    int | None,
    typer.Option(help="Trials at once (default: one more than the stage slots the cluster has)."),
]
LatencyResourceOpt = Annotated[
    str | None,
    typer.Option(help="Measure latency only on nodes offering this Ray resource."),
]
NumCpusOpt = Annotated[int | None, typer.Option(help="CPUs of the embedded Ray (default: all).")]
TeacherWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Trained weights loaded into the task's teacher: a state_dict (torch.save, read "
        "with weights_only=True), a .safetensors file or a save_pretrained directory; "
        "teacher.epochs becomes 0 (use as given) unless the space sets it."
    ),
]
TopOpt = Annotated[int | None, typer.Option(help="Show at most K front points.")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume/--no-resume",
        help="Continue an interrupted sweep in --storage, with the options and search "
        "space it was started with (an option given again must not differ).",
    ),
]
SweepIdOpt = Annotated[
    str | None, typer.Option(help="With --resume: which sweep (default: the latest).")
]

# Shared by the commands that take the storage lock (nightly, gc).
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait", help="If another run holds the storage: wait, or fail at once."
    ),
]
LockTimeoutOpt = Annotated[
    str, typer.Option(help="With --wait: give up after this long, e.g. 30m.")
]


def _sweep_options(params: dict[str, Any]) -> Any:
    """The sweep options among a command's parsed flags (`ctx.params`) as one validated
    `SweepOptions` (durations parsed, paths made absolute); SqueezerayError names the flag."""
    from orchestrator.space.options import FLAGS, SweepOptions

    names = {name.removesuffix("_s") for name in FLAGS}
    return SweepOptions.build(**{k: v for k, v in params.items() if k in names})


def _duration(flag: str, text: str) -> float:
    """`text` ("30m", "90s") in seconds; SqueezerayError names `flag`."""
    from orchestrator.space.checks import parse_duration

    try:
        return parse_duration(text)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{flag}: {exc}") from exc


def _print_start(command: str, prepared: Any, *, note: str = "") -> None:
    """The first line of a sweep or nightly run: id, task, trials and storage; then any knob
    a coherence rule turns off (`coherence_notes`, as `validate` prints them)."""
    from orchestrator.space.coherence import coherence_notes

    console.print(
        f"squeezeray {command} [bold]{prepared.sweep_id}[/]: task {prepared.space.task}, "
        f"{trials_phrase(prepared.space)}, storage {prepared.storage.uri}{note}",
        highlight=False,
    )
    for line in coherence_notes(prepared.space):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_finished(prepared: Any) -> None:
    """--resume of a sweep or night that already finished: there is nothing to run."""
    from orchestrator.engine.sweep import finished_note

    note = finished_note(prepared.storage, prepared.sweep_id)
    console.print(note, highlight=False, soft_wrap=True)


def _print_sweep_start(prepared: Any) -> str:
    """The sweep's first line; returns the line that says how to continue it if it is
    interrupted, for `_hint_once_started`."""
    from rich.markup import escape

    from orchestrator.engine.sweep import resume_command

    _print_start("sweep", prepared, note=" (resumed)" if prepared.resume else "")
    command = escape(resume_command(prepared.storage, prepared.sweep_id))
    return f"[dim]if interrupted, continue with: {command}[/]"


def _hint_once_started(
    update: Callable[[str, Mapping[str, Any]], None], hint: str, event: str, data: Mapping[str, Any]
) -> None:
    """A progress callback: `update`, and first the resume `hint` on the `ready` event (Ray
    up, the sweep's checks passed, its manifest written: `engine.events`). It is printed as the
    sweep really starts, before any trial (after a crash there is no chance to print it), and
    never for a sweep refused before then (memory, resources): there is nothing to resume."""
    if event == "ready":
        console.print(hint, highlight=False, soft_wrap=True)
    update(event, data)


@app.command(cls=_SqueezerayCommand)
def sweep(
    ctx: typer.Context,
    space: SpaceArg = None,
    task: TaskOpt = None,
    trials: TrialsOpt = None,
    storage: StorageOpt = "squeezeray-results",
    address: AddressOpt = None,
    cpus_per_trial: CpusPerTrialOpt = 1.0,
    gpus_per_trial: GpusPerTrialOpt = 0.0,
    seed: SeedOpt = None,
    name: NameOpt = None,
    algorithm: AlgorithmOpt = None,
    time_budget: TimeBudgetOpt = None,
    trial_timeout: TrialTimeoutOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    latency_resource: LatencyResourceOpt = None,
    num_cpus: NumCpusOpt = None,
    resume: ResumeOpt = False,
    sweep_id: SweepIdOpt = None,
    top: TopOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
) -> None:
    """Run a compression sweep and print its Pareto front next to the baseline.

    Ctrl-C or SIGTERM saves what finished, prints the resume command and exits with code 2.
    A sweep in which no trial succeeded prints the most common error and exits with code 4;
    one that ended with trials lost to the infrastructure exits with code 5 (--resume runs
    them again). 0 only for a complete sweep.

    --resume continues an interrupted sweep: finished trials are kept, the rest run."""
    from orchestrator.engine.progress import SweepProgress, print_outcome
    from orchestrator.engine.sweep import execute_sweep, prepare_sweep

    # The display starts before the pre-flight checks: on a big model they take a while.
    with SweepProgress(console) as progress:
        prepared = prepare_sweep(
            space, _sweep_options(ctx.params), sweep_id=sweep_id, resume=resume,
            progress=progress.update,
        )  # fmt: skip
        if prepared.finished:  # --resume of a finished sweep: nothing to run, Ray never starts
            _print_finished(prepared)
            return
        progress.plan(prepared.space)
        hint = _print_sweep_start(prepared)
        report = functools.partial(_hint_once_started, progress.update, hint)
        outcome = execute_sweep(prepared, progress=report)
    try:
        print_outcome(outcome, prepared.space, out, top=top)
    except KeyboardInterrupt as exc:  # the sweep itself is finished and recorded
        _interrupted_printing(prepared, exc)
    if outcome.summary.exit_code:
        # No trial succeeded (4) or trials were lost (5): a scheduler or CI job must see it.
        raise typer.Exit(outcome.summary.exit_code)


# --- validate (orchestrator.space) ---------------------------------------------------------------


@app.command(cls=_SqueezerayCommand)
def validate(
    space: Annotated[
        str | None,
        typer.Argument(
            help=f"A search-space YAML file, or a packaged space name "
            f"({packaged_space_names()}). Default: the packaged default.yaml.",
            show_default=False,
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Check with this task instead (NAME or pkg.mod:callable)."),
    ] = None,
    teacher_weights: TeacherWeightsOpt = None,
) -> None:
    """Check a search space (YAML, stages, ranges, task, teacher weights) without starting Ray;
    print a summary. The same checks as `squeezeray sweep` runs before Ray starts, with the
    same progress on stderr (`still pre-flight: ...` lines when not on a terminal)."""
    from orchestrator.engine.progress import SweepProgress
    from orchestrator.space.config import load_space

    with SweepProgress(console) as progress:  # a big model's checks take minutes
        loaded = load_space(space, check_task=task is None)
        if task is not None:
            loaded = loaded.with_overrides(task=task)
        # A user task (imported above) or a weights file gets the sweep's own checks: stages
        # that cannot apply, the weights loaded into the teacher; built-in tasks stay
        # unimported here.
        if ":" in loaded.task or teacher_weights is not None:
            from orchestrator.engine.prepare import loaded_and_checked
            from orchestrator.space.options import SweepOptions

            opts = SweepOptions.build(teacher_weights=teacher_weights)
            loaded, _ = loaded_and_checked(loaded, opts, progress=progress.update)
    out.print(loaded.summary(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"ok: {loaded.source} is valid", markup=False, highlight=False, soft_wrap=True)


# --- pareto / sweeps (orchestrator.query.pareto, orchestrator.store.results) ----------------------

# Every command names its storage the same way, `--storage DIR|URI`. pareto, sweeps, compact,
# gc and export once took it as their first argument: that spelling still works (a hidden
# argument) and prints a deprecation note.
DEFAULT_STORAGE = "squeezeray-results"
ReadStorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Results directory or URI (file://, s3://, gs://, memory://).",
        show_default=DEFAULT_STORAGE,
    ),
]
LegacyStorageArg = Annotated[str | None, typer.Argument(hidden=True, show_default=False)]


def _storage(command: str, legacy: str | None, given: str | None) -> str:
    """The storage a command reads: --storage, else the deprecated positional STORAGE (with a
    note saying the new spelling), else the default."""
    if legacy is None:
        return DEFAULT_STORAGE if given is None else given
    if given is not None and given != legacy:
        raise SqueezerayError(
            f"{command}: storage given twice ({legacy!r} as an argument and --storage "
            f"{given!r}); accepted: --storage only"
        )
    console.print(
        f"note: `squeezeray {command} STORAGE` is deprecated; write `squeezeray {command} "
        f"--storage {legacy}` (every command takes --storage)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return legacy


@app.command(cls=_SqueezerayCommand)
def pareto(
    legacy_storage: LegacyStorageArg = None,
    storage: ReadStorageOpt = None,
    sweep: Annotated[
        str, typer.Option("--sweep", help="A sweep id, 'latest' or 'all'.")
    ] = "latest",
    objectives: Annotated[
        str,
        typer.Option(
            help="Comma-separated column:max|min (a column alone takes its usual direction)."
        ),
    ] = "val_accuracy:max,size_bytes:min,latency_ms_sweep:min",
    where: Annotated[
        str | None,
        typer.Option(
            help='Filter trials first, e.g. "val_accuracy >= 0.95 and latency_ms_sweep < 0.2".'
        ),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help="table, csv, json or parquet (parquet needs --output).")
    ] = "table",
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the front: FILE.png or FILE.html.")
    ] = None,
    top: Annotated[
        int | None, typer.Option(help="Keep the best K front points (by the first objective).")
    ] = None,
) -> None:
    """Query the Pareto front of stored results; csv/json without --output go to stdout."""
    from orchestrator.query.frontview import build_front, empty_message
    from orchestrator.query.pareto import parse_objectives
    from orchestrator.store.results import load_results

    storage = _storage("pareto", legacy_storage, storage)
    _check_front_output(format, output, plot)
    chosen = parse_objectives(objectives)
    table = load_results(storage, sweep=sweep)
    view = build_front(table, chosen, where=where, top=top)
    if plot is not None:
        from orchestrator.query.plots import plot_front

        console.print(f"plot: {plot_front(view.rows, chosen, plot)}", highlight=False)
    if view.front.num_rows == 0:
        console.print(empty_message(view), highlight=False, markup=False)
    _write_front(view, format, output)


def _check_front_output(format: str, output: Path | None, plot: Path | None) -> None:
    """`pareto`'s --format, --output and --plot, checked before any results are read."""
    from orchestrator.query.frontview import FORMATS

    if format not in FORMATS:
        raise SqueezerayError(f"--format {format!r} is unknown; accepted: {', '.join(FORMATS)}")
    if format == "parquet" and output is None:
        raise SqueezerayError("--format parquet writes binary data; give --output FILE.parquet")
    if plot is not None and plot.suffix.lower() not in (".png", ".html"):
        raise SqueezerayError(f"--plot {str(plot)!r}: accepted file types: .png, .html")


def _write_front(view: Any, format: str, output: Path | None) -> None:
    """The front as a rich table (nothing when it is empty) or csv/json/parquet, to `output`
    or stdout."""
    from orchestrator.query.frontview import export_front, show_front

    if format == "table":
        if view.front.num_rows:
            if output is None:
                show_front(view, out)
            else:
                from orchestrator.store.outputs import output_file

                with output_file(output) as tmp, open(tmp, "w") as sink:
                    show_front(view, Console(file=sink, width=200))
        return
    export_front(view, format, output, sys.stdout)
    if output is not None:
        console.print(f"wrote {view.front.num_rows} front rows to {output}", highlight=False)


def _sweeps_table(storage: str, rows: list[dict[str, Any]]) -> Any:
    """`sweeps`' table of `rows` (`list_sweeps`). A sweep id (what --sweep and --resume take)
    is never cut, nor are status and counts; on a narrow terminal the start wraps at its space
    and the rest folds, nothing ends in an ellipsis. The name column shows only when some name
    is not its id's prefix (ids are NAME-DATE-TIME-xxxx)."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"sweeps in {storage}",
        caption="hypervolume: val_accuracy x size_bytes x latency_ms_sweep dominated by the "
        "sweep's front, against one reference per task (its earliest sweep's baseline: "
        "accuracy 0, twice the size and latency), as nightly reports use",
        box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,  # no rules: 9 columns more
    )  # fmt: skip
    named = any(not r["sweep_id"].startswith(r["sweep_name"] or "") for r in rows)
    table.add_column("sweep", no_wrap=True)
    if named:
        table.add_column("name", overflow="fold")
    table.add_column("task", overflow="fold")
    table.add_column("started (UTC)", min_width=10, overflow="fold")  # the date whole
    table.add_column("status", no_wrap=True)
    table.add_column("ok", no_wrap=True, justify="right")
    table.add_column("stopped", no_wrap=True, justify="right")  # early, by ASHA: not failed
    table.add_column("failed", no_wrap=True, justify="right")
    table.add_column("hypervolume", no_wrap=True)
    for row in rows:
        started = row["started_at"].strftime("%Y-%m-%d %H:%M:%S") if row["started_at"] else "-"
        hv = "-" if row["hypervolume"] is None else f"{row['hypervolume']:.4g}"
        name = [row["sweep_name"] or "-"] if named else []
        table.add_row(
            row["sweep_id"], *name, row["task"] or "-", started, row["status"] or "-",
            str(row["trials_ok"]), str(row["trials_stopped"]), str(row["trials_failed"]), hv,
        )  # fmt: skip
    return table


@app.command(cls=_SqueezerayCommand)
def sweeps(
    legacy_storage: LegacyStorageArg = None,
    storage: ReadStorageOpt = None,
) -> None:
    """List the sweeps in a storage: id, name, start, status, trials ok/stopped/failed (stopped:
    early by the scheduler, not failed), front hypervolume; a sweep that crashed or was
    interrupted (even before any row) with the command that resumes it."""
    from orchestrator.store.results import list_sweeps

    storage = _storage("sweeps", legacy_storage, storage)

    listing = list_sweeps(storage)
    if not listing.num_rows:  # sweeps were tried here, none started (refused by a check)
        out.print(
            f"no sweeps in {storage}: none has started (a sweep refused by its checks before it "
            f"starts leaves nothing to list); run one with: squeezeray sweep --storage {storage}",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
        return
    rows = listing.to_pylist()
    out.print(_sweeps_table(storage, rows))
    for row in rows:
        if row["resume_command"]:
            out.print(f"{row['sweep_id']} ({row['status']}): resume with: "
                      f"{row['resume_command']}", highlight=False, markup=False,
                      soft_wrap=True)  # fmt: skip
    from orchestrator.store.compact import uncompacted_sweeps
    from orchestrator.store.gc import cache_size, human_bytes

    backlog = uncompacted_sweeps(storage)
    if backlog:
        out.print(
            f"{len(backlog)} sweep(s) not compacted (running, crashed, or written before "
            f"compaction): `squeezeray compact --storage {storage}` makes queries faster",
            highlight=False,
            soft_wrap=True,
        )
    count, size = cache_size(storage)
    out.print(
        f"stage cache: {count} checkpoint(s), {human_bytes(size)} "
        f"(free space with `squeezeray gc --storage {storage} --keep-last N`)",
        highlight=False,
        soft_wrap=True,
    )


# --- compact / gc (orchestrator.store.compact, orchestrator.store.gc) -----------------------------


@app.command(cls=_SqueezerayCommand)
def compact(
    legacy_storage: LegacyStorageArg = None,
    storage: ReadStorageOpt = None,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="Compact only this sweep (default: all).")
    ] = None,
) -> None:
    """Merge each sweep's per-trial result and stage files into one file per table.

    Sweeps compact themselves when they finish or are interrupted; run this for older stores
    and for sweeps that crashed. Safe while sweeps run and queries read."""
    from orchestrator.store.compact import compact_storage

    done = compact_storage(_storage("compact", legacy_storage, storage), sweep=sweep)
    merged = [c for c in done if c.changed]
    before = sum(c.files_before for c in merged)
    out.print(
        f"compacted {len({c.sweep_id for c in merged})} sweep(s): {before} file(s) merged into "
        f"{len(merged)}; {len({c.sweep_id for c in done}) - len({c.sweep_id for c in merged})} "
        "sweep(s) were already compact",
        highlight=False,
    )


@app.command(cls=_SqueezerayCommand)
def gc(
    legacy_storage: LegacyStorageArg = None,
    storage: ReadStorageOpt = None,
    keep_last: Annotated[
        int | None, typer.Option(help="Keep the checkpoints of the N newest sweeps.")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(help="Drop sweeps started longer ago than this, e.g. 30d (keeps newer)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run/--no-dry-run", help="List what would go and the bytes freed; delete nothing."
        ),
    ] = False,
    wait: WaitOpt = True,
    lock_timeout: LockTimeoutOpt = "6h",
) -> None:
    """Delete stage checkpoints that no kept sweep references (results are never touched).

    Without --keep-last/--older-than every sweep is kept and only checkpoints no sweep refers
    to go. With both, a sweep either rule keeps is kept. Refuses while a sweep is running."""
    from orchestrator.store.gc import collect

    older_than_s = None if older_than is None else _duration("--older-than", older_than)
    plan = collect(
        _storage("gc", legacy_storage, storage),
        keep_last=keep_last,
        older_than_s=older_than_s,
        dry_run=dry_run,
        wait=wait,
        lock_timeout_s=_duration("--lock-timeout", lock_timeout),
    )
    _print_gc_plan(plan, dry_run=dry_run)


def _print_gc_plan(plan: Any, *, dry_run: bool) -> None:
    """One line per checkpoint removed (or that would be), then the totals kept and freed."""
    from rich.markup import escape

    from orchestrator.store.gc import human_bytes

    verb = "would remove" if dry_run else "removed"
    for entry in plan.remove:
        stamp = f"{entry.modified:%Y-%m-%d %H:%M}" if entry.modified else "-"
        out.print(
            f"{verb} {escape(entry.key)}  {human_bytes(entry.bytes)}  {stamp}", highlight=False
        )
    out.print(
        f"{verb} {len(plan.remove)} checkpoint(s), {human_bytes(plan.bytes_freed)} "
        f"({plan.bytes_freed} bytes); kept {plan.kept_entries} checkpoint(s), "
        f"{human_bytes(plan.kept_bytes)}, referenced by {len(plan.kept_sweeps)} kept sweep(s)"
        f"{f'; dropped sweeps: {len(plan.dropped_sweeps)}' if plan.dropped_sweeps else ''}",
        highlight=False,
        soft_wrap=True,
    )
    if plan.claims:
        out.print(
            f"{verb} {len(plan.claims)} stale stage claim(s) left by sweeps that died",
            highlight=False,
        )


# --- export (orchestrator.query.export) -----------------------------------------------------------


@app.command(cls=_SqueezerayCommand)
def export(
    trial_id: Annotated[
        str | None, typer.Argument(help="The trial to export (or choose it with --where/--pick).")
    ] = None,
    legacy_trial_id: Annotated[str | None, typer.Argument(hidden=True)] = None,
    storage: ReadStorageOpt = None,
    output: Annotated[Path, typer.Option(help="Directory to write the files to.")] = Path(
        "squeezeray-model"
    ),
    sweep: Annotated[str, typer.Option("--sweep", help="A sweep id, or 'latest'.")] = "latest",
    where: Annotated[
        str | None,
        typer.Option(help='Only trials matching this, e.g. "val_accuracy >= 0.96".'),
    ] = None,
    pick: Annotated[
        str | None,
        typer.Option(help="Take the best matching trial by COLUMN[:min|max], e.g. size_bytes."),
    ] = None,
    recompute: Annotated[
        bool,
        typer.Option(
            "--recompute/--no-recompute",
            help="Re-run the trial's stages whose checkpoints are missing.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite/--no-overwrite",
            help="Replace a previous export in --output (only files an export writes; "
            "any other file there is refused).",
        ),
    ] = False,
) -> None:
    """Write a trial's model in the runtime it was measured in (model.onnx, or TorchScript
    model.pt; eager adds state_dict.pt and recipe.json) plus a model.json card, then check
    that the written file scores the row's test accuracy. A Hugging Face task's tokenizer
    files are copied beside the model; a Hugging Face model of float weights also gets
    huggingface/, a save_pretrained directory (with the tokenizer files) checked with
    from_pretrained. --output must be a new or empty folder (or hold a previous export, with
    --overwrite).

    e.g. squeezeray export --storage runs/ --where "val_accuracy >= 0.96" --pick size_bytes
    --output best/"""
    from orchestrator.query.export import export_trial

    storage, trial_id = _export_target(trial_id, legacy_trial_id, storage)
    result = export_trial(
        storage,
        trial_id,
        output=output,
        sweep=sweep,
        where=where,
        pick=pick,
        recompute=recompute,
        overwrite=overwrite,
        option_style="cli",
    )
    _print_export(result)


def _export_target(
    first: str | None, second: str | None, storage: str | None
) -> tuple[str, str | None]:
    """export's (storage, trial id). The old spelling `export STORAGE [TRIAL_ID]` is still
    read, with a deprecation note: two arguments, or one that names an existing directory or
    a URI while --storage is not given."""
    old_style = second is not None or (
        first is not None and storage is None and ("://" in first or Path(first).is_dir())
    )
    if not old_style:
        return _storage("export", None, storage), first
    return _storage("export", first, storage), second


def _print_export(result: Any) -> None:
    """Where the trial went, each file's digest, and the re-check of the written model."""
    card = result.card
    check = card["recheck"]
    out.print(
        f"exported trial {card['trial_id']} of sweep {card['sweep_id']} "
        f"({card['runtime']}) to {result.output}",
        highlight=False,
    )
    for name, digest in result.files.items():
        out.print(f"  {name}  sha256 {digest[:16]}...", highlight=False, markup=False)
    # Each written model re-checked on its own line: an eager row's number is its rebuild's
    # (checkpoint.pt + the recipe), model.pt's is the TorchScript trace's.
    rebuilt = "checkpoint.pt, rebuilt" if card["runtime"] in ("eager", "compiled") else None
    checked = [
        (rebuilt or card["artifact"], check["accuracy"]),
        *(
            (name, check[key])
            for key, name in (("torchscript_accuracy", "model.pt"), ("pt2_accuracy", "model.pt2"))
            if key in check and rebuilt
        ),
    ]
    for name, accuracy in checked:
        out.print(
            f"re-checked {name}: test accuracy {accuracy:.4f} = row {check['expected']:.4f} "
            f"({check['samples']} samples in batches of {check['batch_size']}, as the row was "
            "measured)",
            highlight=False,
            markup=False,
        )
    for name, why in card.get("not_written", {}).items():
        out.print(f"no {name}: {why}", highlight=False, markup=False)
    if "load" in card:  # the card's paths are the output folder's files
        out.print(
            f"load {card['artifact']} (in {result.output}): {card['load']}",
            highlight=False,
            markup=False,
        )
    _print_pretrained(card.get("huggingface"), result.output)


def _print_pretrained(hf: dict[str, Any] | None, output: Path) -> None:
    """The Hugging Face form's line: how to load huggingface/, or why there is none. The
    card's `load` names the folder relative to the card; this line names it as `output` was
    given (relative to the directory the command ran in, or absolute), so it pastes as is."""
    if hf is None:
        return
    if "skipped" in hf:
        out.print(f"no huggingface/ (save_pretrained form): {hf['skipped']}", highlight=False)
        return
    check = hf["recheck"]
    here = str(Path(output) / hf["dir"])
    load = hf["load"].replace(f"from_pretrained('{hf['dir']}')", f"from_pretrained({here!r})")
    out.print(
        f"re-checked {here}/ with from_pretrained: max |logit difference| "
        f"{check['max_abs_logit_diff']:.2g}, test accuracy {check['accuracy']:.4f}; load it: "
        f"{load}",
        highlight=False,
        markup=False,
    )


# --- nightly / schedule (orchestrator.nightly.run, orchestrator.nightly.schedule) -----------------


ReportDirOpt = Annotated[
    Path | None, typer.Option(help="Write the report here (default: <storage>/reports/).")
]
HypervolumeThresholdOpt = Annotated[
    float, typer.Option(help="Exit 3 when the front's hypervolume drops by more than X %.")
]
AccuracyThresholdOpt = Annotated[
    float, typer.Option(help="Exit 3 when same knobs lose more than this many accuracy points.")
]
LatencyThresholdOpt = Annotated[
    float, typer.Option(help="Exit 3 when same knobs get slower by more than this %.")
]
GcKeepLastOpt = Annotated[
    int | None,
    typer.Option(
        help="After the night, delete stage checkpoints no sweep among the N newest uses."
    ),
]

NightlyResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume/--no-resume",
        help="Finish an interrupted night (the newest nightly sweep in --storage, or "
        "--sweep-id) as it was started, then write its report and exit as the night would.",
    ),
]
NightlySweepIdOpt = Annotated[
    str | None, typer.Option(help="With --resume: which night (default: the latest).")
]


@app.command(cls=_SqueezerayCommand)
def nightly(
    ctx: typer.Context,
    storage: StorageOpt,
    space: SpaceArg = None,
    trials: TrialsOpt = None,
    report_dir: ReportDirOpt = None,
    regression_threshold: HypervolumeThresholdOpt = 10.0,
    accuracy_threshold: AccuracyThresholdOpt = 2.0,
    latency_threshold: LatencyThresholdOpt = 50.0,
    wait: WaitOpt = True,
    lock_timeout: LockTimeoutOpt = "6h",
    task: TaskOpt = None,
    address: AddressOpt = None,
    num_cpus: NumCpusOpt = None,
    cpus_per_trial: CpusPerTrialOpt = 1.0,
    gpus_per_trial: GpusPerTrialOpt = 0.0,
    algorithm: AlgorithmOpt = "optuna",
    seed: SeedOpt = None,
    name: NameOpt = None,
    time_budget: TimeBudgetOpt = None,
    trial_timeout: TrialTimeoutOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    latency_resource: LatencyResourceOpt = None,
    teacher_weights: TeacherWeightsOpt = None,
    gc_keep_last: GcKeepLastOpt = None,
    resume: NightlyResumeOpt = False,
    sweep_id: NightlySweepIdOpt = None,
) -> None:
    """Tonight's sweep: warm-started from earlier sweeps in --storage, reusing their cached
    stages, then a report (markdown + HTML) against the previous and the all-time front.
    Exit code 3 on a regression, 4 when no trial succeeded, 5 when trials were lost (resume).

    --resume finishes an interrupted night (the latest, or --sweep-id) under the lock, then
    writes its report and exits as the night would have."""
    from orchestrator.engine.progress import SweepProgress
    from orchestrator.nightly.run import execute_nightly, prepare_nightly

    thresholds = _thresholds(regression_threshold, accuracy_threshold, latency_threshold)
    lock_timeout_s = _duration("--lock-timeout", lock_timeout)
    with SweepProgress(console) as progress:  # from the pre-flight checks on
        prepared = prepare_nightly(
            space, _sweep_options(ctx.params), resume=resume, sweep_id=sweep_id,
            progress=progress.update,
        )  # fmt: skip
        if prepared.finished:  # --resume of a night that ended: nothing to run, no new report
            _print_finished(prepared)
            return
        progress.plan(prepared.space)
        hint = _print_night_start(prepared, report_dir, thresholds, gc_keep_last)
        outcome = execute_nightly(
            prepared, report_dir=report_dir, thresholds=thresholds, wait=wait,
            lock_timeout_s=lock_timeout_s, gc_keep_last=gc_keep_last,
            progress=functools.partial(_hint_once_started, progress.update, hint),
        )  # fmt: skip
    _print_nightly_outcome(outcome)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _thresholds(
    hypervolume_drop_pct: float, accuracy_drop_points: float, latency_pct: float
) -> Any:
    """nightly's regression thresholds (`orchestrator.query.report.Thresholds`)."""
    from orchestrator.query.report import Thresholds

    return Thresholds(
        hypervolume_drop_pct=hypervolume_drop_pct,
        accuracy_drop_points=accuracy_drop_points,
        latency_increase_pct=latency_pct,
    )


def _print_night_start(
    prepared: Any, report_dir: Path | None, thresholds: Any, gc_keep_last: int | None
) -> str:
    """The night's first line; returns the line that says how to finish it if it is
    interrupted, for `_hint_once_started`."""
    from rich.markup import escape

    from orchestrator.nightly.run import nightly_resume_command

    _print_start("nightly", prepared, note=" (resumed)" if prepared.resume else "")
    command = nightly_resume_command(
        prepared.storage, prepared.sweep_id, report_dir=report_dir, thresholds=thresholds,
        gc_keep_last=gc_keep_last,
    )  # fmt: skip
    return f"[dim]if interrupted, finish it with: {escape(command)}[/]"


def _print_nightly_outcome(outcome: Any) -> None:
    """How the night ended, its front against earlier ones, each regression, the report's
    paths and what the garbage collection after it did."""
    report, summary = outcome.report, outcome.summary
    out.print(f"ended: {summary.ended}", highlight=False, markup=False)
    if summary.exit_code and summary.most_common_error:
        out.print(f"most common error: {summary.most_common_error}", highlight=False, markup=False)
    if summary.code_changed:
        out.print(summary.code_changed, highlight=False, markup=False)
    out.print(
        f"hypervolume tonight {_g(report.hypervolume)}, previous sweep "
        f"{_g(report.hypervolume_previous)}, all time {_g(report.hypervolume_all_time)}; "
        f"{len(report.new_front_points)} new front point(s); "
        f"warm start from {outcome.warm_start_points} earlier point(s)",
        highlight=False,
    )
    for c in report.regressions:
        out.print(
            f"REGRESSION {c.kind} {c.knobs or '(whole front)'}: {c.before:.4g} -> "
            f"{c.after:.4g} ({c.change:+.2f}{' points' if c.kind == 'accuracy' else ' %'})",
            highlight=False,
            markup=False,
        )
    out.print(f"report: {outcome.report_paths[0]}  {outcome.report_paths[1]}", highlight=False)
    if outcome.gc is not None:
        from orchestrator.store.gc import human_bytes

        out.print(
            f"gc: removed {len(outcome.gc.remove)} checkpoint(s), "
            f"{human_bytes(outcome.gc.bytes_freed)}; kept {outcome.gc.kept_entries}",
            highlight=False,
        )
    if outcome.gc_error is not None:
        console.print(f"gc skipped: {outcome.gc_error}", highlight=False, markup=False)


def _g(value: float | None) -> str:
    """A hypervolume for a summary line: 4 significant digits, "-" when there is none."""
    return "-" if value is None else f"{value:.4g}"


@app.command(
    cls=_SqueezerayCommand,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def schedule(
    ctx: typer.Context,
    cron: Annotated[
        str, typer.Option(help='When to run, in cron syntax, e.g. "0 2 * * *" (02:00 daily).')
    ],
    print_: Annotated[
        bool,
        typer.Option("--print/--no-print", help="Print the crontab line and a KubeRay snippet."),
    ] = False,
    install: Annotated[
        bool,
        typer.Option("--install/--no-install", help="Add the line to your crontab (idempotent)."),
    ] = False,
    foreground: Annotated[
        bool, typer.Option("--foreground/--no-foreground", help="Run the schedule in this process.")
    ] = False,
    log: Annotated[
        Path | None, typer.Option(help="Crontab: append each run's output here.")
    ] = None,
    image: Annotated[
        str, typer.Option(help="KubeRay snippet: a container image with squeezeray installed.")
    ] = "your-registry/squeezeray:latest",
) -> None:
    """Run `squeezeray nightly` on a schedule. Every argument after the schedule's own options
    goes to nightly, e.g.: squeezeray schedule --cron "0 2 * * *" --install quick --storage runs/
    """
    from orchestrator.nightly import schedule as sched

    cron = sched.check_cron(cron)
    if sum((print_, install, foreground)) > 1:
        raise SqueezerayError("--print, --install and --foreground exclude each other; pick one")
    args = list(ctx.args)
    storage = _checked_nightly_storage(ctx, args)
    command = sched.nightly_command(args, storage=storage, log=log)
    if install:
        entry = sched.crontab_entry(cron, command)
        change = sched.install_crontab(entry, command.key())
        out.print(f"crontab: {change}", highlight=False)
        out.print(entry[1], highlight=False, markup=False, soft_wrap=True)
    elif foreground:
        _run_schedule_here(cron, command)
    else:
        text = "\n".join(
            [
                "# crontab (add with `crontab -e`, or rerun with --install instead of --print)",
                *sched.crontab_entry(cron, command),
                "",
                sched.kuberay_manifests(cron, args, image=image),
            ]
        )
        out.print(text, highlight=False, markup=False, soft_wrap=True)


def _checked_nightly_storage(ctx: typer.Context, args: list[str]) -> str:
    """Parse the arguments meant for `nightly` now, not at 2 am, and return their --storage;
    a usage error becomes a SqueezerayError that points at `squeezeray nightly --help`."""
    nightly_cmd = typer.main.get_command(app).get_command(ctx, "nightly")  # type: ignore[attr-defined]
    assert nightly_cmd is not None
    try:
        parsed = nightly_cmd.make_context("nightly", list(args), resilient_parsing=False)
    except Exception as exc:  # a click usage error (typer vendors its own click)
        if not hasattr(exc, "format_message"):
            raise
        raise SqueezerayError(
            f"the nightly arguments {' '.join(args) or '(none)'!r} are not valid: "
            f"{exc.format_message().rstrip('.')}; see `squeezeray nightly --help`"
        ) from exc
    return str(parsed.params["storage"])


def _run_schedule_here(cron: str, command: Any) -> None:
    """`schedule --foreground`: run nightly at each cron time in this process until Ctrl-C."""
    from orchestrator.nightly import schedule as sched

    _say_stamped(f"scheduling `{' '.join(command.argv())}` at {cron!r} (Ctrl-C stops)")
    try:
        sched.run_forever(cron, sched.subprocess_runner(command), log=_say_stamped)
    except KeyboardInterrupt:
        _say_stamped("stopped")


def _say_stamped(message: str) -> None:
    """A line on stderr stamped with the local time (the foreground schedule's log)."""
    from datetime import datetime

    stamp = f"{datetime.now():%Y-%m-%d %H:%M:%S}"
    console.print(f"[{stamp}] {message}", highlight=False, markup=False)


def trials_phrase(space: Any) -> str:
    """ "24 trials (optuna)", or for a grid the trials it runs and the grid's size."""
    if space.search.algorithm != "grid":
        return f"{space.trial_count()} trials ({space.search.algorithm})"
    from orchestrator.space.coherence import grid_trials_text

    return grid_trials_text(space)


def main() -> None:
    """Console-script entry point.

    The current directory goes on `sys.path` (as with `python -m`), so a task module next to
    where the user runs `squeezeray` imports as `module:callable`.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    warnings.showwarning = _show_warning
    app()


_PACKAGES = tuple(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + name + os.sep
    for name in ("orchestrator", "stages")
)
_default_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """squeezeray's own warnings (a note about the rows a front left out, ...) as one plain
    line on stderr, without Python's source path and line (a `SqueezerayWarning`, such as a
    structured prune that removed far less than asked, as `warning: ...`); other libraries'
    as Python shows them."""
    if os.path.abspath(filename).startswith(_PACKAGES) or issubclass(category, SqueezerayWarning):
        kind = "warning" if issubclass(category, SqueezerayWarning) else "note"
        console.print(f"{kind}: {message}", highlight=False, markup=False, soft_wrap=True)
        return
    _default_showwarning(message, category, filename, lineno, file, line)


_ = (Path, Annotated, Optional, sys)  # used by the command sections above

if __name__ == "__main__":  # `python -m orchestrator.cli ...` runs as `squeezeray ...`
    main()
