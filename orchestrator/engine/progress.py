"""Sweep progress on the terminal (rich), instead of Ray Tune's raw status tables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.space.metrics import VALIDATION_PREFIX
from orchestrator.space.model import SearchSpace


class SweepProgress:
    """A progress bar: trials done/running/failed and the best value so far of the quality
    metric the search selects on (`quality_column`: `val_accuracy`, or e.g. `val_f1_macro`
    when that is the objective)."""

    def __init__(self, console: Console, space: SearchSpace) -> None:
        self.console = console
        # The planned trials (a grid's points, not `search.trials`), as the start line says;
        # the results writer's total (a resumed sweep's) replaces it with the first event.
        self.total = space.trial_count()
        self.quality, self.direction = quality_column(space)
        self.best_value: float | None = None
        self.running = 0
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task_id = self.progress.add_task("starting Ray...", total=self.total)

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def update(self, event: str, data: Mapping[str, Any]) -> None:
        counts = data.get("counts", {})
        total = int(data.get("total") or self.total)
        if event == "start":
            self.running += 1
        elif event == "done":
            self.running = max(0, self.running - 1)
            value = _metric_value(data, self.quality)
            if data.get("status") == "ok" and value is not None:
                better = max if self.direction == "max" else min
                prior = self.best_value
                self.best_value = value if prior is None else better(prior, value)
            if data.get("status") != "ok":
                from rich.markup import escape

                # The first line: the row holds the whole message, the log the traceback.
                first = str(data.get("error") or "").strip().splitlines()[:1]
                log = f" (log: {data['error_log']})" if data.get("error_log") else ""
                self.console.print(
                    f"[yellow]trial {data.get('trial_id')} {data.get('status')}:[/] "
                    f"{escape(''.join(first) + log)}",
                    highlight=False,
                    soft_wrap=True,
                )
        label = self.quality.replace(VALIDATION_PREFIX, "val ", 1)
        best = f"best {label} {self.best_value:.4f}" if self.best_value is not None else ""
        self.progress.update(
            self.task_id,
            total=total,
            completed=counts.get("ok", 0) + counts.get("failed", 0),
            description=(
                f"ok {counts.get('ok', 0)} · failed {counts.get('failed', 0)} · "
                f"running {self.running}  {best}"
            ),
        )


def quality_column(space: SearchSpace) -> tuple[str, str]:
    """(column, direction) of the first objective that selects on a validation column
    (`val_accuracy`, a task metric's `val_f1_macro`); `val_accuracy`, max when none does."""
    for column, direction in space.search_objectives():
        if column.startswith(VALIDATION_PREFIX):
            return column, direction
    return "val_accuracy", "max"


def _metric_value(data: Mapping[str, Any], column: str) -> float | None:
    """`column` of a finished trial's row or result (a task metric may sit in the row's
    `custom_metrics` JSON); None when absent or not finite."""
    value = data.get(column)
    if value is None and data.get("custom_metrics"):
        import json

        value = json.loads(str(data["custom_metrics"])).get(column)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def print_outcome(
    outcome: Any, space: SearchSpace, console: Console, *, top: int | None = None
) -> None:
    """The sweep's summary line and its Pareto front next to the baseline."""
    from orchestrator.query.frontview import print_front
    from orchestrator.space.constraints import closest_miss

    s = outcome.summary
    console.print(_summary_line(s), highlight=False, markup=False)
    _print_notes(s, space, console)
    constraints = list(space.search_constraints())
    miss = closest_miss(constraints, outcome.table.to_pylist())
    if miss:
        console.print(f"[yellow]{miss}[/]", highlight=False)
    objectives = {o.name: o.direction for o in space.objectives}
    print_front(outcome.table, objectives, console, top=top)
    console.print(
        f"results: {s.storage} - query again with `squeezeray pareto --storage {s.storage}`",
        highlight=False,
    )


def _summary_line(s: Any) -> str:
    """Trials ok and failed (by status), wall time, and stage executions vs a naive pipeline
    (`s`: a SweepSummary)."""
    failed = ", ".join(
        f"{n} {label}"
        for n, label in (
            (s.trials_error, "error"),
            (s.trials_timeout, "timeout"),
            (s.trials_stopped, "stopped early"),
            (s.trials_lost, "lost"),
        )
        if n
    )
    return (
        f"sweep {s.sweep_id}: {s.trials_ok} ok, {s.trials_failed} failed"
        f"{f' ({failed})' if failed else ''} in {s.wall_s:.1f} s; "
        f"stage executions {s.stages_executed} (+{s.stages_loaded} loaded from cache) vs "
        f"{s.stage_requests} for a naive per-trial pipeline"
    )


def _print_notes(s: Any, space: SearchSpace, console: Console) -> None:
    """What else the summary `s` has to say: the final latency phase, why the sweep ended,
    damaged checkpoints, a failed baseline, the commonest error."""
    if s.latency_final_models:
        console.print(
            f"latency: the front's {s.latency_final_models} model(s) and the baseline were "
            f"re-measured apart in {space.latency.rounds} interleaved rounds (lat ms, lat cv, "
            "speedup below)",
            highlight=False,
        )
    elif s.latency_final_note:
        console.print(f"[yellow]latency: {s.latency_final_note}[/]", highlight=False)
    if s.ended:
        _print_plain(console, f"ended: {s.ended}")
    if s.corrupt_checkpoints:
        _print_plain(
            console,
            f"{s.corrupt_checkpoints} damaged stage checkpoint(s) failed their checksum and "
            "were recomputed",
        )
    if s.stages_waited:
        _print_plain(
            console,
            f"{s.stages_waited} stage(s) were being computed by another sweep on this storage: "
            "waited for and loaded, not computed again",
        )
    if s.cache_restarted:
        _print_plain(
            console,
            "the stage cache actor died during the sweep and was restarted; finished stages "
            "were loaded from their checkpoints, the running ones started again",
            style="yellow",
        )
    if s.baseline_error:
        _print_plain(console, f"baseline failed: {s.baseline_error}", style="yellow")
    if s.exit_code and s.most_common_error:
        _print_plain(console, f"most common error: {s.most_common_error}", style="red")


def _print_plain(console: Console, text: str, *, style: str | None = None) -> None:
    """`text` as it is (no markup, no highlighting), wrapped softly."""
    console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)
