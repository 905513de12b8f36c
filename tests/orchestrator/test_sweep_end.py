"""How a sweep's end is told (no Ray): its exit code by what its trials did, and the line that
names a code change under a running sweep from a lost trial's error."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from orchestrator.engine.progress import _print_notes
from orchestrator.engine.records import EXIT_LOST_TRIALS, EXIT_NO_TRIAL_OK, SweepSummary
from orchestrator.engine.summary import code_change_note, end_reason
from orchestrator.store.schema import LOST

# What a worker that imported newer code said (a user's report, word for word).
UNPICKLE_ERROR = (
    "trial stage prune: lost to an infrastructure failure (RaySystemError: System error: "
    "Can't get attribute 'StoredCheckpoint' on <module 'orchestrator.engine.requests' from "
    "'/src/orchestrator/engine/requests.py'>); its model did not fail. `squeezeray sweep "
    "--resume` runs it again"
)


def _end(statuses: list[str], **kw: Any) -> tuple[str, int]:
    return end_reason(
        interrupted=kw.get("interrupted", False), statuses=statuses, total=len(statuses),
        budget_s=None, out_of_time=False, wall_s=1.0,
    )  # fmt: skip


def test_exit_code_is_zero_only_for_a_complete_sweep() -> None:
    assert _end(["ok", "ok", "error"])[1] == 0  # an error row is final: the sweep is complete
    ended, code = _end(["ok", "ok", LOST, LOST])
    assert code == EXIT_LOST_TRIALS == 5, ended
    assert "2 lost to infrastructure failures" in ended and "--resume" in ended
    assert _end([LOST, LOST])[1] == EXIT_NO_TRIAL_OK  # no trial ok stays 4
    assert _end(["ok", LOST], interrupted=True)[1] == 2


def test_code_change_is_named_from_an_unpickling_error_or_versions() -> None:
    note = code_change_note([UNPICKLE_ERROR], driver="aaaa11112222", worker="bbbb33334444")
    assert note.startswith(
        "the code changed while the sweep ran (driver aaaa11112222, worker bbbb33334444): "
        "once the code is stable, run the sweep again (--resume does not rerun failed trials"
    )
    # --resume is offered only for lost trials, which it does run again (new user F3: it was
    # offered for failed ones, and --resume then said "already finished")
    lost = code_change_note([UNPICKLE_ERROR], driver="a", worker="b", lost=True)
    assert "--resume runs the lost trials again" in lost
    # The error alone says it even when the code came back to what the driver had.
    same = code_change_note([UNPICKLE_ERROR], driver="aaaa11112222", worker="aaaa11112222")
    assert same.startswith("the code changed while the sweep ran (driver aaaa11112222, worker ")
    imported = "ModuleNotFoundError: No module named 'orchestrator.engine.gone'"
    assert code_change_note([imported], driver="a", worker="a")
    # Versions that differ, with an unrelated error: still the likeliest cause, said.
    changed = code_change_note(["ValueError: nan loss"], driver="a", worker="b")
    assert "driver a, worker b" in changed
    # An ordinary failure with the same code says nothing; nor does a sweep without failures.
    assert code_change_note(["ValueError: nan loss"], driver="a", worker="a") == ""
    assert code_change_note(["No module named 'mytask'"], driver="a", worker="a") == ""
    assert code_change_note([], driver="a", worker="b") == ""


def test_the_summary_prints_the_code_change_line() -> None:
    console = Console(record=True, width=200)
    note = code_change_note([UNPICKLE_ERROR], driver="a1", worker="b2")
    summary = SweepSummary(
        sweep_id="s", storage="runs", trials_ok=2, trials_failed=2, stages_executed=1,
        stages_loaded=0, stage_requests=4, corrupt_checkpoints=0, wall_s=1.0, interrupted=False,
        trials_lost=2, exit_code=EXIT_LOST_TRIALS, most_common_error=UNPICKLE_ERROR,
        code_changed=note,
    )  # fmt: skip
    _print_notes(summary, None, console)  # type: ignore[arg-type]
    text = console.export_text()
    assert "the code changed while the sweep ran (driver a1, worker b2)" in text


def test_an_interrupted_final_phase_ends_with_exit_2_and_says_resume_re_measures() -> None:
    """Ctrl-C in the final latency phase (new user F15): the sweep is interrupted (2), said as
    such, and its message says every trial is saved and the resume re-measures the front."""
    from orchestrator.engine.records import SweepInterrupted

    ended, code = end_reason(
        interrupted=True, statuses=["ok", "ok"], total=2, budget_s=None, out_of_time=False,
        wall_s=1.0, final_interrupted=True,
    )  # fmt: skip
    assert code == 2
    assert (
        ended == "interrupted (Ctrl-C or SIGTERM) in the final latency phase, after 2 of 2 trials"
    )
    command = "squeezeray sweep --resume --sweep-id s1 --storage /r"
    summary = SweepSummary(
        sweep_id="s1", storage="/r", trials_ok=2, trials_failed=0, stages_executed=2,
        stages_loaded=0, stage_requests=2, corrupt_checkpoints=0, wall_s=1.0, interrupted=True,
        resume_command=command, latency_final_interrupted=True,
    )  # fmt: skip
    message = str(SweepInterrupted(summary))
    assert "interrupted in its final latency phase: all 2 trials are saved" in message
    assert message.endswith(f"To re-measure the front (no trial runs again), run: {command}")
