"""Sweep progress as it happens, instead of Ray Tune's raw status tables.

On a terminal: one rich bar - trials done of the planned total, ok/failed, the running trials
with the stages running for them (asked of the sweep's cache actor at most every `POLL_S`),
the best validation value so far, or the step under way (a pre-flight check, starting Ray).
Anywhere else (a CI log, `> log 2>&1`, nohup) rich draws no bar, so plain lines instead: a step
still running after `STEP_AFTER_S` (a pre-flight check on a big model), one line per finished
trial with its status and validation metrics, and a heartbeat naming what runs after
`heartbeat_s` without a line (`SQUEEZERAY_HEARTBEAT_S`, default 30). A quiet console (`-q`)
prints none of it. The events: `engine.events`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.engine.progress_lines import (
    duration_text,
    metric_label,
    metric_value,
    running_text,
    trial_line,
)
from orchestrator.space.metrics import VALIDATION_PREFIX
from orchestrator.space.model import SearchSpace
from stages.errors import SqueezerayError

HEARTBEAT_ENV = "SQUEEZERAY_HEARTBEAT_S"
HEARTBEAT_S = 30.0  # plain lines: a heartbeat after this long without a line
STEP_AFTER_S = 2.0  # plain lines: a step is announced once it has run this long (fast ones never)
POLL_S = 2.0  # the cache actor is asked what runs at most this often
TICK_S = 1.0  # how often the display's thread looks at the clock


class SweepProgress:
    """A sweep's progress display on `console` (a bar on a terminal, else plain lines; nothing
    when the console is quiet). `update` is the `progress=` callback of a sweep; `space`
    (now, or later with `plan`) gives the trial total and the quality metric the search
    selects on (`quality_column`: `val_accuracy`, or e.g. `val_f1_macro` when that is the
    objective). Used as a context manager: a thread ticks every `TICK_S` for the heartbeat,
    the step announcements and the running stages."""

    def __init__(
        self,
        console: Console,
        space: SearchSpace | None = None,
        *,
        heartbeat_s: float | None = None,
        step_after_s: float = STEP_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.plain = not console.is_terminal
        self.clock = clock
        self.heartbeat_s = heartbeat_from_env() if heartbeat_s is None else heartbeat_s
        self.step_after_s = step_after_s
        self.total: int | None = None
        self.quality, self.direction = "val_accuracy", "max"
        self.knobs: tuple[str, ...] = ()  # the searched knobs, shown per finished trial
        self.best_value: float | None = None
        self.running = 0  # trials started and not done
        self.counts = {"ok": 0, "failed": 0}
        # the step under way before, between or after trials
        self.step: str | None = "pre-flight: reading the search space" if space is None else None
        self.step_since = self.said_at = self.started = clock()
        self.step_said = True
        self.poll: Callable[[], Mapping[str, Any]] | None = None  # the cache's running stages
        self.stages: list[str] = []
        self.sharing: list[int] = []  # beside stages: the trials waiting on each
        self.stage_progress: list[
            str
        ] = []  # beside stages: where each is ("epoch 1/3, batch 9/40")
        self.queued = 0
        self.polled_at = -math.inf
        self.lock = threading.RLock()  # events (Tune's loop) and ticks (the thread) interleave
        self.stopped = threading.Event()
        self.ticker: threading.Thread | None = None
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task_id = self.progress.add_task("starting...", total=None)
        if space is not None:
            self.plan(space)

    def plan(self, space: SearchSpace) -> None:
        """The sweep's space is known (after its pre-flight checks): its planned trials (a
        grid's points, as the start line says; the results writer's total, a resumed sweep's,
        replaces it with the first trial event) and the quality metric."""
        with self.lock:
            self.total = space.trial_count()
            self.quality, self.direction = quality_column(space)
            self.knobs = tuple(space.searched())
            self._refresh()

    def __enter__(self) -> SweepProgress:
        if not self.plain:
            self.progress.start()
        if not self.console.quiet:
            self.ticker = threading.Thread(target=self._tick_until_stopped, daemon=True)
            self.ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopped.set()
        if self.ticker is not None:
            self.ticker.join(timeout=5)
        idle = not self.running and not any(self.counts.values())
        if self.total is None or (exc is not None and idle):
            # Stopped before any trial (a pre-flight error, a finished sweep): no bar left behind.
            self.progress.update(self.task_id, visible=False)
        self.progress.stop()

    def update(self, event: str, data: Mapping[str, Any]) -> None:
        """A progress event (`engine.events`): `step`, `ready`, `start`, `done`."""
        with self.lock:
            if event == "step":
                self.step, self.step_since = str(data.get("step")), self.clock()
                # Plain lines: said once it has run `step_after_s` (`tick`), at once for 0.
                self.step_said = not self.plain or self.step_after_s <= 0
                if self.plain and self.step_after_s <= 0:
                    self._say(f"{self.step} ...")
            elif event == "ready":
                self.poll, self.step = data.get("running_stages"), None
            elif event in ("start", "done"):
                self.step = None
                self.counts = {k: int(v) for k, v in dict(data.get("counts") or {}).items()}
                self.total = int(data.get("total") or self.total or 0) or None
                self.running = max(0, self.running + (1 if event == "start" else -1))
                if event == "done":
                    self._done(data)
            self._refresh()

    def _done(self, data: Mapping[str, Any]) -> None:
        """A finished trial: the best value so far; its line (plain), or a failure's line."""
        value = metric_value(data, self.quality)
        if data.get("status") == "ok" and value is not None:
            better = max if self.direction == "max" else min
            prior = self.best_value
            self.best_value = value if prior is None else better(prior, value)
        if self.plain or data.get("status") != "ok":
            done = self.counts.get("ok", 0) + self.counts.get("failed", 0)
            style = None if data.get("status") == "ok" else "yellow"
            line = trial_line(data, self.quality, self.knobs, done=done, total=self.total)
            self._say(line, style=style)

    def tick(self, now: float | None = None) -> None:
        """What the display's thread does every `TICK_S`: ask the cache what runs (at most
        every `POLL_S`; plain lines: only when a heartbeat is due), then announce a step that
        has run `step_after_s` or write a heartbeat (plain), or redraw the bar."""
        now = self.clock() if now is None else now
        due = not self.plain or now - self.said_at >= self.heartbeat_s
        if self.poll is not None and due and now - self.polled_at >= POLL_S:
            self.polled_at = now
            answer = self.poll()  # a Ray call: outside the lock, events go on meanwhile
            with self.lock:
                self.stages = list(answer.get("stages", []))
                self.sharing = list(answer.get("trials", []))
                self.stage_progress = list(answer.get("progress", []))
                self.queued = int(answer.get("queued", 0))
        with self.lock:
            if not self.plain:
                self._refresh()
            elif self.step is not None and not self.step_said and self._step_due(now):
                self.step_said = True
                self._say(f"{self.step} ...", now=now)
            elif (self.step is None or self.step_said) and now - self.said_at >= self.heartbeat_s:
                self._say(self._heartbeat(now), now=now)

    def _step_due(self, now: float) -> bool:
        return now - self.step_since >= self.step_after_s

    def _tick_until_stopped(self) -> None:
        while not self.stopped.wait(TICK_S):
            self.tick()

    def _heartbeat(self, now: float) -> str:
        """What runs: the step under way and for how long, or the trials' counts, the running
        stages, the best value and the time since the start."""
        if self.step is not None:
            return f"still {self.step} ({duration_text(now - self.step_since)})"
        ok, failed = self.counts.get("ok", 0), self.counts.get("failed", 0)
        best = f"; {self._best()}" if self._best() else ""
        return (
            f"trials {ok + failed}/{self.total or '?'} done (ok {ok}, failed {failed}), "
            f"{self._running()}{best}; "
            f"{duration_text(now - self.started)} elapsed"
        )

    def _running(self) -> str:
        return running_text(
            self.running,
            self.stages,
            self.queued,
            sharing=self.sharing,
            progress=self.stage_progress,
        )

    def _best(self) -> str:
        if self.best_value is None:
            return ""
        return f"best {metric_label(self.quality)} {self.best_value:.4f}"

    def _refresh(self) -> None:
        """The bar's total, count and description: the step under way, or the counts, the
        running trials' stages and the best value."""
        from rich.markup import escape

        if self.step is not None:
            description = escape(self.step) + "..."
        else:
            description = (
                f"ok {self.counts.get('ok', 0)} · failed {self.counts.get('failed', 0)} · "
                f"{escape(self._running())}  {self._best()}"
            )
        self.progress.update(
            self.task_id,
            total=self.total,
            completed=self.counts.get("ok", 0) + self.counts.get("failed", 0),
            description=description,
        )

    def _say(self, text: str, *, now: float | None = None, style: str | None = None) -> None:
        """One plain line, stamped with the wall-clock time (no markup: ids and errors as
        they are)."""
        self.said_at = self.clock() if now is None else now
        self.console.print(
            f"{time.strftime('%H:%M:%S')} {text}",
            style=style, highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip


def heartbeat_from_env() -> float:
    """`SQUEEZERAY_HEARTBEAT_S` (seconds between heartbeat lines; default `HEARTBEAT_S`)."""
    raw = os.environ.get(HEARTBEAT_ENV)
    if raw is None or raw == "":
        return HEARTBEAT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise SqueezerayError(
            f"{HEARTBEAT_ENV}={raw!r} is not a number of seconds; accepted: a positive number "
            f"(default {HEARTBEAT_S:g}), or leave it unset"
        )
    return seconds


def quality_column(space: SearchSpace) -> tuple[str, str]:
    """(column, direction) of the first objective that selects on a validation column
    (`val_accuracy`, a task metric's `val_f1_macro`); `val_accuracy`, max when none does."""
    for column, direction in space.search_objectives():
        if column.startswith(VALIDATION_PREFIX):
            return column, direction
    return "val_accuracy", "max"


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
    """Trials ok, stopped early by the scheduler (its own status: not a failure) and failed
    (by status), wall time, and stage executions vs a naive pipeline (`s`: a SweepSummary)."""
    failed = ", ".join(
        f"{n} {label}"
        for n, label in (
            (s.trials_error, "error"),
            (s.trials_timeout, "timeout"),
            (s.trials_lost, "lost"),
        )
        if n
    )
    stopped = f", {s.trials_stopped} stopped early by the scheduler" if s.trials_stopped else ""
    return (
        f"sweep {s.sweep_id}: {s.trials_ok} ok{stopped}, {s.trials_failed} failed"
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
    if s.points_repeated:
        _print_plain(
            console,
            f"Optuna proposed {s.points_repeated} point(s) already measured (a finished "
            "trial's effective configuration): each was told that trial's result and not run, "
            "no trial budget spent",
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
    if s.code_changed:
        _print_plain(console, s.code_changed, style="yellow")


def _print_plain(console: Console, text: str, *, style: str | None = None) -> None:
    """`text` as it is (no markup, no highlighting), wrapped softly."""
    console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)
