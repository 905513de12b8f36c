"""The search-algorithm classes Tune is handed: subclasses of Ray's, so this module imports Ray
and Optuna (`search.make_search` loads it lazily).

`DeadlineSearch` stops *launching* trials at the sweep's deadline (`deadlines`) and lets the
running ones finish; `SqueezeOptunaSearch` tells Optuna about failed trials (FAIL, not a NaN
value) and constraint violations, takes multi-objective warm-start points with their
constraint values, and answers a proposal of a point already measured with that trial's
result instead of spending a trial on it. Both are module-level classes, so Tune's saved
state refers to them by name and a restored search runs this code.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import optuna
from ray.tune.search import SearchAlgorithm
from ray.tune.search.optuna import OptunaSearch

from orchestrator.engine import deadlines
from orchestrator.space.coherence import effective_knobs
from orchestrator.space.constraints import violations

log = logging.getLogger(__name__)

FAILED_STATUSES = ("error", "timeout", "stopped", "lost")
# Proposals of measured points answered in a row for one trial before the next one runs anyway
# (a small space nearly all measured: the stage cache makes that trial cheap).
REPEATS_PER_TRIAL = 8


def _stopped_early(result: dict[str, Any] | None, error: bool) -> bool:
    """A trial the scheduler stopped: no error, and its last report is a stage's (not final)."""
    if error or not result:
        return False
    return not result.get("final") and result.get("status") in (None, "ok", "stopped")


Constraints = tuple[tuple[str, str, float], ...]


class WrappingSearch(SearchAlgorithm):  # type: ignore[misc]
    """A search algorithm that hands every call to the one it wraps, `self.inner` (set by the
    subclass); `DeadlineSearch` and `engine.rerun_search.RerunLost` override what they change."""

    inner: Any

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
        return self.inner.next_trial()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    def is_finished(self) -> bool:
        return bool(self.inner.is_finished())

    def set_finished(self) -> None:
        self.inner.set_finished()

    def has_checkpoint(self, dirpath: str) -> bool:
        return bool(self.inner.has_checkpoint(dirpath))

    def save_to_dir(self, dirpath: str, **kwargs: Any) -> None:
        self.inner.save_to_dir(dirpath, **kwargs)

    def restore_from_dir(self, dirpath: str) -> None:
        self.inner.restore_from_dir(dirpath)


class DeadlineSearch(WrappingSearch):
    """A search algorithm that stops *launching* trials at `deadline` (time.monotonic()).

    Tune's own `time_budget_s` kills running trials, losing their results; here running
    trials finish and are recorded, and the sweep then ends. The deadline in force is the
    one `deadlines.DEADLINES` holds for `key` in this process (`deadline` when it holds none).
    """

    def __init__(self, inner: Any, deadline: float, key: str | None = None) -> None:
        self.inner = inner
        self.deadline = deadline
        self.key = key
        self.out_of_time = False

    def next_trial(self) -> Any:
        if self._expired():
            self.out_of_time = True
            return None
        return self.inner.next_trial()

    def _expired(self) -> bool:
        # This process's deadline: a search restored from a dead process's checkpoint has the
        # resumed budget left, not the pickled one.
        return time.monotonic() >= deadlines.current_deadline(self.key, self.deadline)

    def is_finished(self) -> bool:
        # Not the pickled out_of_time: a restored search has the resumed budget left.
        return self._expired() or bool(self.inner.is_finished())


