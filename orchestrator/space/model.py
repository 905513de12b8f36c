"""The validated search space as frozen dataclasses, and the rules its methods re-check.

`SearchSpace` (with its `Distribution` knobs, `Objective`s, `Constraint`s, `SearchSettings`
and `LatencySettings`) is what every other part of a sweep reads; it travels to Ray workers
pickled. Building one from YAML is `orchestrator.space.parse` (data) and
`orchestrator.space.config` (files); `with_overrides` re-validates command-line changes here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.space.checks import (
    Collector,
    check_choice,
    check_duration,
    check_int,
    did_you_mean,
    fail,
    fmt_list,
)
from orchestrator.space.metrics import METRICS, resolve_metric, task_metric_pair, unknown_metric
from stages.errors import SqueezerayError

DISTRIBUTION_KINDS: tuple[str, ...] = ("uniform", "loguniform", "int", "choice", "fixed")

ALGORITHMS: tuple[str, ...] = ("optuna", "random", "grid")

SCHEDULERS: tuple[str, ...] = ("none", "asha")

SAMPLERS: tuple[str, ...] = ("tpe", "gp")  # Optuna's TPE, or its Gaussian-process sampler

OPERATORS: tuple[str, ...] = (">=", "<=", "==", ">", "<")


@dataclass(frozen=True)
class Distribution:
    """One knob: searched (uniform, loguniform, int, choice) or fixed (a plain value).

    Ranges are closed: Optuna's float sampling can return `high`, so both ends must be valid.
    """

    kind: str  # one of DISTRIBUTION_KINDS
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None  # for fixed
    step: int | None = None  # for int (optional; None = 1)

    def values_for_validation(self) -> list[Any]:
        """The values that bound what this distribution can produce: the ends of a range (the
        highest reachable one for a stepped int), every choice, or the fixed value."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            low, high, step = int(self.low), int(self.high), self.step or 1
            return [low, low + (high - low) // step * step]
        return [self.low, self.high]

    def describe(self) -> str:
        """Short text as written in YAML, e.g. `uniform [0.0, 0.9]` or `choice ['a', 'b']`."""
        if self.kind == "fixed":
            return f"fixed {self.value!r}"
        if self.kind == "choice":
            return f"choice {fmt_list(self.choices)}"
        text = f"{self.kind} {fmt_list([self.low, self.high])}"
        return f"{text} step {self.step}" if self.step is not None else text


@dataclass(frozen=True)
class Objective:
    name: str  # a metric column (METRICS)
    direction: str  # "max" | "min"


@dataclass(frozen=True)
class Constraint:
    """`column op value`, e.g. val_accuracy >= 0.95; rows meeting every constraint are feasible."""

    column: str  # a metric column (METRICS)
    op: str  # one of OPERATORS
    value: float

    def satisfied(self, value: float) -> bool:
        return self.violation(value) == 0.0

    def violation(self, value: float) -> float:
        """0 when met, else how far off in the column's units (> 0; inf for NaN)."""
        if math.isnan(value):
            return math.inf
        if self.op == "==":
            gap = abs(value - self.value)
            return 0.0 if math.isclose(value, self.value, rel_tol=1e-9, abs_tol=1e-12) else gap
        below = self.value - value  # > 0 when value is under the bound
        if self.op in (">=", "<="):
            off = below if self.op == ">=" else -below
            return max(off, 0.0)
        off = below if self.op == ">" else -below
        # A strict bound that is hit exactly is still missed, by the smallest step.
        return 0.0 if off < 0 else max(off, math.ulp(self.value))

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


@dataclass(frozen=True)
class SearchSettings:
    algorithm: str = "optuna"  # optuna | random | grid
    trials: int = 16
    seed: int = 0
    max_concurrent: int | None = None  # None: stage slots + 1 (see execute_sweep)
    scheduler: str = "none"  # none | asha (early stopping on accuracy after each stage)
    time_budget_s: float | None = None  # from `time_budget: 30m` / `90s` / `2h`
    sampler: str = "tpe"  # optuna only: tpe | gp (Gaussian process; slower to suggest)


@dataclass(frozen=True)
class LatencySettings:
    warmup: int = 50  # untimed calls at most; fewer once they stop getting faster
    repeats: int = 300  # timed calls at most
    batch_size: int = 1
    threads: int = 1
    rounds: int = 7  # interleaved rounds of the final re-measurement; 0: no final phase
    # seconds of timed calls per measurement (`latency.time_cap`): the calls taken are as many
    # as fit, at most `repeats`, at least stages.latency.MIN_REPEATS (latency_repeats_sweep)
    time_cap_s: float = 0.5
    # timing stops sooner once the median's 95% CI is within +-precision of it (a share;
    # `latency.precision`, 0: never): latency_ci_sweep says how precise each row's median is
    precision: float = 0.02


DEFAULT_OBJECTIVES: tuple[Objective, ...] = (
    Objective("val_accuracy", "max"),
    Objective("size_bytes", "min"),
    Objective("latency_ms_sweep", "min"),
)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. `params` maps "stage.param" to its Distribution (searched and
    fixed); every key's stage is in `pipeline` and every value passed the stage's own checks."""

    source: str  # the file path it came from (a packaged space: its installed path)
    task: str  # built-in name or "package.module:callable"
    pipeline: tuple[str, ...]
    objectives: tuple[Objective, ...]
    params: Mapping[str, Distribution]  # a plain dict (it travels to Ray workers pickled)
    search: SearchSettings
    constraints: tuple[Constraint, ...] = ()
    latency: LatencySettings = LatencySettings()
    name: str | None = None
    task_metric: str | None = None  # the task's own metric (stages.Metric.name), once checked

    def search_objectives(self) -> tuple[tuple[str, str], ...]:
        """(column, direction) per objective: what the search optimises. Objectives name
        their column (`val_accuracy`, `val_f1`, `latency_ms_sweep`): see `space.metrics`."""
        return tuple((o.name, o.direction) for o in self.objectives)

    def search_constraints(self) -> tuple[tuple[str, str, float], ...]:
        """(column, op, bound) per constraint: what the search and `feasible` check."""
        return tuple((c.column, c.op, float(c.value)) for c in self.constraints)

    def with_task_metric(self, name: str | None) -> SearchSpace:
        """The space checked against the task's own metric (`name`, None when the task has
        none): every objective and constraint must name a built-in metric or `val_<name>`;
        the bare `name` is refused as ambiguous, as `accuracy` is."""
        allowed = set(METRICS) | (set(task_metric_pair(name)) if name else set())
        errors = Collector()  # every name refused, in one run
        for kind, metric in [("objectives", o.name) for o in self.objectives] + [
            ("constraints", c.column) for c in self.constraints
        ]:
            errors.attempt(self._check_metric, f"{kind}.{metric}", metric, name, allowed,
                           fallback=None)  # fmt: skip
        errors.raise_if_any()
        return dataclasses.replace(self, task_metric=name)

    def _check_metric(self, key: str, metric: str, name: str | None, allowed: set[str]) -> None:
        try:
            resolve_metric(key, metric, purpose="search", task_metric=name)
        except SqueezerayError as exc:
            raise SqueezerayError(f"{self.source}: {exc}") from exc
        if metric not in allowed:
            fail(self.source, key, unknown_metric(metric, name))

    def trial_count(self) -> int:
        """The trials a sweep of this space runs: `search.trials`, or for a grid its distinct
        points (`coherence.grid_points`; `search.trials` does not apply to a grid). Every
        trial total shown (start line, progress bar, progress lines) is this number."""
        if self.search.algorithm != "grid":
            return self.search.trials
        from orchestrator.space.coherence import grid_points

        return len(grid_points(self)[0])

    def _trials_text(self) -> str:
        """ "16 trials", or for a grid the trials it runs and the grid's size
        (`coherence.grid_trials_text`)."""
        if self.search.algorithm != "grid":
            return f"{self.trial_count()} trials"
        from orchestrator.space.coherence import grid_trials_text

        return grid_trials_text(self)

    def searched(self) -> dict[str, Distribution]:
        """The knobs the search samples, "stage.param" -> Distribution."""
        return {k: d for k, d in self.params.items() if d.kind != "fixed"}

    def fixed(self) -> dict[str, Any]:
        """The fixed settings, "stage.param" -> value."""
        return {k: d.value for k, d in self.params.items() if d.kind == "fixed"}

    def stage_params(self, stage: str, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """{param: value} for one stage from the fixed values and a trial's sampled
        "stage.param" values (keys of other stages are ignored); feed it to `make_params`."""
        prefix = f"{stage}."
        merged = {**self.fixed(), **sampled}
        return {k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)}

    def with_overrides(
        self,
        *,
        task: str | None = None,
        trials: int | None = None,
        seed: int | None = None,
        name: str | None = None,
        time_budget_s: float | None = None,
        algorithm: str | None = None,
        check_task: bool = True,
    ) -> SearchSpace:
        """The space with command-line overrides applied and validated (errors name the flag)."""
        search = self.search
        if trials is not None:
            search = dataclasses.replace(
                search, trials=check_int(self.source, "--trials", trials, low=1)
            )
        if seed is not None:
            search = dataclasses.replace(search, seed=check_int(self.source, "--seed", seed, low=0))
        if time_budget_s is not None:
            seconds = check_duration(self.source, "--time-budget", time_budget_s)
            search = dataclasses.replace(search, time_budget_s=seconds)
        if algorithm is not None:
            algo = check_choice(self.source, "--algorithm", algorithm, ALGORITHMS)
            search = dataclasses.replace(search, algorithm=algo)
            check_grid(self.source, algo, self.params, flag="--algorithm")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            fail(self.source, "--name", f"{name!r} is not accepted; accepted: a non-empty string")
        new_task = self.task
        if task is not None:
            new_task = check_task_name(self.source, "--task", task, check_task=check_task)
        space = dataclasses.replace(
            self,
            task=new_task,
            search=search,
            name=self.name if name is None else name,
        )
        if new_task != self.task:
            space = with_known_task_metric(
                dataclasses.replace(space, task_metric=None), check_task=check_task
            )
        return space

    def summary(self) -> str:
        """A few plain-text lines for `squeezeray validate` (no rich markup)."""
        lines = [
            f"search space: {self.name or '(unnamed)'}  ({self.source})",
            f"task:         {self.task}",
            f"pipeline:     {' -> '.join(self.pipeline)}",
            "objectives:   " + ", ".join(f"{o.name} {o.direction}" for o in self.objectives),
            "              (the search chooses on the validation split and the in-sweep "
            "latency; test_* columns and latency_ms_final are reported, never optimised)",
        ]
        s = self.search
        budget = "none" if s.time_budget_s is None else f"{s.time_budget_s:g} s"
        concurrent = "auto" if s.max_concurrent is None else str(s.max_concurrent)
        lines.append(
            f"search:       {s.algorithm}"
            + (f" ({s.sampler})" if s.algorithm == "optuna" else "")
            + f", {self._trials_text()}, seed {s.seed}, scheduler "
            f"{s.scheduler}, max_concurrent {concurrent}, time budget {budget}"
        )
        if self.constraints:
            lines.append(
                "constraints:  "
                + ", ".join(
                    f"{c} (checked on {col})" if col != c.column else str(c)
                    for c, (col, _, _) in zip(
                        self.constraints, self.search_constraints(), strict=True
                    )
                )
            )
        searched = self.searched()
        lines.append(f"searched ({len(searched)}):")
        width = max((len(k) for k in self.params), default=0)
        lines += [f"  {k:<{width}}  {d.describe()}" for k, d in searched.items()]
        fixed = self.fixed()
        lines.append(f"fixed ({len(fixed)}):")
        lines += [f"  {k:<{width}}  {v!r}" for k, v in fixed.items()]
        from orchestrator.space.coherence import coherence_notes

        lines += coherence_notes(self)  # a knob a coherence rule turns off, and why
        lat = self.latency
        stop = f"stop at +-{100 * lat.precision:g}%" if lat.precision else "no early stop"
        final = f"final phase {lat.rounds} rounds" if lat.rounds else "no final phase"
        lines.append(
            f"latency:      warmup {lat.warmup}, repeats {lat.repeats} within "
            f"{lat.time_cap_s:g}s ({stop}), batch {lat.batch_size}, threads {lat.threads}, "
            f"{final}"
        )
        return "\n".join(lines)


def check_grid(
    source: str, algorithm: str, params: Mapping[str, Distribution], *, flag: str
) -> None:
    """A grid enumerates only choices and fixed values: a range names its key and the fix."""
    if algorithm != "grid":
        return
    for key, dist in params.items():
        if dist.kind not in ("choice", "fixed"):
            fail(
                source,
                f"params.{key}",
                f"{dist.describe()} cannot be enumerated by "
                f"{flag}=grid; accepted: {{choice: [...]}} or a plain value with grid (or "
                "algorithm optuna/random for ranges)",
            )


def check_task_name(source: str, key: str, task: str, *, check_task: bool) -> str:
    """Built-in names are checked by name; an import path is imported and checked only when
    `check_task` (it builds the user's data and models)."""
    from stages.tasks import BUILTIN_TASKS, load_task

    if task in BUILTIN_TASKS:
        return task
    if ":" not in task:
        fail(
            source,
            key,
            f"{task!r} is not a built-in task"
            f"{did_you_mean(task, list(BUILTIN_TASKS))}; accepted: "
            f"{', '.join(BUILTIN_TASKS)}, or 'package.module:callable' returning a Task",
        )
    if check_task:
        try:
            load_task(task)
        except SqueezerayError as exc:
            raise SqueezerayError(f"{source}: {key}: {exc}") from exc
        except Exception as exc:  # the user's factory itself failed
            raise SqueezerayError(
                f"{source}: {key}: {task!r} failed to load: {type(exc).__name__}: {exc} "
                "(raised by the task's own code: its factory, datasets or models); accepted: "
                "a zero-argument callable returning a stages.Task"
            ) from exc
    return task


def with_known_task_metric(space: SearchSpace, *, check_task: bool) -> SearchSpace:
    """Check metric names against the task when it is known without importing a user's
    module (built-ins define no metric) or when `check_task` imports it anyway; otherwise
    `prepare_sweep` checks them once it has loaded the task."""
    from stages.tasks import BUILTIN_TASKS, load_task

    if space.task in BUILTIN_TASKS:
        return space.with_task_metric(None)
    if check_task:
        metric = load_task(space.task).metric
        return space.with_task_metric(metric.name if metric is not None else None)
    return space
