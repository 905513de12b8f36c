"""Loaded YAML data -> a validated `SearchSpace` (cheap checks first, the task import last).

Each section has its parser here (pipeline, objectives, search, constraints, latency); the
`params` section is `orchestrator.space.params`. Errors name the file, the key, the value and
what is accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Mapping
from typing import Any

from orchestrator.space.checks import (
    Collector,
    SpaceErrors,
    check_choice,
    check_duration,
    check_int,
    check_keys,
    check_section,
    check_share,
    did_you_mean,
    fail,
    fmt_list,
    short,
)
from orchestrator.space.metrics import DIRECTIONS, check_metric
from orchestrator.space.model import (
    ALGORITHMS,
    DEFAULT_OBJECTIVES,
    OPERATORS,
    SAMPLERS,
    SCHEDULERS,
    Constraint,
    Distribution,
    LatencySettings,
    Objective,
    SearchSettings,
    SearchSpace,
    check_grid,
    check_task_name,
    with_known_task_metric,
)
from orchestrator.space.params import collect_params, validate_stage_params
from stages.errors import SqueezerayError

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

LATENCY_KEYS: tuple[str, ...] = (
    "warmup",
    "repeats",
    "batch_size",
    "threads",
    "rounds",
    "time_cap",
    "precision",
)


# Stages that only make sense on a model that some earlier stage made smaller: fine-tuning or
# LoRA straight after the teacher would just retrain the teacher ("lora without a student").
_NEEDS_COMPRESSED: tuple[str, ...] = ("finetune", "lora")

_COMPRESSORS: tuple[str, ...] = ("distill", "prune", "lowrank")


def parse_space(data: Mapping[str, Any], *, source: str, check_task: bool = True) -> SearchSpace:
    """Validate already-loaded YAML data (cheap checks first, the task import last).

    Every section is checked even after another one failed: SpaceErrors (a SqueezerayError)
    lists every problem found, each with the file, the key, the value and what is accepted.
    The task is imported only when nothing else is wrong."""
    _check_top_level(source, data)
    errors = Collector()
    errors.attempt(check_keys, source, "", data, TOP_LEVEL_KEYS, fallback=None)
    for required in ("task", "pipeline"):
        if data.get(required) is None:
            errors.attempt(fail, source, required, _MISSING, fallback=None)
    name = errors.attempt(_parse_name, source, data.get("name"), fallback=None)
    task = errors.attempt(_parse_task_text, source, data.get("task"), fallback="")
    pipeline = None
    if data.get("pipeline") is not None:
        pipeline = errors.attempt(_parse_pipeline, source, data["pipeline"], fallback=None)
    # A pipeline that failed its checks still names stages: their params are checked too.
    listed = pipeline if pipeline is not None else _listed_stages(data.get("pipeline"))
    space = SearchSpace(
        source=source,
        task=task,
        pipeline=pipeline or (),
        objectives=errors.attempt(
            _parse_objectives, source, data.get("objectives"), fallback=DEFAULT_OBJECTIVES
        ),
        params=_parse_all_params(errors, source, data.get("params"), listed),
        search=errors.attempt(_parse_search, source, data.get("search"), fallback=SearchSettings()),
        constraints=errors.attempt(
            _parse_constraints, source, data.get("constraints"), fallback=()
        ),
        latency=errors.attempt(
            _parse_latency, source, data.get("latency"), fallback=LatencySettings()
        ),
        name=None if name is None else str(name),
    )
    errors.attempt(check_grid, source, space.search.algorithm, space.params,
                   flag="search.algorithm", fallback=None)  # fmt: skip
    # A built-in task name (or a name that is neither built in nor an import path) is checked
    # with the rest; a user's module is imported only once nothing else is wrong.
    cheap = bool(task) and ":" not in task
    if cheap:
        space = errors.attempt(_with_task, space, check_task=check_task, fallback=space)
    errors.raise_if_any()
    return space if cheap else _with_task(space, check_task=check_task)


def _with_task(space: SearchSpace, *, check_task: bool) -> SearchSpace:
    """The space with its task name checked and its metric names checked against the task."""
    task = check_task_name(space.source, "task", space.task, check_task=check_task)
    return with_known_task_metric(dataclasses.replace(space, task=task), check_task=check_task)


def _listed_stages(raw: Any) -> tuple[str, ...] | None:
    """The stages a pipeline that failed its checks lists, when every item is a stage (its
    order, duplicates or a missing teacher were wrong), else None."""
    from stages import PIPELINE_ORDER

    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",")]
    if not isinstance(raw, list):
        return None
    if not all(isinstance(s, str) and s in PIPELINE_ORDER for s in raw):
        return None  # a misspelt stage: which keys belong is unknown (each key is still checked)
    return tuple(s for s in PIPELINE_ORDER if s in raw) or None


_MISSING = f"missing; it is required (accepted keys: {', '.join(TOP_LEVEL_KEYS)})"


def _check_top_level(source: str, data: Any) -> None:
    """The file holds a mapping (nothing else can be checked when it does not)."""
    if data is None:
        fail(
            source,
            "(top level)",
            "the file is empty; accepted: a mapping with keys " + ", ".join(TOP_LEVEL_KEYS),
        )
    if not isinstance(data, Mapping):
        fail(
            source,
            "(top level)",
            f"{short(data)} is a {type(data).__name__}; accepted: a mapping with keys "
            + ", ".join(TOP_LEVEL_KEYS),
        )


def _parse_name(source: str, name: Any) -> Any:
    if name is not None and (not isinstance(name, str | int) or not str(name).strip()):
        fail(source, "name", f"{short(name)} is not accepted; accepted: a non-empty string")
    return name


def _parse_task_text(source: str, task: Any) -> str:
    """The task's text (checked as a name or an import path later, once all else passed)."""
    if task is None:
        return ""  # reported as missing
    if not isinstance(task, str) or not task.strip():
        fail(
            source,
            "task",
            f"{short(task)} is not accepted; accepted: a built-in task name "
            "or 'package.module:callable'",
        )
    return task.strip()


