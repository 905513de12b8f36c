"""The `squeezeray` command line. It only parses and prints: every command calls importable,
tested functions. Heavy imports (torch, ray, pyarrow) happen inside commands so `--help` is
instant. `SqueezerayError` becomes exit code 2 here, in one place (`main`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from stages.errors import SqueezerayError

console = Console(stderr=True)
out = Console()


class _SqueezerayGroup(TyperGroup):
    """Turns SqueezerayError into a one-line message and exit code 2 - the one place it happens."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SqueezerayError as exc:
            from rich.markup import escape

            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
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

# --- sweep (orchestrator.sweep) ------------------------------------------------------------


@app.command()
def sweep(
    space: Annotated[
        Optional[str],
        typer.Argument(help="Search-space YAML, or a packaged space name (default, quick)."),
    ] = None,
    task: Annotated[
        Optional[str], typer.Option(help="Built-in task name or 'package.module:callable'.")
    ] = None,
    trials: Annotated[Optional[int], typer.Option(help="Number of trials.")] = None,
    storage: Annotated[
        str, typer.Option(help="Results directory or URI (file://, s3://, gs://).")
    ] = "squeezeray-results",
    address: Annotated[
        Optional[str], typer.Option(help="Ray cluster: 'auto' or ray://host:port. None: embedded.")
    ] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs for each stage task.")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs for each stage task.")] = 0.0,
    seed: Annotated[Optional[int], typer.Option(help="Search seed.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Sweep name (prefix of its id).")] = None,
    algorithm: Annotated[
        Optional[str], typer.Option(help="Search algorithm: optuna, random or grid.")
    ] = None,
    time_budget: Annotated[
        Optional[str], typer.Option(help="Stop launching trials after this long, e.g. 30m.")
    ] = None,
    trial_timeout: Annotated[
        Optional[str], typer.Option(help="Per-trial time limit, e.g. 5m (rows get 'timeout').")
    ] = None,
    max_concurrent: Annotated[
        Optional[int], typer.Option(help="Trials at once (default: what the cluster can run).")
    ] = None,
    latency_resource: Annotated[
        Optional[str],
        typer.Option(help="Measure latency only on nodes offering this Ray resource."),
    ] = None,
    num_cpus: Annotated[
        Optional[int], typer.Option(help="CPUs of the embedded Ray (default: all).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted sweep in --storage.")
    ] = False,
    sweep_id: Annotated[
        Optional[str], typer.Option(help="With --resume: which sweep (default: the latest).")
    ] = None,
    top: Annotated[Optional[int], typer.Option(help="Show at most K front points.")] = None,
) -> None:
    """Run a compression sweep and print its Pareto front next to the baseline."""
    from orchestrator.progress import SweepProgress
    from orchestrator.sweep import execute_sweep, prepare_sweep

    prepared = prepare_sweep(
        space,
        task=task,
        trials=trials,
        storage=storage,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        seed=seed,
        name=name,
        algorithm=algorithm,
        time_budget=time_budget,
        trial_timeout=trial_timeout,
        max_concurrent=max_concurrent,
        sweep_id=sweep_id,
        resume=resume,
    )
    console.print(
        f"squeezeray sweep [bold]{prepared.sweep_id}[/]: task {prepared.space.task}, "
        f"{prepared.space.search.trials} trials ({prepared.space.search.algorithm}), "
        f"storage {prepared.storage.uri}",
        highlight=False,
    )
    with SweepProgress(console, prepared.space) as progress:
        outcome = execute_sweep(
            prepared,
            address=address,
            latency_resource=latency_resource,
            num_cpus=num_cpus,
            progress=progress.update,
        )
    from orchestrator.progress import print_outcome

    print_outcome(outcome, prepared.space, out, top=top)

# --- validate (orchestrator.config) --------------------------------------------------------