class SqueezeOptunaSearch(OptunaSearch):  # type: ignore[misc]
    """Tells Optuna about failed trials (FAIL, not a NaN value) and constraint violations, and
    spends no trial on a point already measured.

    `constraints` are judged on each completed trial's result; `objective_names` are the
    result columns of the objectives; `warm_points` (the `points_to_evaluate` list itself) and
    `warm_constraint_values` (one dict per point: constraint column -> its stored value) judge
    the warm-start points' constraints. `pipeline` and `fixed` (the space's fixed knobs) say
    which points run the same model (`coherence.effective_knobs`): a proposal whose effective
    configuration a finished trial of this search has is told that trial's values and
    constraints and not run, and Optuna proposes again (the Optuna FAQ's answer to repeated
    samples); `repeated` counts them. After `REPEATS_PER_TRIAL` in a row the trial runs the
    proposal. Warm-start points are not answered so: a night re-measures earlier points on
    purpose (its report compares them for drift). The rest is OptunaSearch's.
    """

    def __init__(
        self,
        *,
        constraints: Constraints,
        objective_names: list[str],
        warm_points: list[dict[str, Any]] | None,
        warm_constraint_values: list[dict[str, float]] | None,
        pipeline: tuple[str, ...] = (),
        fixed: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        # Set before OptunaSearch's own __init__: it adds the warm-start points at once.
        self._sq_constraints = constraints
        self._sq_objectives = objective_names
        self._sq_warm_points = warm_points
        self._sq_warm_values = warm_constraint_values
        self._sq_pipeline = pipeline
        self._sq_fixed = dict(fixed or {})
        self.repeated = 0
        super().__init__(**options)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(REPEATS_PER_TRIAL):
            config = super().suggest(trial_id)
            ot_trial: Any = self._ot_trials[trial_id]
            twin = self._measured_twin(ot_trial.params)
            if twin is None:
                return config  # type: ignore[no-any-return]
            for name, value in twin.constraints.items():
                ot_trial.set_constraint(name, value)
            study: Any = self._ot_study
            study.tell(ot_trial, twin.values)  # its result, as a trial of its own
            del self._ot_trials[trial_id]  # `super().suggest` asks Optuna again for this trial
            self.repeated += 1
            log.info(
                "Optuna proposed %s again: trial %d's result told", ot_trial.params, twin.number
            )
        return super().suggest(trial_id)  # type: ignore[no-any-return]

    def _measured_twin(self, params: dict[str, Any]) -> Any:
        """The first finished trial of this search (a Tune trial's COMPLETE Optuna trial, not a
        warm-start point) with the effective configuration of `params`."""
        wanted = self._effective(params)
        ours = {trial.number for trial in self._ot_trials.values()}
        study: Any = self._ot_study
        complete = (optuna.trial.TrialState.COMPLETE,)
        for trial in study.get_trials(deepcopy=False, states=complete):
            if trial.number in ours and self._effective(trial.params) == wanted:
                return trial
        return None

    def _effective(self, params: dict[str, Any]) -> str:
        knobs = effective_knobs({**self._sq_fixed, **params}, self._sq_pipeline)
        return json.dumps(knobs, sort_keys=True, default=str)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials:
            return  # already told (a failed trial, or a repeated completion)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and self._failed(result, error):
            # a trial the scheduler stopped early is Optuna's PRUNED (a single-objective
            # sampler ranks it by the stage accuracies it reported); anything else FAIL
            state = optuna.trial.TrialState.FAIL
            if _stopped_early(result, error):
                state = optuna.trial.TrialState.PRUNED
            study: Any = self._ot_study
            study.tell(ot_trial, state=state)
            self._completed_trials.add(trial_id)
            return
        if ot_trial is not None and result and self._sq_constraints:
            constraints = self._sq_constraints
            for (column, op, value), off in zip(
                constraints, violations(constraints, result), strict=True
            ):
                # > 0: violated by that much; <= 0: met (Optuna's convention)
                ot_trial.set_constraint(f"{column} {op} {value:g}", off)
        super().on_trial_complete(trial_id, result=result, error=error)

    def _failed(self, result: dict[str, Any] | None, error: bool) -> bool:
        """A trial Optuna is told no values: an error, a failed status, stopped early (ASHA:
        its last report is a stage's; told PRUNED) or an objective missing (told FAIL):
        Optuna cannot be told values it does not have."""
        return (
            error
            or not result
            or result.get("status") in FAILED_STATUSES
            or not result.get("final")
            or not all(_finite(result.get(name)) for name in self._sq_objectives)
        )

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
        known = _warm_constraints(
            self._sq_constraints, self._sq_objectives, value, self._warm_measured(parameters)
        )
        if known is _UNKNOWN:
            return None  # feasibility unknown: not a warm-start point
        study: Any = self._ot_study
        distributions: Any = (
            self._space
        )  # a dict of optuna distributions (search._optuna_distribution)
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

    def _warm_measured(self, parameters: dict[Any, Any]) -> dict[str, float]:
        """The warm-start point's stored constraint-column values (matched by identity: Ray
        hands the points_to_evaluate dicts over unchanged)."""
        points, values = self._sq_warm_points or [], self._sq_warm_values
        index = next((i for i, p in enumerate(points) if p is parameters), None)
        if values is None or index is None or index >= len(values):
            return {}
        return values[index]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_UNKNOWN: dict[str, float] = {}  # sentinel: a constraint column without a value


def _warm_constraints(
    constraints: Constraints,
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
