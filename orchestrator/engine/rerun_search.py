"""`RerunLost`: a rebuilt sweep's `lost` trials run again under their own trial ids, with the
knobs they drew, before the search draws anything new.

A sweep whose Tune state cannot be restored is rebuilt as a new Tune experiment
(`tune_state`). Its `lost` trials (Ray failed under them, not their model) were drawn by the
earlier experiment: their rows carry the knobs they ran with. Drawing new knobs for them would
run configs they never drew and leave their `lost` rows behind; here each runs again as a Tune
trial whose id is the lost trial's own and whose config is its stored knobs, so its new row
replaces the `lost` one (the newest row of a trial id wins on read; `lost` is the one non-final
status the results writer lets a row replace). The wrapped search (Optuna, grid, random) draws
only the trials never started. This module imports Ray (`search.make_search` loads it lazily).
"""

from __future__ import annotations

import copy
import glob
import os
from typing import Any

from ray.tune.experiment import Trial, _convert_to_experiment_list
from ray.tune.experiment.config_parser import _create_trial_from_spec, _make_parser
from ray.tune.search.variant_generator import format_vars
from ray.tune.utils.util import _atomic_save, merge_dicts

from orchestrator.engine.searchers import WrappingSearch

# Beside Tune's own search state files (`<kind>-<session stamp>.json`, `tune_state` checks it).
STATE_FILE = "rerun-lost-state-{}.json"

Rerun = tuple[str, dict[str, Any]]  # (the lost trial's id, the knobs it drew: "stage.param" -> v)


class RerunLost(WrappingSearch):
    """Yields one trial per `reruns` entry (its trial id and config), then `inner`'s trials.

    `max_concurrent` bounds the trials of both that run at once (Tune ignores its own limit
    when given a search algorithm). Rerun trials are not told to `inner` (it did not suggest
    them; Optuna learns only its own trials and the warm start). Which reruns were launched is
    saved with Tune's search state, so a restored experiment does not launch them twice.
    """

    def __init__(self, inner: Any, reruns: list[Rerun], *, max_concurrent: int = 0) -> None:
        self.inner = inner
        self.pending = list(reruns)
        self.rerun_ids = {trial_id for trial_id, _ in reruns}
        self.max_concurrent = max_concurrent
        self.live: set[str] = set()
        self._experiment: Any = None
        self._parser: Any = None

    @property
    def total_samples(self) -> int:
        return int(self.inner.total_samples) + len(self.rerun_ids)

    def add_configurations(self, experiments: Any) -> None:
        self._experiment = _convert_to_experiment_list(experiments)[0]
        self.inner.add_configurations(experiments)

    def next_trial(self) -> Any:
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        trial = self._rerun_trial() if self.pending else self.inner.next_trial()
        if trial is not None:
            self.live.add(trial.trial_id)
        return trial

    def _rerun_trial(self) -> Trial:
        """The next lost trial as a Tune trial: its own id, its stored knobs as its config."""
        trial_id, config = self.pending.pop(0)
        if self._parser is None:  # (not pickled with the state: built where it is used)
            self._parser = _make_parser()
        spec = copy.deepcopy(self._experiment.spec)
        spec["config"] = merge_dicts(spec["config"], copy.deepcopy(config))
        number = len(self.rerun_ids) - len(self.pending)
        return _create_trial_from_spec(
            spec,
            self._parser,
            evaluated_params=dict(config),
            experiment_tag=f"{number}_rerun_{format_vars(config)}",
            trial_id=trial_id,
        )

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self.rerun_ids:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.live.discard(trial_id)
        if trial_id not in self.rerun_ids:
            self.inner.on_trial_complete(trial_id, result=result, error=error)

    def is_finished(self) -> bool:
        return not self.pending and bool(self.inner.is_finished())

    def save_to_dir(self, dirpath: str, **kwargs: Any) -> None:
        self.inner.save_to_dir(dirpath, **kwargs)
        # The experiment too: a restored run is not given it again (Tune skips
        # add_configurations on restore), as SearchGenerator keeps its own.
        state = {"pending": self.pending, "experiment": self._experiment}
        name = STATE_FILE.format(kwargs.get("session_str", "0"))
        _atomic_save(state=state, checkpoint_dir=dirpath, file_name=name, tmp_file_name=name)

    def restore_from_dir(self, dirpath: str) -> None:
        import ray.cloudpickle as cloudpickle

        self.inner.restore_from_dir(dirpath)
        saved = sorted(glob.glob(os.path.join(dirpath, STATE_FILE.format("*"))))
        if saved:
            with open(saved[-1], "rb") as f:
                state = cloudpickle.load(f)
            self.pending = list(state["pending"])
            self._experiment = state["experiment"]
        # The restored experiment's running trials are Tune's to resume: they are not counted
        # here (a trial restored as finished would never be told complete, and would hold a slot).
        self.live = set()
