"""The sweep's ASHA scheduler, driven with fake trials (no Ray cluster): a stage result shared
by several trials (one stage key) gets one rung decision, whatever the arrival order (new user
F21: trials sharing one distill checkpoint were stopped, then a later one ran on)."""

from __future__ import annotations

import dataclasses
from typing import Any

from orchestrator.engine.tuner import scheduler
from orchestrator.space.config import load_space

CONTINUE, STOP = "CONTINUE", "STOP"


@dataclasses.dataclass(frozen=True)
class FakeTrial:
    trial_id: str


def _asha(stages: int = 4) -> Any:
    """The scheduler a sweep with `stages` stages and `scheduler: asha` gets: its first rung is
    after the second stage (grace period 2, reduction factor 2)."""
    space = load_space("tiny")
    pipeline = tuple(f"s{i}" for i in range(stages))
    search = dataclasses.replace(space.search, scheduler="asha")
    return scheduler(dataclasses.replace(space, pipeline=pipeline, search=search))


class Driver:
    """Adds trials and feeds them stage reports shaped as `pipeline._report_stage` makes them."""

    def __init__(self) -> None:
        self.asha = _asha()
        self.trials: dict[str, FakeTrial] = {}

    def report(self, trial_id: str, key: str, acc: float, *, iteration: int = 2) -> str:
        if trial_id not in self.trials:
            self.trials[trial_id] = FakeTrial(trial_id)
            self.asha.on_trial_add(None, self.trials[trial_id])
        keys = [f"k{i}" for i in range(iteration - 1)] + [key]
        result = {
            "training_iteration": iteration,
            "val_accuracy": acc,
            "stage_keys": keys,
            "final": False,
        }
        return str(self.asha.on_trial_result(None, self.trials[trial_id], result))


def test_a_stop_on_a_shared_stage_stops_every_trial_sharing_it() -> None:
    """F21's case: the shared stage is stopped at first; later results lower the rung's cutoff
    (plain ASHA then let a later trial with the same checkpoint run on)."""
    d = Driver()
    assert d.report("t1", "high", 0.95) == CONTINUE
    assert d.report("t2", "shared", 0.88) == STOP
    assert d.report("t3", "low", 0.5) == STOP
    assert d.report("t4", "lower", 0.4) == STOP  # the cutoff is now below 0.88
    assert d.report("t5", "other", 0.89) == CONTINUE  # a new stage result above it goes on
    assert d.report("t6", "shared", 0.88) == STOP


def test_a_continue_on_a_shared_stage_holds_after_the_cutoff_rose() -> None:
    """The other order: the shared stage passed its rung; better results since raise the
    cutoff above it, and later trials sharing it still go on, each judged at the next rung
    on its own stage (not again at this one)."""
    d = Driver()
    assert d.report("t1", "shared", 0.88) == CONTINUE
    assert d.report("t2", "a", 0.95) == CONTINUE
    assert d.report("t3", "b", 0.97) == CONTINUE
    assert d.report("t4", "c", 0.80) == STOP  # the cutoff rose above 0.88
    assert d.report("t5", "shared", 0.88) == CONTINUE
    assert d.report("t6", "shared", 0.88) == CONTINUE
    # t5's next stage is past this rung's milestone and before the next one: not judged here.
    assert d.report("t5", "t5-next", 0.1, iteration=3) == CONTINUE


def test_a_shared_stage_result_is_one_vote_in_its_rung() -> None:
    """Trials repeating a shared stage result do not weigh on the cutoff: with [0.88, 0.95,
    0.97] (and not 0.88 three more times) a new 0.9 is below the median and stops."""
    d = Driver()
    d.report("t1", "shared", 0.88)
    d.report("t2", "a", 0.95)
    d.report("t3", "b", 0.97)
    for trial in ("t4", "t5", "t6"):
        assert d.report(trial, "shared", 0.88) == CONTINUE
    assert d.report("t7", "d", 0.90) == STOP


def test_final_reports_go_to_asha_unchanged() -> None:
    """A trial's final report (after the last stage and measurement) is not a stage result:
    at max_t ASHA ends the trial, as before."""
    d = Driver()
    trial = FakeTrial("t1")
    d.asha.on_trial_add(None, trial)
    final = {"training_iteration": 5, "val_accuracy": 0.9, "stage_keys": ["a"], "final": True}
    assert d.asha.on_trial_result(None, trial, final) == STOP
    assert d.asha.decided == {}
