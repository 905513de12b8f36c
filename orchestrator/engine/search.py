"""Turning a SearchSpace into a Tune search algorithm (Optuna multi-objective, random, grid).

`make_search` picks the algorithm and its parameter space; the classes Tune is handed
(`DeadlineSearch` for a time budget, `SqueezeOptunaSearch`) live in `searchers`, which imports
Ray and Optuna and is loaded only here.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.engine.deadlines import DEADLINES
from orchestrator.space.coherence import grid_points
from orchestrator.space.model import Distribution, SearchSpace


def make_search(
    space: SearchSpace,
    *,
    constraints: tuple[tuple[str, str, float], ...],
    points_to_evaluate: list[dict[str, Any]] | None = None,
    evaluated_rewards: list[list[float]] | None = None,
    warm_constraint_values: list[dict[str, float]] | None = None,
    max_concurrent: int | None = None,
    deadline_key: str | None = None,
    done: tuple[dict[str, Any], ...] = (),
    reruns: tuple[tuple[str, dict[str, Any]], ...] = (),
) -> tuple[Any, dict[str, Any], int]:
    """(search_alg, param_space, num_samples) for the Tuner; num_samples counts the trials
    the search draws, not `reruns`.

    `done`: the knob points of trials already finished or re-run (a resumed sweep whose Tune
    state was rebuilt, `tune_state`): grid search leaves them out, random search draws from its
    seed moved on by their count (so it does not draw the earlier run's points again); Optuna
    learns the finished ones from the warm start. `reruns`: (trial id, knobs) of lost trials
    run first under their own ids with their own knobs (`rerun_search.RerunLost`).

    With a time budget, the search stops launching trials at `DEADLINES[deadline_key]` (a
    `time.monotonic()` value of this process, set by the sweep; default: now + the budget).
    The deadline is looked up when a trial is to start, so a search restored from a dead
    process's checkpoint (`--resume`) uses this process's deadline, not the pickled one.

    `warm_constraint_values` (one dict per warm-start point: constraint column -> the value its
    stored row holds) judge the warm-start points' constraints; a point whose constraint column
    is neither there nor an objective is left out of the warm start (its feasibility is
    unknown).

    `max_concurrent` is enforced here, in the search algorithm: Tune ignores
    `TuneConfig.max_concurrent_trials` when it is given a ready-made search algorithm, and then
    starts every trial at once (measured in bench/: all 24 coordinators competing for 2 CPUs).
    """
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    inner: Any
    if space.search.algorithm == "grid":
        inner, param_space, num_samples = _grid_search(space, max_concurrent, done)
    elif space.search.algorithm == "random":
        inner, param_space, num_samples = _random_search(space, max_concurrent, len(done))
    else:
        searcher: Any = _optuna_search(
            space, constraints, points_to_evaluate, evaluated_rewards, warm_constraint_values
        )
        if max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        inner, param_space, num_samples = SearchGenerator(searcher), {}, space.search.trials
    if reruns:
        from orchestrator.engine.rerun_search import RerunLost

        inner = RerunLost(inner, list(reruns), max_concurrent=max_concurrent or 0)
    return _with_deadline(space, inner, deadline_key), param_space, num_samples


def _with_deadline(space: SearchSpace, inner: Any, deadline_key: str | None) -> Any:
    """`inner` stopped from launching trials at the sweep's deadline (with a time budget)."""
    if space.search.time_budget_s is not None:
        from orchestrator.engine.searchers import DeadlineSearch

        deadline = time.monotonic() + space.search.time_budget_s
        if deadline_key is not None:
            deadline = DEADLINES.setdefault(deadline_key, deadline)
        inner = DeadlineSearch(inner, deadline, key=deadline_key)
    return inner


def _grid_search(
    space: SearchSpace, max_concurrent: int | None, done: tuple[dict[str, Any], ...] = ()
) -> tuple[Any, dict[str, Any], int]:
    """Explicit points, one per distinct effective configuration (Tune's grid_search would run
    e.g. onnx_int8 once per export.runtime, though onnx_int8 always deploys to ORT); points
    in `done` (every knob of the point equal) are left out."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    points = grid_left(space, done)
    inner = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=max_concurrent or 0)
    # The domains are declared (Tune resolves points against them); every sample is a point.
    param_space = {k: tune.choice(list(d.choices)) for k, d in space.searched().items()}
    return inner, param_space, len(points)


def grid_left(space: SearchSpace, done: tuple[dict[str, Any], ...] = ()) -> list[dict[str, Any]]:
    """The grid's points (one per distinct effective configuration) less those in `done`
    (every knob of the point equal)."""
    points, _ = grid_points(space)
    return [p for p in points if not any(all(d.get(k) == v for k, v in p.items()) for d in done)]


def _random_search(
    space: SearchSpace, max_concurrent: int | None, skip: int = 0
) -> tuple[Any, dict[str, Any], int]:
    """Tune's random search over the searched knobs' domains, seeded by the search seed (plus
    `skip`, the trials an earlier run already drew: a rebuilt resume)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    param_space = {k: _tune_domain(d) for k, d in space.searched().items()}
    inner = BasicVariantGenerator(
        random_state=space.search.seed + skip, max_concurrent=max_concurrent or 0
    )
    return inner, param_space, space.search.trials


def _optuna_search(
    space: SearchSpace,
    constraints: tuple[tuple[str, str, float], ...],
    points_to_evaluate: list[dict[str, Any]] | None,
    evaluated_rewards: list[list[float]] | None,
    warm_constraint_values: list[dict[str, float]] | None = None,
) -> Any:
    """Optuna's multi-objective search over the searched knobs, on the validation columns
    (val_accuracy for an `accuracy` objective: never the test split)."""
    from orchestrator.engine.searchers import SqueezeOptunaSearch

    objective_names = [column for column, _ in space.search_objectives()]
    return SqueezeOptunaSearch(
        constraints=constraints,
        objective_names=objective_names,
        warm_points=points_to_evaluate,
        warm_constraint_values=warm_constraint_values,
        pipeline=space.pipeline,
        fixed=space.fixed(),
        space={k: _optuna_distribution(d) for k, d in space.searched().items()},
        metric=objective_names,
        mode=[direction for _, direction in space.search_objectives()],
        sampler=_sampler(space),
        points_to_evaluate=points_to_evaluate or None,
        evaluated_rewards=evaluated_rewards or None,
    )


def _sampler(space: SearchSpace) -> Any:
    """TPE (multivariate), or `gp`: expected-hypervolume improvement on a Gaussian process, ~1 s
    a suggestion in the driver; on bench-quality it did not beat TPE (bench/RESULTS.md §4).

    Constraint values reach the sampler through `Trial.set_constraint` when a trial completes
    (`searchers.SqueezeOptunaSearch`), not through a `constraints_func`: that is deprecated in
    Optuna 5, and a local function in the sampler cannot be pickled when Tune saves the
    searcher's state.
    """
    import optuna

    startup = max(4, min(10, space.search.trials // 3))
    if space.search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=space.search.seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(
        seed=space.search.seed, multivariate=True, n_startup_trials=startup
    )


def _bounds(d: Distribution) -> tuple[float, float]:
    assert d.low is not None and d.high is not None, d
    return float(d.low), float(d.high)


def _tune_domain(d: Distribution) -> Any:
    from ray import tune

    if d.kind == "uniform":
        return tune.uniform(*_bounds(d))
    if d.kind == "loguniform":
        return tune.loguniform(*_bounds(d))
    if d.kind == "int":
        assert d.low is not None and d.high is not None
        return tune.qrandint(int(d.low), int(d.high), d.step or 1)
    return tune.choice(list(d.choices))


def _optuna_distribution(d: Distribution) -> Any:
    import optuna

    if d.kind == "uniform":
        return optuna.distributions.FloatDistribution(*_bounds(d))
    if d.kind == "loguniform":
        return optuna.distributions.FloatDistribution(*_bounds(d), log=True)
    if d.kind == "int":
        assert d.low is not None and d.high is not None
        return optuna.distributions.IntDistribution(int(d.low), int(d.high), step=d.step or 1)
    return optuna.distributions.CategoricalDistribution(list(d.choices))
