"""ASHA early stopping that judges a stage result once: `SharedStageASHA`, Ray's ASHAScheduler
with a memory of its rung decisions per stage key. This module imports Ray
(`tuner.scheduler` loads it lazily).

Trials that share a stage (the same stage key: the same checkpoint, from the stage cache)
report the very same validation accuracy after it. Plain ASHA judges each report against the
rung's cutoff at the time it arrives, so trials sharing one checkpoint got opposite fates by
arrival order (new user F21). Here the decision made for the first report of a stage key at a
rung is the decision for every later trial reporting that key there:

- CONTINUE stays CONTINUE: the stage result passed its rung once; a cutoff risen since (from
  other stage results) does not make the same checkpoint worse.
- STOP stays STOP: ASHA judges a trial only on the metric it reports at the rung, and a later
  trial sharing the checkpoint brings no new evidence on it. Letting it run on would make the
  fate of its downstream knobs a matter of arrival order, which is what F21 reports; a search
  whose early stage accuracy does not predict the final one should run without the scheduler.

A repeated report also records no second vote for its value in the rung (it is one stage
result): it goes to ASHA with a NaN metric, which ASHA's cutoff (`np.nanpercentile`) leaves
out and which marks the trial as judged at that rung (else its next report would be judged
at this rung's milestone with a later stage's accuracy).

The class is module-level and its memory an attribute, so Tune's saved scheduler state
(`save`/`restore` pickle `__dict__`) keeps it across `--resume`.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler


def shared_stage(result: dict[str, Any], time_attr: str) -> tuple[Any, str] | None:
    """(rung position, stage key) of a trial's report after a stage (`pipeline._report_stage`:
    `stage_keys` ends with the stage just done); None for a final report or one without keys."""
    keys = result.get("stage_keys")
    if result.get("final", True) or not keys or time_attr not in result:
        return None
    return result[time_attr], str(keys[-1])


class SharedStageASHA(ASHAScheduler):  # type: ignore[misc]
    """ASHAScheduler whose decision on a stage key at a rung is made once, for every trial
    that reports that key there (see the module's docstring)."""

    def __init__(self, *, time_attr: str = "training_iteration", **kwargs: Any) -> None:
        super().__init__(time_attr=time_attr, **kwargs)
        self.time_attr = time_attr
        self.decided: dict[tuple[Any, str], str] = {}  # (rung position, stage key) -> action

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        shared = shared_stage(result, self.time_attr)
        if shared is None:
            return str(super().on_trial_result(tune_controller, trial, result))
        if shared in self.decided:
            unvoted = {**result, self.metric: float("nan")}
            super().on_trial_result(tune_controller, trial, unvoted)
            return self.decided[shared]
        action = str(super().on_trial_result(tune_controller, trial, result))
        self.decided[shared] = action
        return action
