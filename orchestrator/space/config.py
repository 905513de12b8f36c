"""Search spaces: the YAML format, parsed into frozen dataclasses and fully validated before Ray
starts (this module never imports ray).

```yaml
name: my-sweep
task: digits                      # built-in name or "package.module:callable"
pipeline: [teacher, distill, prune, finetune, lora, quantize, export]
objectives: {accuracy: max, size_bytes: min, latency_ms: min}
params:                           # "stage.param": a distribution or a plain (fixed) value
  distill.temperature: {choice: [2.0, 4.0, 8.0]}
  prune.ratio: {uniform: [0.0, 0.9]}
  lora.rank: {int: [0, 16], step: 4}
  distill.epochs: 60
search: {algorithm: optuna, trials: 24, seed: 0, scheduler: none, time_budget: 30m}
constraints: {accuracy: ">= 0.95"}
latency: {warmup: 50, repeats: 300, batch_size: 1, threads: 1}
```

Every error is a SqueezerayError naming the file, the key, the bad value and what is accepted.
Stage parameter ranges are not repeated here: every candidate value (both ends of a range, every
choice) is checked by building the stage's own params dataclass (`StageSpec.make_params`).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from stages.errors import SqueezerayError

# The metric columns of the results table (orchestrator.store.schema.METRIC_COLUMNS; kept here as
# plain names so validating a space does not import pyarrow; a test keeps them in sync).
METRICS: tuple[str, ...] = (
    "accuracy",
    "val_accuracy",
    "size_bytes",
    "params_total",
    "params_nonzero",
    "quantized_fraction",
    "latency_ms",
    "latency_ms_p90",
    "latency_ms_sweep",
)
DIRECTIONS: tuple[str, ...] = ("max", "min")
VALIDATION_PREFIX = "val_"
# Metrics whose selection column is not a `val_` twin: latency_ms is re-measured apart for the
# front and the baseline when the sweep ends (so rows differ in how it was taken); every trial
# keeps its in-sweep measurement in latency_ms_sweep, which the search and the front use.
SELECTION_TWINS: dict[str, str] = {"latency_ms": "latency_ms_sweep"}


def selection_column(metric: str, columns: Sequence[str] | None = None) -> str:
    """The column the search, constraints, early stopping and the default front use for `metric`.

    Objectives and constraints name a metric (`accuracy`); when its validation-split column
    (`val_accuracy`) exists (in `columns`, default the results' METRICS) that column selects
    models, and `accuracy` (the test split) is only reported. A metric without a validation
    twin (size_bytes) is its own selection column; latency_ms selects on latency_ms_sweep, the
    in-sweep measurement every trial has (the front's final latency_ms is re-measured apart,
    after the search). Naming `val_accuracy` directly means the same thing.
    """
    known = METRICS if columns is None else columns
    if metric.startswith(VALIDATION_PREFIX):
        return metric
    twin = SELECTION_TWINS.get(metric, VALIDATION_PREFIX + metric)
    return twin if twin in known else metric


DISTRIBUTION_KINDS: tuple[str, ...] = ("uniform", "loguniform", "int", "choice", "fixed")
ALGORITHMS: tuple[str, ...] = ("optuna", "random", "grid")
SCHEDULERS: tuple[str, ...] = ("none", "asha")
SAMPLERS: tuple[str, ...] = ("tpe", "gp")  # Optuna's TPE, or its Gaussian-process sampler
OPERATORS: tuple[str, ...] = (">=", "<=", "==", ">", "<")
TOP_LEVEL_KEYS: tuple[str, ...] = (
    "name",
    "task",
    "pipeline",
    "objectives",
    "params",
    "search",
    "constraints",
    "latency",
)
SEARCH_KEYS: tuple[str, ...] = (
    "algorithm",
    "trials",
    "seed",
    "max_concurrent",
    "scheduler",
    "time_budget",
    "sampler",
)
LATENCY_KEYS: tuple[str, ...] = ("warmup", "repeats", "batch_size", "threads", "rounds")

# Stages that only make sense on a model that some earlier stage made smaller: fine-tuning or
# LoRA straight after the teacher would just retrain the teacher ("lora without a student").
_NEEDS_COMPRESSED: tuple[str, ...] = ("finetune", "lora")
_COMPRESSORS: tuple[str, ...] = ("distill", "prune", "lowrank")

_Scalar = str | int | float | bool


# -- the dataclasses ----------------------------------------------------------------------


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
            return f"choice {_fmt_list(self.choices)}"
        text = f"{self.kind} {_fmt_list([self.low, self.high])}"
        return f"{text} step {self.step}" if self.step is not None else text


@dataclass(frozen=True)
class Objective:
    name: str  # a metric column (METRICS)
    direction: str  # "max" | "min"


@dataclass(frozen=True)
class Constraint:
    """`column op value`, e.g. accuracy >= 0.95; rows that meet every constraint are feasible."""

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
    warmup: int = 50
    repeats: int = 300
    batch_size: int = 1
    threads: int = 1
    rounds: int = 7  # interleaved rounds of the final re-measurement; 0: no final phase


DEFAULT_OBJECTIVES: tuple[Objective, ...] = (
    Objective("accuracy", "max"),
    Objective("size_bytes", "min"),
    Objective("latency_ms", "min"),
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

    def _metric_columns(self) -> tuple[str, ...]:
        own = self.task_metric
        return METRICS + ((own, VALIDATION_PREFIX + own) if own else ())

    def search_objectives(self) -> tuple[tuple[str, str], ...]:
        """(selection column, direction) per objective: what the search optimises (validation
        columns, a task metric's too: `f1` -> `val_f1`; see `selection_column`)."""
        columns = self._metric_columns()
        return tuple((selection_column(o.name, columns), o.direction) for o in self.objectives)

    def search_constraints(self) -> tuple[tuple[str, str, float], ...]:
        """(selection column, op, bound) per constraint: what the search and `feasible` check."""
        columns = self._metric_columns()
        return tuple(
            (selection_column(c.column, columns), c.op, float(c.value)) for c in self.constraints
        )

    def with_task_metric(self, name: str | None) -> SearchSpace:
        """The space checked against the task's own metric (`name`, None when the task has
        none): every objective and constraint must name a built-in metric, `name` or
        `val_<name>`; the search then selects on `val_<name>`."""
        allowed = set(METRICS) | ({name, VALIDATION_PREFIX + name} if name else set())
        for kind, metric in [("objectives", o.name) for o in self.objectives] + [
            ("constraints", c.column) for c in self.constraints
        ]:
            if metric not in allowed:
                _fail(self.source, f"{kind}.{metric}", _unknown_metric(metric, name))
        return dataclasses.replace(self, task_metric=name)

    def _trials_text(self) -> str:
        """ "16 trials", or for a grid the trials it runs (one per distinct effective
        configuration) and the grid's size."""
        if self.search.algorithm != "grid":
            return f"{self.search.trials} trials"
        from orchestrator.space.coherence import grid_points

        points, total = grid_points(self)
        return f"{len(points)} trials" + ("" if len(points) == total else f" (grid of {total})")

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
                search, trials=_check_int(self.source, "--trials", trials, low=1)
            )
        if seed is not None:
            search = dataclasses.replace(
                search, seed=_check_int(self.source, "--seed", seed, low=0)
            )
        if time_budget_s is not None:
            if isinstance(time_budget_s, bool) or not isinstance(time_budget_s, int | float):
                _fail(self.source, "--time-budget", f"{time_budget_s!r} is not a number of seconds")
            if not math.isfinite(time_budget_s) or time_budget_s <= 0:
                _fail(
                    self.source,
                    "--time-budget",
                    f"{time_budget_s!r} s is out of range; accepted: a duration > 0",
                )
            search = dataclasses.replace(search, time_budget_s=float(time_budget_s))
        if algorithm is not None:
            algo = _check_choice(self.source, "--algorithm", algorithm, ALGORITHMS)
            search = dataclasses.replace(search, algorithm=algo)
            _check_grid(self.source, algo, self.params, flag="--algorithm")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            _fail(self.source, "--name", f"{name!r} is not accepted; accepted: a non-empty string")
        new_task = self.task
        if task is not None:
            new_task = _check_task_name(self.source, "--task", task, check_task=check_task)
        space = dataclasses.replace(
            self,
            task=new_task,
            search=search,
            name=self.name if name is None else name,
        )
        if new_task != self.task:
            space = _with_known_task_metric(
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
            "selected on:  "
            + ", ".join(column for column, _ in self.search_objectives())
            + " (accuracy on the validation split, latency as measured in the sweep; the test"
            " accuracy and the final latency are reported, never optimised)",
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
        lat = self.latency
        lines.append(
            f"latency:      warmup {lat.warmup}, repeats {lat.repeats}, batch {lat.batch_size}, "
            f"threads {lat.threads}"
        )
        return "\n".join(lines)


# -- loading ------------------------------------------------------------------------------


def packaged_space_path(name: str) -> Path:
    """The installed path of a packaged space: "quick" or "quick.yaml" -> .../quick.yaml."""
    import search_spaces

    folder = Path(search_spaces.__file__).parent
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = folder / f"{stem}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SqueezerayError(
            f"search space {name!r} is not a packaged space{_did_you_mean(stem, known)}; "
            f"accepted: {', '.join(known)}, or a path to a YAML file"
        )
    return path


def load_space(path: str | Path | None = None, *, check_task: bool = True) -> SearchSpace:
    """Read and validate a search space.

    None -> the packaged default.yaml; a bare name without a suffix or directory ("quick")
    -> the packaged search_spaces/quick.yaml; anything else is a file path.
    `check_task=False` skips importing and checking the task (it builds the data).
    """
    if path is None:
        file = packaged_space_path("default")
    elif isinstance(path, str) and _is_bare_name(path) and not Path(path).exists():
        file = packaged_space_path(path)
    else:
        file = Path(path)
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SqueezerayError(
            f"{source}: no such file; accepted: a path to a YAML file or a packaged space name "
            f"({', '.join(_packaged_names())})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SqueezerayError(f"{source}: cannot read the file ({exc})") from exc
    return parse_space_text(text, source=source, check_task=check_task)


def parse_space_text(text: str, *, source: str, check_task: bool = True) -> SearchSpace:
    """Validate a search space given as YAML text; errors name `source` (its file)."""
    return parse_space(_load_yaml(text, source=source), source=source, check_task=check_task)


def space_text(space: SearchSpace) -> str | None:
    """The YAML text `space` was read from, or None when its file is gone or no longer reads
    as the same space (edited, or a space built in Python). A sweep manifest stores it, so
    `--resume` runs the space that was started whatever happens to the file later."""
    try:
        text = Path(space.source).read_text(encoding="utf-8")
        again = parse_space_text(text, source=space.source, check_task=False)
    except (OSError, UnicodeDecodeError, SqueezerayError):
        return None
    same = ("task", "pipeline", "objectives", "params", "search", "constraints", "latency")
    if any(getattr(again, k) != getattr(space, k) for k in same):
        return None
    return text


def parse_space(data: Mapping[str, Any], *, source: str, check_task: bool = True) -> SearchSpace:
    """Validate already-loaded YAML data (cheap checks first, the task import last)."""
    if data is None:
        _fail(
            source,
            "(top level)",
            "the file is empty; accepted: a mapping with keys " + ", ".join(TOP_LEVEL_KEYS),
        )
    if not isinstance(data, Mapping):
        _fail(
            source,
            "(top level)",
            f"{_short(data)} is a {type(data).__name__}; accepted: a mapping with keys "
            + ", ".join(TOP_LEVEL_KEYS),
        )
    _check_keys(source, "", data, TOP_LEVEL_KEYS)
    for required in ("task", "pipeline"):
        if data.get(required) is None:
            _fail(
                source,
                required,
                f"missing; it is required (accepted keys: {', '.join(TOP_LEVEL_KEYS)})",
            )

    name = data.get("name")
    if name is not None and (not isinstance(name, str | int) or not str(name).strip()):
        _fail(source, "name", f"{_short(name)} is not accepted; accepted: a non-empty string")
    task = data["task"]
    if not isinstance(task, str) or not task.strip():
        _fail(
            source,
            "task",
            f"{_short(task)} is not accepted; accepted: a built-in task name "
            "or 'package.module:callable'",
        )
    pipeline = _parse_pipeline(source, data["pipeline"])
    objectives = _parse_objectives(source, data.get("objectives"))
    raw_params = _parse_params(source, data.get("params"), pipeline)
    search = _parse_search(source, data.get("search"))
    constraints = _parse_constraints(source, data.get("constraints"))
    latency = _parse_latency(source, data.get("latency"))

    params = _validate_stage_params(source, pipeline, raw_params)
    _check_grid(source, search.algorithm, params, flag="search.algorithm")
    task = _check_task_name(source, "task", task.strip(), check_task=check_task)
    space = SearchSpace(
        source=source,
        task=task,
        pipeline=pipeline,
        objectives=objectives,
        params=params,
        search=search,
        constraints=constraints,
        latency=latency,
        name=None if name is None else str(name),
    )
    return _with_known_task_metric(space, check_task=check_task)


def _with_known_task_metric(space: SearchSpace, *, check_task: bool) -> SearchSpace:
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


def parse_duration(text: str | float) -> float:
    """ "30m", "90s", "2h", "1h30m", "1.5h", "1d" or a plain number of seconds -> seconds (> 0)."""
    accepted = "a duration > 0 such as 90s, 30m, 2h, 1h30m (or a number of seconds)"
    if isinstance(text, bool):
        raise SqueezerayError(f"{text!r} is not a duration; accepted: {accepted}")
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        cleaned = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", cleaned):
            seconds = float(cleaned)
        elif re.fullmatch(r"(\d+(\.\d+)?[dhms])+", cleaned):
            units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
            parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", cleaned)
            if len({unit for _, unit in parts}) != len(parts):
                raise SqueezerayError(f"{text!r} repeats a unit; accepted: {accepted}")
            seconds = sum(float(n) * units[u] for n, u in parts)
        else:
            raise SqueezerayError(f"{text!r} is not a duration; accepted: {accepted}")
    else:
        raise SqueezerayError(f"{text!r} is not a duration; accepted: {accepted}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise SqueezerayError(f"{text!r} is out of range; accepted: {accepted}")
    return seconds


# -- YAML ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML keeps the last one silently) and reads
    `1e-3` as a float (YAML 1.1 wants a dot: `1.0e-3`)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (YAML would keep only the last one)",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str, *, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "malformed YAML"
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        hint = ""
        if re.search(r":\s*[<>]=?", line):
            hint = '; quote constraint values, e.g. accuracy: ">= 0.95"'
        snippet = f" (line: {line.strip()!r})" if line.strip() else ""
        raise SqueezerayError(f"{where}: malformed YAML: {problem}{snippet}{hint}") from exc
    except yaml.YAMLError as exc:
        raise SqueezerayError(f"{source}: malformed YAML: {exc}") from exc


# -- sections -----------------------------------------------------------------------------


def _parse_pipeline(source: str, raw: Any) -> tuple[str, ...]:
    from stages import PIPELINE_ORDER

    order = " -> ".join(PIPELINE_ORDER)
    if isinstance(raw, str):
        raw = [raw] if "," not in raw else [s.strip() for s in raw.split(",")]
    if not isinstance(raw, list) or not raw:
        _fail(
            source,
            "pipeline",
            f"{_short(raw)} is not accepted; accepted: a non-empty list "
            f"of stages in this order: {order}",
        )
    for item in raw:
        if not isinstance(item, str) or item not in PIPELINE_ORDER:
            _fail(
                source,
                "pipeline",
                f"{_short(item)} is not a stage{_did_you_mean(item, PIPELINE_ORDER)}; "
                f"accepted: {', '.join(PIPELINE_ORDER)}",
            )
    stages = tuple(raw)
    shown = _fmt_list(stages)
    dupes = sorted({s for s in stages if stages.count(s) > 1})
    if dupes:
        _fail(
            source,
            "pipeline",
            f"{shown} lists {dupes[0]!r} twice; accepted: each stage "
            f"at most once, in this order: {order}",
        )
    if stages[0] != "teacher":
        _fail(
            source,
            "pipeline",
            f"{shown} does not start with 'teacher': {stages[0]!r} has no model to work on; "
            f"accepted: a pipeline starting with teacher, in this order: {order}",
        )
    for before, after in itertools.pairwise(stages):
        if PIPELINE_ORDER.index(after) < PIPELINE_ORDER.index(before):
            _fail(
                source,
                "pipeline",
                f"{shown} puts {after!r} after {before!r}; accepted: stages in this order: {order}",
            )
    for i, stage in enumerate(stages):
        if stage in _NEEDS_COMPRESSED and not any(s in _COMPRESSORS for s in stages[:i]):
            _fail(
                source,
                "pipeline",
                f"{shown}: {stage!r} has no student or compressed model to work on (it would "
                f"only retrain the teacher); accepted: one of {', '.join(_COMPRESSORS)} before "
                f"{stage}",
            )
    return stages


def _parse_objectives(source: str, raw: Any) -> tuple[Objective, ...]:
    if raw is None:
        return DEFAULT_OBJECTIVES
    if not isinstance(raw, Mapping) or not raw:
        _fail(
            source,
            "objectives",
            f"{_short(raw)} is not accepted; accepted: a mapping "
            "{metric: max|min}, e.g. {accuracy: max, size_bytes: min}",
        )
    objectives: list[Objective] = []
    for metric, direction in raw.items():
        key = f"objectives.{metric}"
        _check_metric(source, key, metric)
        if direction not in DIRECTIONS:
            _fail(
                source,
                key,
                f"{_short(direction)} is not a direction"
                f"{_did_you_mean(str(direction), DIRECTIONS)}; accepted: max, min",
            )
        chosen = selection_column(str(metric))
        twin = next((o.name for o in objectives if selection_column(o.name) == chosen), None)
        if twin is not None:
            _fail(
                source,
                key,
                f"{metric!r} and {twin!r} are one objective (the search uses {chosen!r}, the "
                "validation split, for both); accepted: name it once",
            )
        objectives.append(Objective(str(metric), str(direction)))
    return tuple(objectives)


def _parse_params(source: str, raw: Any, pipeline: tuple[str, ...]) -> dict[str, Distribution]:
    from stages import PIPELINE_ORDER

    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        _fail(
            source,
            "params",
            f"{_short(raw)} is not accepted; accepted: a mapping "
            "{stage.param: distribution or value}",
        )
    params: dict[str, Distribution] = {}
    for key, spec in raw.items():
        full = f"params.{key}"
        if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
            _fail(
                source,
                f"params.{key}",
                f"{key!r} is not a key; accepted: 'stage.param', e.g. prune.ratio",
            )
        stage = key.split(".")[0]
        if stage not in PIPELINE_ORDER:
            _fail(
                source,
                full,
                f"{stage!r} is not a stage{_did_you_mean(stage, PIPELINE_ORDER)};"
                f" accepted: {', '.join(PIPELINE_ORDER)}",
            )
        if stage not in pipeline:
            _fail(
                source,
                full,
                f"stage {stage!r} is not in the pipeline {_fmt_list(pipeline)}; "
                f"accepted: add {stage} to the pipeline or remove the key",
            )
        params[key] = _parse_distribution(source, full, spec)
    return params


_ACCEPTED_DISTRIBUTIONS = (
    "{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} (optional "
    "step: k), {choice: [a, b, ...]}, or a plain value"
)


def _parse_distribution(source: str, key: str, raw: Any) -> Distribution:
    """One `params` entry: a plain value (fixed) or a one-kind mapping (`choice`, a range,
    `fixed`); SqueezerayError names the file, the key, the value and what is accepted."""
    accepted = _ACCEPTED_DISTRIBUTIONS
    if raw is None:
        _fail(source, key, f"has no value; accepted: {accepted}")
    if isinstance(raw, list):
        _fail(
            source,
            key,
            f"{_short(raw)} is a list; to search it write {{choice: "
            f"{_fmt_list(raw)}}}; accepted: {accepted}",
        )
    if not isinstance(raw, Mapping):
        return _parse_plain_value(source, key, raw)
    kind = _distribution_kind(source, key, raw)
    arg = raw[kind]
    if kind == "fixed":
        if isinstance(arg, Mapping | list):
            _fail(
                source,
                key,
                f"fixed {_short(arg)} is not a plain value; accepted: a number, string or boolean",
            )
        return _parse_distribution(source, key, arg)
    if kind == "choice":
        return _parse_choice(source, key, arg)
    return _parse_range(source, key, kind, raw)


def _parse_plain_value(source: str, key: str, raw: Any) -> Distribution:
    """A knob fixed to one number, string or boolean."""
    if not isinstance(raw, _Scalar):
        _fail(source, key, f"{_short(raw)} is not accepted; accepted: {_ACCEPTED_DISTRIBUTIONS}")
    if isinstance(raw, float) and not math.isfinite(raw):
        _fail(
            source,
            key,
            f"{raw!r} is not a finite number; accepted: {_ACCEPTED_DISTRIBUTIONS}",
        )
    return Distribution("fixed", value=raw)


def _distribution_kind(source: str, key: str, raw: Mapping[str, Any]) -> str:
    """The one distribution kind a mapping names (`step` aside, and only with `int`)."""
    kinds = [k for k in raw if k != "step"]
    if len(kinds) != 1:
        _fail(
            source,
            key,
            f"{_short(dict(raw))} is not a distribution (one kind per key); "
            f"accepted: {_ACCEPTED_DISTRIBUTIONS}",
        )
    kind = kinds[0]
    if kind not in DISTRIBUTION_KINDS:
        _fail(
            source,
            key,
            f"{kind!r} is not a distribution"
            f"{_did_you_mean(str(kind), DISTRIBUTION_KINDS)}; accepted: {_ACCEPTED_DISTRIBUTIONS}",
        )
    if "step" in raw and kind != "int":
        _fail(
            source,
            key,
            f"step={raw['step']!r} is only accepted with int; accepted: "
            "{int: [low, high], step: k}",
        )
    return str(kind)


def _parse_choice(source: str, key: str, arg: Any) -> Distribution:
    """`{choice: [a, b, ...]}`: a non-empty list of distinct finite scalars."""
    if not isinstance(arg, list) or not arg:
        _fail(
            source,
            key,
            f"choice {_short(arg)} is not accepted; accepted: a non-empty "
            "list, e.g. {choice: [1, 2, 4]}",
        )
    for item in arg:
        if not isinstance(item, _Scalar) or (isinstance(item, float) and not math.isfinite(item)):
            _fail(
                source,
                key,
                f"choice {_short(arg)}: {_short(item)} is not accepted; "
                "accepted: finite numbers, strings or booleans",
            )
    if len(set(map(_value_key, arg))) != len(arg):
        _fail(source, key, f"choice {_fmt_list(arg)} repeats a value; accepted: distinct values")
    return Distribution("choice", choices=tuple(arg))


def _parse_range(source: str, key: str, kind: str, raw: Mapping[str, Any]) -> Distribution:
    """`{uniform|loguniform|int: [low, high]}` (int with an optional `step`)."""
    shown = f"{kind} {_short(raw[kind])}"
    low, high = _range_bounds(source, key, kind, raw[kind], shown)
    step = None
    if "step" in raw:
        step = raw["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            _fail(source, key, f"{shown} step {step!r}: is not accepted; accepted: an integer >= 1")
        if (high - low) % step:
            _fail(
                source,
                key,
                f"{shown} step {step}: {high} - {low} is not a multiple of "
                f"{step}; accepted: high - low divisible by step",
            )
    if kind == "int":
        return Distribution("int", low=low, high=high, step=step)
    return Distribution(kind, low=float(low), high=float(high))


def _range_bounds(source: str, key: str, kind: str, arg: Any, shown: str) -> tuple[Any, Any]:
    """A range's `[low, high]`: two finite numbers (integers for `int`), low < high, and
    low > 0 for `loguniform`."""
    if not isinstance(arg, list) or len(arg) != 2:
        _fail(
            source,
            key,
            f"{shown} is not accepted; accepted: a list of two numbers "
            f"[low, high], e.g. {{{kind}: [1, 8]}}",
        )
    for bound in arg:
        if (
            isinstance(bound, bool)
            or not isinstance(bound, int | float)
            or not math.isfinite(bound)
        ):
            _fail(
                source,
                key,
                f"{shown}: {_short(bound)} is not a finite number; accepted: "
                "[low, high] with numbers",
            )
        if kind == "int" and not isinstance(bound, int):
            _fail(
                source,
                key,
                f"{shown}: {bound!r} is not an integer; accepted: {{int: "
                "[low, high]} with integers (use uniform for a float range)",
            )
    low, high = arg
    if low >= high:
        _fail(
            source,
            key,
            f"{shown}: low {low!r} >= high {high!r}; accepted: low < high (write "
            f"a plain value to fix the knob)",
        )
    if kind == "loguniform" and low <= 0:
        _fail(source, key, f"{shown}: low {low!r} <= 0; accepted: loguniform needs 0 < low < high")
    return low, high


def _validate_stage_params(
    source: str, pipeline: tuple[str, ...], params: dict[str, Distribution]
) -> dict[str, Distribution]:
    """Check every key and candidate value against the stage's own params dataclass; float
    params get float values (so 4 and 4.0 give one stage-cache key)."""
    from stages import get_stage

    out: dict[str, Distribution] = {}
    for stage in pipeline:
        spec = get_stage(stage)
        names = spec.param_names()
        hints = _field_types(spec.params)
        mine = {k: d for k, d in params.items() if k.split(".")[0] == stage}
        for key, dist in mine.items():
            param = key.split(".")[1]
            if param not in names:
                _fail(
                    source,
                    f"params.{key}",
                    f"{param!r} is not a parameter of stage "
                    f"{stage!r}{_did_you_mean(param, names, prefix=stage + '.')}; accepted: "
                    + ", ".join(f"{stage}.{n}" for n in names),
                )
            if hints.get(param) is int and dist.kind in ("uniform", "loguniform"):
                _fail(
                    source,
                    f"params.{key}",
                    f"{dist.describe()}: {key} is an integer parameter; accepted: "
                    "{int: [low, high]} or a choice of integers",
                )
        fixed = {k.split(".")[1]: d.value for k, d in mine.items() if d.kind == "fixed"}
        # Fixed values one at a time (so an error names the right key), then every candidate
        # value of a searched knob together with all the fixed ones.
        for key, dist in mine.items():
            param = key.split(".")[1]
            base = fixed if dist.kind != "fixed" else {}
            shown = f"{dist.describe()}: " if dist.kind != "fixed" else ""
            for value in dist.values_for_validation():
                _make_params(source, f"params.{key}", spec, {**base, param: value}, shown)
        _make_params(source, f"params.{stage}.*", spec, fixed, "")
        out.update(
            {
                k: _as_float_values(d) if hints.get(k.split(".")[1]) is float else d
                for k, d in mine.items()
            }
        )
    return {k: out[k] for k in params}  # the YAML's order


def _field_types(params_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(params_cls)
    except Exception:  # unresolvable annotations: no coercion, make_params still checks
        return {}


def _make_params(source: str, key: str, spec: Any, values: dict[str, Any], shown: str) -> None:
    """Build the stage's params dataclass; its own range checks are the single source of truth."""
    try:
        spec.make_params(values)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{source}: {key}: {shown}{exc}") from exc
    except (TypeError, ValueError) as exc:  # a check that did not raise our error type
        raise SqueezerayError(
            f"{source}: {key}: {shown}{values!r} is not accepted by stage {spec.name!r}: {exc}"
        ) from exc


def _as_float_values(dist: Distribution) -> Distribution:
    """Ints given for a float param become floats (4 and 4.0 must give one stage-cache key)."""

    def as_float(v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    if dist.kind == "fixed":
        return dataclasses.replace(dist, value=as_float(dist.value))
    if dist.kind == "choice":
        return dataclasses.replace(dist, choices=tuple(as_float(v) for v in dist.choices))
    return dist


def _parse_search(source: str, raw: Any) -> SearchSettings:
    if raw is None:
        return SearchSettings()
    _check_section(source, "search", raw, SEARCH_KEYS)
    defaults = SearchSettings()
    algorithm = _check_choice(
        source, "search.algorithm", raw.get("algorithm", "optuna"), ALGORITHMS
    )
    trials = _check_int(source, "search.trials", raw.get("trials", defaults.trials), low=1)
    seed = _check_int(source, "search.seed", raw.get("seed", defaults.seed), low=0)
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _check_int(source, "search.max_concurrent", max_concurrent, low=1)
    scheduler = raw.get("scheduler", "none")
    scheduler = _check_choice(
        source, "search.scheduler", "none" if scheduler is None else scheduler, SCHEDULERS
    )
    sampler = raw.get("sampler")
    sampler = _check_choice(
        source, "search.sampler", "tpe" if sampler is None else sampler, SAMPLERS
    )
    budget = raw.get("time_budget")
    budget_s = None
    if budget is not None:
        try:
            budget_s = parse_duration(budget)
        except SqueezerayError as exc:
            raise SqueezerayError(f"{source}: search.time_budget: {exc}") from exc
    return SearchSettings(
        algorithm=algorithm,
        trials=trials,
        seed=seed,
        max_concurrent=max_concurrent,
        scheduler=scheduler,
        time_budget_s=budget_s,
        sampler=sampler,
    )


_CONSTRAINT_RE = re.compile(
    r"^\s*(>=|<=|==|>|<)\s*([-+]?[0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][-+]?"
    r"[0-9]+)?|[-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$"
)


def _parse_constraints(source: str, raw: Any) -> tuple[Constraint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        _fail(
            source,
            "constraints",
            f"{_short(raw)} is not accepted; accepted: a mapping "
            '{metric: "OP number"}, e.g. {accuracy: ">= 0.95"}',
        )
    constraints = []
    for metric, text in raw.items():
        key = f"constraints.{metric}"
        _check_metric(source, key, metric)
        match = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        if match is None:
            _fail(
                source,
                key,
                f"{_short(text)} is not a constraint; accepted: a quoted string "
                f'"OP number" with OP one of {", ".join(OPERATORS)}, e.g. ">= 0.95"',
            )
        constraints.append(Constraint(str(metric), match.group(1), float(match.group(2))))
    return tuple(constraints)


def _parse_latency(source: str, raw: Any) -> LatencySettings:
    if raw is None:
        return LatencySettings()
    _check_section(source, "latency", raw, LATENCY_KEYS)
    d = LatencySettings()
    return LatencySettings(
        warmup=_check_int(source, "latency.warmup", raw.get("warmup", d.warmup), low=0),
        repeats=_check_int(source, "latency.repeats", raw.get("repeats", d.repeats), low=1),
        batch_size=_check_int(
            source, "latency.batch_size", raw.get("batch_size", d.batch_size), low=1
        ),
        threads=_check_int(source, "latency.threads", raw.get("threads", d.threads), low=1),
        rounds=_check_int(source, "latency.rounds", raw.get("rounds", d.rounds), low=0),
    )


def _check_grid(
    source: str, algorithm: str, params: Mapping[str, Distribution], *, flag: str
) -> None:
    if algorithm != "grid":
        return
    for key, dist in params.items():
        if dist.kind not in ("choice", "fixed"):
            _fail(
                source,
                f"params.{key}",
                f"{dist.describe()} cannot be enumerated by "
                f"{flag}=grid; accepted: {{choice: [...]}} or a plain value with grid (or "
                "algorithm optuna/random for ranges)",
            )


def check_stages_apply_to_task(space: SearchSpace) -> None:
    """Refuse a stage that cannot change the space's task model at all (lora/lowrank with no
    layer to wrap, dynamic_int8 with no Linear), before Ray starts: the error names the file,
    the stage, the value and the fix. Imports the task and builds its model."""
    from stages.precheck import check_stages_apply
    from stages.tasks import load_task

    values = {key: dist.values_for_validation() for key, dist in space.params.items()}
    try:
        check_stages_apply(load_task(space.task), space.pipeline, values)
    except SqueezerayError as exc:
        raise SqueezerayError(f"{space.source}: {exc}") from exc


def _check_task_name(source: str, key: str, task: str, *, check_task: bool) -> str:
    """Built-in names are checked by name; an import path is imported and checked only when
    `check_task` (it builds the user's data and models)."""
    from stages.tasks import BUILTIN_TASKS, load_task

    if task in BUILTIN_TASKS:
        return task
    if ":" not in task:
        _fail(
            source,
            key,
            f"{task!r} is not a built-in task"
            f"{_did_you_mean(task, list(BUILTIN_TASKS))}; accepted: "
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


# -- small helpers ------------------------------------------------------------------------


def _check_section(source: str, name: str, raw: Any, keys: Sequence[str]) -> None:
    """A top-level section must be a mapping whose keys are all known."""
    if not isinstance(raw, Mapping):
        _fail(
            source,
            name,
            f"{_short(raw)} is not accepted; accepted: a mapping with keys " + ", ".join(keys),
        )
    _check_keys(source, f"{name}.", raw, keys)


def _check_metric(source: str, key: str, metric: Any) -> None:
    """A built-in metric, or a name a task metric could have (checked against the task by
    `SearchSpace.with_task_metric` once the task is loaded)."""
    if metric not in METRICS and not (
        isinstance(metric, str) and _TASK_METRIC_NAME.fullmatch(metric)
    ):
        _fail(source, key, _unknown_metric(metric, None))


_TASK_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,66}")


def _unknown_metric(metric: Any, task_metric: str | None) -> str:
    own = (
        f", or the task's own metric {task_metric!r} (and val_{task_metric})"
        if task_metric
        else ", or a metric the task defines (Task(metric=stages.Metric(...)))"
    )
    return (
        f"{metric!r} is not a metric{_did_you_mean(str(metric), METRICS)};"
        f" accepted: {', '.join(METRICS)}{own}"
    )


def _fail(source: str, key: str, message: str) -> NoReturn:
    raise SqueezerayError(f"{source}: {key}: {message}")


def _check_keys(source: str, prefix: str, raw: Mapping[Any, Any], known: Sequence[str]) -> None:
    for key in raw:
        if key not in known:
            _fail(
                source,
                f"{prefix}{key}",
                f"{str(key)!r} is not a known key"
                f"{_did_you_mean(str(key), known, prefix=prefix)}; accepted: "
                + ", ".join(f"{prefix}{k}" for k in known),
            )


def _check_int(source: str, key: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(source, key, f"{_short(value)} is not an integer; accepted: an integer >= {low}")
    if value < low:
        _fail(source, key, f"{value!r} is out of range; accepted: an integer >= {low}")
    return value


def _check_choice(source: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        _fail(
            source,
            key,
            f"{_short(value)} is not accepted"
            f"{_did_you_mean(str(value), choices)}; accepted: {', '.join(choices)}",
        )
    return str(value)


def _did_you_mean(word: str, options: Sequence[str], *, prefix: str = "") -> str:
    hint = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {prefix}{hint[0]}?)" if hint else ""


def _fmt_list(values: Sequence[Any]) -> str:
    """[a, b] as reprs (quoted strings), so rich never reads it as a markup tag."""
    return "[" + ", ".join(repr(v) for v in values) + "]"


def _short(value: Any, limit: int = 80) -> str:
    text = _fmt_list(value) if isinstance(value, list | tuple) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value_key(value: Any) -> tuple[bool, Any]:
    # True == 1 in Python, but they are different choices; 1 and 1.0 are the same one.
    return (isinstance(value, bool), value)


def _is_bare_name(path: str) -> bool:
    return "/" not in path and "\\" not in path and not path.endswith((".yaml", ".yml"))


def _packaged_names() -> list[str]:
    import search_spaces

    return sorted(p.stem for p in Path(search_spaces.__file__).parent.glob("*.yaml"))
