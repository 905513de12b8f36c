"""Turning a SearchSpace into a Tune search algorithm (Optuna multi-objective, random, grid)."""

from __future__ import annotations

import math
import time
from typing import Any

from orchestrator.engine.deadlines import DEADLINES
from orchestrator.space.coherence import grid_points
from orchestrator.space.constraints import violations
from orchestrator.space.model import Distribution, SearchSpace

FAILED_STATUSES = ("error", "timeout", "stopped")


def make_search(
    space: SearchSpace,
    *,
    constraints: tuple[tuple[str, str, float], ...],
    points_to_evaluate: list[dict[str, Any]] | None = None,
    evaluated_rewards: list[list[float]] | None = None,
    warm_constraint_values: list[dict[str, float]] | None = None,
    max_concurrent: int | None = None,
    deadline_key: str | None = None,
) -> tuple[Any, dict[str, Any], int]:
    """(search_alg, param_space, num_samples) for the Tuner.

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
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator
    from ray.tune.search.basic_variant import BasicVariantGenerator

    searched = space.searched()
    algorithm = space.search.algorithm
    inner: Any
    if algorithm == "grid":
        # Explicit points, one per distinct effective configuration (Tune's grid_search would
        # run e.g. onnx_int8 once per export.runtime, though onnx_int8 always deploys to ORT).
        points, _ = grid_points(space)
        inner = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=max_concurrent or 0)
        # The domains are declared (Tune resolves points against them); every sample is a point.
        param_space = {k: tune.choice(list(d.choices)) for k, d in searched.items()}
        num_samples = len(points)
    elif algorithm == "random":
        param_space = {k: _tune_domain(d) for k, d in searched.items()}
        inner = BasicVariantGenerator(
            random_state=space.search.seed, max_concurrent=max_concurrent or 0
        )
        num_samples = space.search.trials
    else:
        searcher: Any = _optuna_search(
            space, constraints, points_to_evaluate, evaluated_rewards, warm_constraint_values
        )
        if max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        inner, param_space, num_samples = SearchGenerator(searcher), {}, space.search.trials
    if space.search.time_budget_s is not None:
        deadline = time.monotonic() + space.search.time_budget_s
        if deadline_key is not None:
            deadline = DEADLINES.setdefault(deadline_key, deadline)
        inner = _with_deadline(inner, deadline, key=deadline_key)
    return inner, param_space, num_samples


def _with_deadline(inner: Any, deadline: float, *, key: str | None = None) -> Any:
    """A search algorithm that stops *launching* trials at `deadline` (time.monotonic()).

    Tune's own `time_budget_s` kills running trials, losing their results; here running
    trials finish and are recorded, and the sweep then ends.
    """
    from ray.tune.search import SearchAlgorithm

    class DeadlineSearch(SearchAlgorithm):  # type: ignore[misc]
        def __init__(self) -> None:
            self.inner = inner
            self.out_of_time = False

        @property
        def metric(self) -> Any:
            return self.inner.metric

        def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
            return bool(self.inner.set_search_properties(metric, mode, config, **spec))

        @property
        def total_samples(self) -> int:
            return int(self.inner.total_samples)

        def add_configurations(self, experiments: Any) -> None:
            self.inner.add_configurations(experiments)

        def next_trial(self) -> Any:
            # Through the live module: this class is pickled by value with Tune's state, and a
            # restored copy must read the resuming process's deadline.
            if self._expired():
                self.out_of_time = True
                return None
            return self.inner.next_trial()

        def _expired(self) -> bool:
            import orchestrator.engine.deadlines as live

            return time.monotonic() >= live.current_deadline(key, deadline)

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            self.inner.on_trial_result(trial_id, result)

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            self.inner.on_trial_complete(trial_id, result=result, error=error)

        def is_finished(self) -> bool:
            # Not the pickled out_of_time: a restored search has the resumed budget left.
            return self._expired() or bool(self.inner.is_finished())

        def set_finished(self) -> None:
            self.inner.set_finished()

        def has_checkpoint(self, dirpath: str) -> bool:
            return bool(self.inner.has_checkpoint(dirpath))

        def save_to_dir(self, dirpath: str, **kwargs: Any) -> None:
            self.inner.save_to_dir(dirpath, **kwargs)

        def restore_from_dir(self, dirpath: str) -> None:
            self.inner.restore_from_dir(dirpath)

    return DeadlineSearch()


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


def _optuna_search(
    space: SearchSpace,
    constraints: tuple[tuple[str, str, float], ...],
    points_to_evaluate: list[dict[str, Any]] | None,
    evaluated_rewards: list[list[float]] | None,
    warm_constraint_values: list[dict[str, float]] | None = None,
) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Constraint values reach the sampler through `Trial.set_constraint` when a trial completes
    # (below), not through a `constraints_func`: that is deprecated in Optuna 5, and a local
    # function in the sampler cannot be pickled when Tune saves the searcher's state.
    startup = max(4, min(10, space.search.trials // 3))
    sampler: Any
    if space.search.sampler == "gp":
        # Expected-hypervolume improvement on a Gaussian process, ~1 s a suggestion in the
        # driver; on bench-quality it did not beat TPE (bench/RESULTS.md §4).
        sampler = optuna.samplers.GPSampler(seed=space.search.seed, n_startup_trials=startup)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=space.search.seed, multivariate=True, n_startup_trials=startup
        )

    class SqueezeOptunaSearch(OptunaSearch):  # type: ignore[misc]
        """Tells Optuna about failed trials (FAIL, not a NaN value) and constraint violations."""

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            if trial_id in self._completed_trials:
                return  # already told (a failed trial, or a repeated completion)
            ot_trial = self._ot_trials.get(trial_id)
            failed = (
                error
                or not result
                or result.get("status") in FAILED_STATUSES
                # stopped early (ASHA: its last report is a stage's) or an objective missing:
                # Optuna cannot be told values it does not have
                or not result.get("final")
                or not all(_finite(result.get(name)) for name in objective_names)
            )
            if ot_trial is not None and failed:
                study: Any = self._ot_study
                study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return
            if ot_trial is not None and result and constraints:
                for (column, op, value), off in zip(
                    constraints, violations(constraints, result), strict=True
                ):
                    # > 0: violated by that much; <= 0: met (Optuna's convention)
                    ot_trial.set_constraint(f"{column} {op} {value:g}", off)
            super().on_trial_complete(trial_id, result=result, error=error)

        def add_evaluated_point(
            self,
            parameters: dict[Any, Any],
            value: Any,
            error: bool = False,
            pruned: bool = False,
            intermediate_values: list[float] | None = None,
        ) -> Any:
            # Ray hands a multi-objective reward list to Optuna as `value=`, which it rejects.
            if not isinstance(value, list | tuple) or error or pruned:
                return super().add_evaluated_point(
                    parameters, value, error, pruned, intermediate_values
                )
            study: Any = self._ot_study
            distributions: Any = self._space  # a dict of optuna distributions (see below)
            # The point's stored constraint-column values (matched by identity: Ray hands the
            # points_to_evaluate dicts over unchanged).
            index = next(
                (i for i, p in enumerate(points_to_evaluate or []) if p is parameters), None
            )
            measured = (
                warm_constraint_values[index]
                if warm_constraint_values is not None
                and index is not None
                and index < len(warm_constraint_values)
                else {}
            )
            known = _warm_constraints(constraints, objective_names, value, measured)
            if known is _UNKNOWN:
                return None  # feasibility unknown: not a warm-start point
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.COMPLETE,
                    values=[float(v) for v in value],
                    params=parameters,
                    distributions=distributions,
                    constraints=known,
                )
            )
            return None

    searched = space.searched()
    # The validation columns (val_accuracy for an `accuracy` objective): never the test split.
    objective_names = [column for column, _ in space.search_objectives()]
    return SqueezeOptunaSearch(
        space={k: _optuna_distribution(d) for k, d in searched.items()},
        metric=objective_names,
        mode=[direction for _, direction in space.search_objectives()],
        sampler=sampler,
        points_to_evaluate=points_to_evaluate or None,
        evaluated_rewards=evaluated_rewards or None,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_UNKNOWN: dict[str, float] = {}  # sentinel: a constraint column without a value


def _warm_constraints(
    constraints: tuple[tuple[str, str, float], ...],
    names: list[str],
    values: Any,
    measured: dict[str, float] | None = None,
) -> dict[str, float] | None:
    """Constraint values of a warm-start point, from its objective values and the constraint
    columns its stored row holds (`measured`); `_UNKNOWN` when a constrained column has no
    value (the point is then not used: unknown is not feasible). None without constraints."""
    if not constraints:
        return None
    known = {**(measured or {}), **dict(zip(names, (float(v) for v in values), strict=True))}
    if any(column not in known for column, _, _ in constraints):
        return _UNKNOWN
    return {
        f"{column} {op} {bound:g}": violations([(column, op, bound)], known)[0]
        for column, op, bound in constraints
    }