@app.command()
def validate(
    space: Annotated[
        str | None,
        typer.Argument(
            help="A search-space YAML file, or a packaged space name (default, quick, tiny, "
            "digits-cnn). Default: the packaged default.yaml.",
            show_default=False,
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Check with this task instead (NAME or pkg.mod:callable)."),
    ] = None,
) -> None:
    """Check a search space (YAML, stages, ranges, task) without starting Ray; print a summary."""
    from orchestrator.config import load_space

    loaded = load_space(space, check_task=task is None)
    if task is not None:
        loaded = loaded.with_overrides(task=task)
    out.print(loaded.summary(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"ok: {loaded.source} is valid", markup=False, highlight=False, soft_wrap=True)


# --- pareto / sweeps (orchestrator.pareto, orchestrator.results) ---------------------------


@app.command()
def pareto(
    storage: Annotated[
        str, typer.Argument(help="Results directory or URI (file://, s3://, gs://, memory://).")
    ] = "squeezeray-results",
    sweep: Annotated[
        str, typer.Option("--sweep", help="A sweep id, 'latest' or 'all'.")
    ] = "latest",
    objectives: Annotated[
        str,
        typer.Option(help="Comma-separated column:max|min (a bare name takes its usual way)."),
    ] = "accuracy:max,size_bytes:min,latency_ms:min",
    where: Annotated[
        str | None,
        typer.Option(help='Filter trials first, e.g. "accuracy >= 0.95 and latency_ms < 0.2".'),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help="table, csv, json or parquet (parquet needs --output).")
    ] = "table",
    output: Annotated[
        Path | None, typer.Option(help="Write here instead of stdout.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the front: FILE.png or FILE.html.")
    ] = None,
    top: Annotated[
        int | None, typer.Option(help="Keep the best K front points (by the first objective).")
    ] = None,
) -> None:
    """Query the Pareto front of stored results; csv/json without --output go to stdout."""
    from orchestrator.frontview import FORMATS, build_front, empty_message, export_front
    from orchestrator.pareto import parse_objectives
    from orchestrator.results import load_results

    if format not in FORMATS:
        raise SqueezerayError(f"--format {format!r} is unknown; accepted: {', '.join(FORMATS)}")
    if format == "parquet" and output is None:
        raise SqueezerayError("--format parquet writes binary data; give --output FILE.parquet")
    if plot is not None and plot.suffix.lower() not in (".png", ".html"):
        raise SqueezerayError(f"--plot {str(plot)!r}: accepted file types: .png, .html")
    chosen = parse_objectives(objectives)
    table = load_results(storage, sweep=sweep)
    view = build_front(table, chosen, where=where, top=top)
    if plot is not None:
        from orchestrator.plots import plot_front

        console.print(f"plot: {plot_front(view.rows, chosen, plot)}", highlight=False)
    if view.front.num_rows == 0:
        console.print(empty_message(view), highlight=False, markup=False)
    if format == "table":
        if view.front.num_rows:
            from orchestrator.frontview import render_front

            if output is None:
                out.print(render_front(view))
            else:
                with open(output, "w") as sink:
                    Console(file=sink, width=200).print(render_front(view))
        return
    export_front(view, format, output, sys.stdout)
    if output is not None:
        console.print(f"wrote {view.front.num_rows} front rows to {output}", highlight=False)


@app.command()
def sweeps(
    storage: Annotated[
        str, typer.Argument(help="Results directory or URI (file://, s3://, gs://, memory://).")
    ] = "squeezeray-results",
) -> None:
    """List the sweeps in a storage: id, name, start, trials ok/failed, front hypervolume."""
    from rich.table import Table

    from orchestrator.results import list_sweeps

    listing = list_sweeps(storage)
    table = Table(
        title=f"sweeps in {storage}",
        caption="hypervolume: accuracy x size x latency dominated by the sweep's front, "
        "against its worst observed values (compare within a task)",
    )
    for header in ("sweep", "name", "task", "started (UTC)", "ok", "failed", "hypervolume"):
        table.add_column(header, justify="right" if header in ("ok", "failed") else "left")
    for row in listing.to_pylist():
        started = row["started_at"].strftime("%Y-%m-%d %H:%M") if row["started_at"] else "-"
        hv = "-" if row["hypervolume"] is None else f"{row['hypervolume']:.4g}"
        table.add_row(
            row["sweep_id"], row["sweep_name"] or "-", row["task"] or "-", started,
            str(row["trials_ok"]), str(row["trials_failed"]), hv,
        )  # fmt: skip
    out.print(table)


# --- nightly / schedule (orchestrator.nightly, orchestrator.schedule) ----------------------


def main() -> None:
    """Console-script entry point."""
    app()


_ = (Path, Annotated, Optional, sys)  # used by the command sections above