def _parse_all_params(
    errors: Collector, source: str, raw: Any, pipeline: tuple[str, ...] | None
) -> dict[str, Distribution]:
    """The `params` section, each key checked on its own; a stage's values are checked
    against its params dataclass whenever the pipeline names stages (even a pipeline that
    failed its own checks), so one run reports both."""
    from stages import PIPELINE_ORDER

    parsed = collect_params(errors, source, raw, pipeline or PIPELINE_ORDER)
    if pipeline is None:  # no pipeline to check against: each key's values are still checked
        errors.attempt(validate_stage_params, source, (), parsed, fallback=parsed)
        return parsed
    # Keys of stages missing from the pipeline are errors already; their values are still
    # checked against their stage, then dropped.
    checked = errors.attempt(validate_stage_params, source, pipeline, parsed, fallback=parsed)
    return {k: d for k, d in checked.items() if k.split(".")[0] in pipeline}


def _parse_pipeline(source: str, raw: Any) -> tuple[str, ...]:
    from stages import PIPELINE_ORDER

    order = " -> ".join(PIPELINE_ORDER)
    if isinstance(raw, str):
        raw = [raw] if "," not in raw else [s.strip() for s in raw.split(",")]
    if not isinstance(raw, list) or not raw:
        fail(
            source,
            "pipeline",
            f"{short(raw)} is not accepted; accepted: a non-empty list "
            f"of stages in this order: {order}",
        )
    for item in raw:
        if not isinstance(item, str) or item not in PIPELINE_ORDER:
            fail(
                source,
                "pipeline",
                f"{short(item)} is not a stage{did_you_mean(item, PIPELINE_ORDER)}; "
                f"accepted: {', '.join(PIPELINE_ORDER)}",
            )
    stages = tuple(raw)
    shown = fmt_list(stages)
    dupes = sorted({s for s in stages if stages.count(s) > 1})
    if dupes:
        fail(
            source,
            "pipeline",
            f"{shown} lists {dupes[0]!r} twice; accepted: each stage "
            f"at most once, in this order: {order}",
        )
    if stages[0] != "teacher":
        fail(
            source,
            "pipeline",
            f"{shown} does not start with 'teacher': {stages[0]!r} has no model to work on; "
            f"accepted: a pipeline starting with teacher, in this order: {order}",
        )
    for before, after in itertools.pairwise(stages):
        if PIPELINE_ORDER.index(after) < PIPELINE_ORDER.index(before):
            fail(
                source,
                "pipeline",
                f"{shown} puts {after!r} after {before!r}; accepted: stages in this order: {order}",
            )
    for i, stage in enumerate(stages):
        if stage in _NEEDS_COMPRESSED and not any(s in _COMPRESSORS for s in stages[:i]):
            fail(
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
        fail(
            source,
            "objectives",
            f"{short(raw)} is not accepted; accepted: a mapping "
            "{metric: max|min}, e.g. {val_accuracy: max, size_bytes: min}",
        )
    objectives: list[Objective] = []
    errors = Collector()
    for metric, direction in raw.items():
        parsed = errors.attempt(_parse_objective, source, metric, direction, fallback=None)
        if parsed is not None:
            objectives.append(parsed)
    errors.raise_if_any()
    return tuple(objectives)


def _parse_objective(source: str, metric: Any, direction: Any) -> Objective:
    key = f"objectives.{metric}"
    check_metric(source, key, metric)
    if direction not in DIRECTIONS:
        fail(
            source,
            key,
            f"{short(direction)} is not a direction"
            f"{did_you_mean(str(direction), DIRECTIONS)}; accepted: max, min",
        )
    return Objective(str(metric), str(direction))


def _parse_search(source: str, raw: Any) -> SearchSettings:
    if raw is None:
        return SearchSettings()
    errors = Collector()
    if not _section_checked(errors, source, "search", raw, SEARCH_KEYS):
        errors.raise_if_any()
    d = SearchSettings()
    field = functools.partial(_field, errors, source, "search", raw)
    settings = SearchSettings(
        algorithm=field("algorithm", "optuna", check_choice, ALGORITHMS),
        trials=field("trials", d.trials, check_int, low=1),
        seed=field("seed", d.seed, check_int, low=0),
        max_concurrent=field("max_concurrent", None, check_int, low=1, null_ok=True),
        scheduler=field("scheduler", "none", check_choice, SCHEDULERS, null_ok=True),
        time_budget_s=field("time_budget", None, check_duration, null_ok=True),
        sampler=field("sampler", "tpe", check_choice, SAMPLERS, null_ok=True),
    )
    errors.raise_if_any()
    return settings


def _field(
    errors: Collector,
    source: str,
    section: str,
    raw: Mapping[str, Any],
    key: str,
    default: Any,
    check: Any,
    *args: Any,
    null_ok: bool = False,
    **kwargs: Any,
) -> Any:
    """`raw[key]` checked by `check` (its error collected, the default standing in), or the
    default when absent (or null, with `null_ok`)."""
    value = raw.get(key, default)
    if value is None and null_ok:
        return default
    key = f"{section}.{key}"
    return errors.attempt(check, source, key, value, *args, fallback=default, **kwargs)


def _section_checked(
    errors: Collector, source: str, name: str, raw: Any, keys: tuple[str, ...]
) -> bool:
    """Collect the section's unknown keys; False when it is not a mapping (nothing to read)."""
    errors.attempt(check_section, source, name, raw, keys, fallback=None)
    return isinstance(raw, Mapping)


_CONSTRAINT_RE = re.compile(
    r"^\s*(>=|<=|==|>|<)\s*([-+]?[0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][-+]?"
    r"[0-9]+)?|[-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$"
)


def _parse_constraints(source: str, raw: Any) -> tuple[Constraint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        fail(
            source,
            "constraints",
            f"{short(raw)} is not accepted; accepted: a mapping "
            '{metric: "OP number"}, e.g. {val_accuracy: ">= 0.95"}',
        )
    errors = Collector()
    constraints = [
        errors.attempt(_parse_constraint, source, metric, text, fallback=None)
        for metric, text in raw.items()
    ]
    errors.raise_if_any()
    return tuple(c for c in constraints if c is not None)


def _parse_constraint(source: str, metric: Any, text: Any) -> Constraint:
    key = f"constraints.{metric}"
    check_metric(source, key, metric)
    match = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
    if match is None:
        fail(
            source,
            key,
            f"{short(text)} is not a constraint; accepted: a quoted string "
            f'"OP number" with OP one of {", ".join(OPERATORS)}, e.g. ">= 0.95"',
        )
    return Constraint(str(metric), match.group(1), float(match.group(2)))


def _parse_latency(source: str, raw: Any) -> LatencySettings:
    if raw is None:
        return LatencySettings()
    errors = Collector()
    if not _section_checked(errors, source, "latency", raw, LATENCY_KEYS):
        errors.raise_if_any()
    d = LatencySettings()
    field = functools.partial(_field, errors, source, "latency", raw)
    settings = LatencySettings(
        warmup=field("warmup", d.warmup, check_int, low=0),
        repeats=field("repeats", d.repeats, check_int, low=1),
        batch_size=field("batch_size", d.batch_size, check_int, low=1),
        threads=field("threads", d.threads, check_int, low=1),
        rounds=field("rounds", d.rounds, check_int, low=0),
        time_cap_s=field("time_cap", d.time_cap_s, check_duration),
        precision=field("precision", d.precision, check_share),
    )
    errors.raise_if_any()
    return settings


def check_stages_apply_to_task(space: SearchSpace) -> None:
    """Refuse a stage that cannot change the space's task model at all (lora/lowrank with no
    layer to wrap, dynamic_int8 with no Linear), before Ray starts: the error names the file,
    the stage, the value and the fix. Imports the task and builds its model."""
    from stages.precheck import check_stages_apply
    from stages.tasks import load_task

    values = {key: dist.values_for_validation() for key, dist in space.params.items()}
    try:
        check_stages_apply(load_task(space.task), space.pipeline, values)
    except SqueezerayError as exc:  # every refusal, one a line
        raise SpaceErrors([f"{space.source}: {line}" for line in str(exc).splitlines()]) from exc
