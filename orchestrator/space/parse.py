"""Loaded YAML data -> a validated `SearchSpace` (cheap checks first, the task import last).

Each section has its parser here (pipeline, objectives, search, constraints, latency); the
`params` section is `orchestrator.space.params`. Errors name the file, the key, the value and
what is accepted.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

from orchestrator.space.checks import (
    check_choice,
    check_duration,
    check_int,
    check_keys,
    check_section,
    did_you_mean,
    fail,
    fmt_list,
    short,
)
from orchestrator.space.metrics import DIRECTIONS, check_metric, selection_column
from orchestrator.space.model import (
    ALGORITHMS,
    DEFAULT_OBJECTIVES,
    OPERATORS,
    SAMPLERS,
    SCHEDULERS,
    Constraint,
    LatencySettings,
    Objective,
    SearchSettings,
    SearchSpace,
    check_grid,
    check_task_name,
    with_known_task_metric,
)
from orchestrator.space.params import parse_params, validate_stage_params
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

LATENCY_KEYS: tuple[str, ...] = ("warmup", "repeats", "batch_size", "threads", "rounds")


# Stages that only make sense on a model that some earlier stage made smaller: fine-tuning or
# LoRA straight after the teacher would just retrain the teacher ("lora without a student").
_NEEDS_COMPRESSED: tuple[str, ...] = ("finetune", "lora")

_COMPRESSORS: tuple[str, ...] = ("distill", "prune", "lowrank")


def parse_space(data: Mapping[str, Any], *, source: str, check_task: bool = True) -> SearchSpace:
    """Validate already-loaded YAML data (cheap checks first, the task import last)."""
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
    check_keys(source, "", data, TOP_LEVEL_KEYS)
    for required in ("task", "pipeline"):
        if data.get(required) is None:
            fail(
                source,
                required,
                f"missing; it is required (accepted keys: {', '.join(TOP_LEVEL_KEYS)})",
            )

    name = data.get("name")
    if name is not None and (not isinstance(name, str | int) or not str(name).strip()):
        fail(source, "name", f"{short(name)} is not accepted; accepted: a non-empty string")
    task = data["task"]
    if not isinstance(task, str) or not task.strip():
        fail(
            source,
            "task",
            f"{short(task)} is not accepted; accepted: a built-in task name "
            "or 'package.module:callable'",
        )
    pipeline = _parse_pipeline(source, data["pipeline"])
    objectives = _parse_objectives(source, data.get("objectives"))
    raw_params = parse_params(source, data.get("params"), pipeline)
    search = _parse_search(source, data.get("search"))
    constraints = _parse_constraints(source, data.get("constraints"))
    latency = _parse_latency(source, data.get("latency"))

    params = validate_stage_params(source, pipeline, raw_params)
    check_grid(source, search.algorithm, params, flag="search.algorithm")
    task = check_task_name(source, "task", task.strip(), check_task=check_task)
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
    return with_known_task_metric(space, check_task=check_task)


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
            "{metric: max|min}, e.g. {accuracy: max, size_bytes: min}",
        )
    objectives: list[Objective] = []
    for metric, direction in raw.items():
        key = f"objectives.{metric}"
        check_metric(source, key, metric)
        if direction not in DIRECTIONS:
            fail(
                source,
                key,
                f"{short(direction)} is not a direction"
                f"{did_you_mean(str(direction), DIRECTIONS)}; accepted: max, min",
            )
        chosen = selection_column(str(metric))
        twin = next((o.name for o in objectives if selection_column(o.name) == chosen), None)
        if twin is not None:
            fail(
                source,
                key,
                f"{metric!r} and {twin!r} are one objective (the search uses {chosen!r}, the "
                "validation split, for both); accepted: name it once",
            )
        objectives.append(Objective(str(metric), str(direction)))
    return tuple(objectives)


def _parse_search(source: str, raw: Any) -> SearchSettings:
    if raw is None:
        return SearchSettings()
    check_section(source, "search", raw, SEARCH_KEYS)
    defaults = SearchSettings()
    algorithm = check_choice(source, "search.algorithm", raw.get("algorithm", "optuna"), ALGORITHMS)
    trials = check_int(source, "search.trials", raw.get("trials", defaults.trials), low=1)
    seed = check_int(source, "search.seed", raw.get("seed", defaults.seed), low=0)
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = check_int(source, "search.max_concurrent", max_concurrent, low=1)
    scheduler = raw.get("scheduler", "none")
    scheduler = check_choice(
        source, "search.scheduler", "none" if scheduler is None else scheduler, SCHEDULERS
    )
    sampler = raw.get("sampler")
    sampler = check_choice(
        source, "search.sampler", "tpe" if sampler is None else sampler, SAMPLERS
    )
    budget = raw.get("time_budget")
    budget_s = None if budget is None else check_duration(source, "search.time_budget", budget)
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
        fail(
            source,
            "constraints",
            f"{short(raw)} is not accepted; accepted: a mapping "
            '{metric: "OP number"}, e.g. {accuracy: ">= 0.95"}',
        )
    constraints = []
    for metric, text in raw.items():
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
        constraints.append(Constraint(str(metric), match.group(1), float(match.group(2))))
    return tuple(constraints)


def _parse_latency(source: str, raw: Any) -> LatencySettings:
    if raw is None:
        return LatencySettings()
    check_section(source, "latency", raw, LATENCY_KEYS)
    d = LatencySettings()
    return LatencySettings(
        warmup=check_int(source, "latency.warmup", raw.get("warmup", d.warmup), low=0),
        repeats=check_int(source, "latency.repeats", raw.get("repeats", d.repeats), low=1),
        batch_size=check_int(
            source, "latency.batch_size", raw.get("batch_size", d.batch_size), low=1
        ),
        threads=check_int(source, "latency.threads", raw.get("threads", d.threads), low=1),
        rounds=check_int(source, "latency.rounds", raw.get("rounds", d.rounds), low=0),
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
