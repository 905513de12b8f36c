"""How a sweep's trials run under Tune: a new experiment, the interrupted one restored, or -
when its state cannot be restored - a new experiment for the trials still to run.

A resumed sweep restores Tune's experiment (`tuner.restored_tuner`: same trial ids, each
unfinished trial with the config it drew) only when that state can be read and agrees with the
store: Tune's newest `experiment_state-*.json` parses, its searcher state loads, every trial it
counts as finished has its row, and every finished row is of a trial it lists. A truncated file
(a full disk while Tune saved it) or a trial finished without a row would otherwise make Tune
drop its trials and run others under old ids with an empty config (issue 21); a state older
than the rows (the driver killed between two of Tune's saves) would have its searcher draw the
trials it does not list again, under new ids ("all trials done (11 of 6)"). Then the sweep is
rebuilt from the manifest and the stored rows: the trials still to run (the space's count less
the trials with a final row) run as a new Tune experiment (`<sweep id>.rebuilt-<n>`). A `lost`
trial runs again under its own trial id with the knobs its row records
(`rerun_search.RerunLost`), so its new row replaces the `lost` one; only trials never started
are drawn afresh by the search (new trial ids) - Optuna warm-started from the stored rows, grid
search without the points already done or re-run, random search from a seed moved past the
earlier run. Finished rows are kept as they are.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.engine.records import PreparedSweep
from orchestrator.engine.requests import BASELINE_TRIAL
from orchestrator.engine.warm import WarmStart
from orchestrator.store.storage import tune_storage

log = logging.getLogger(__name__)

REBUILT = ".rebuilt-"  # a rebuilt experiment's name: <sweep id>.rebuilt-<n>


def is_final(result: Mapping[str, Any]) -> bool:
    """Whether a stored row (`manifest.stored_results`' value) ends its trial for good: a
    resumed sweep never runs it again, and no other run's row replaces it
    (`tune_callbacks.ResultsWriter`). Every status but those `--resume` runs again
    (`schema.RERUN_STATUSES`: `lost` to an infrastructure failure)."""
    from orchestrator.store.schema import RERUN_STATUSES

    return result.get("status") not in (None, *RERUN_STATUSES)


def final_trials(stored: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """The trial ids whose stored row is final (the baseline row aside)."""
    return frozenset(t for t, r in stored.items() if t != BASELINE_TRIAL and is_final(r))


@dataclass(frozen=True)
class TunePlan:
    """How this run's Tuner is made."""

    experiment: str  # the Tune experiment's name: its directory under <storage>/tune
    restore: bool  # restore that experiment (else a new Tuner under that name)
    trials_left: int | None  # trials the new Tuner draws afresh (None: the search's own count)
    # knob points of the finished and the re-run trials (a rebuild: not drawn again)
    done: tuple[dict[str, Any], ...] = ()
    # (trial id, its knobs) of each lost trial run again as it was drawn (a rebuild)
    reruns: tuple[tuple[str, dict[str, Any]], ...] = ()
    warm_start: WarmStart | None = None  # the finished ok trials, for Optuna (a rebuild)
    # trials with a final row that this experiment did not run (kept from the experiment a
    # rebuild replaced): its state never lists them; the manifest keeps them
    carried: tuple[str, ...] = ()
    note: str = ""  # why the experiment was rebuilt (empty: it was not)


def tune_plan(sweep: PreparedSweep, stored: Mapping[str, Mapping[str, Any]]) -> TunePlan:
    """The plan of a sweep's Tuner: a new sweep runs a new experiment named by its id; a resumed
    one restores its experiment when `state_problem` finds nothing wrong, else is rebuilt."""
    experiment = sweep.tune_experiment or sweep.sweep_id
    if not sweep.resume:
        return TunePlan(experiment=experiment, restore=False, trials_left=None)
    path, fs = tune_storage(sweep.storage, "tune")
    problem = state_problem(f"{path}/{experiment}", fs, stored, carried=sweep.tune_carried)
    if problem is None:
        return TunePlan(
            experiment=experiment, restore=True, trials_left=None, carried=sweep.tune_carried
        )
    return _rebuilt(sweep, stored, problem, path, fs)


def _rebuilt(
    sweep: PreparedSweep, stored: Mapping[str, Mapping[str, Any]], problem: str, path: str, fs: Any
) -> TunePlan:
    from orchestrator.engine.manifest import sweep_table
    from orchestrator.engine.warm import warm_start_from

    finals = final_trials(stored)
    searched = sweep.space.searched()
    reruns = lost_reruns(stored, searched)
    name = _next_name(sweep.sweep_id, path, fs)
    done = tuple(
        {k: v for k, v in stored[t].get("effective_params", {}).items() if k in searched}
        for t in sorted(finals)
    ) + tuple(knobs for _, knobs in reruns)
    left = max(0, sweep.space.search.trials - len(finals) - len(reruns))
    if sweep.space.search.algorithm == "grid":  # the grid's own count: its points not done
        from orchestrator.engine.search import grid_left

        left = len(grid_left(sweep.space, done))
    note = (
        f"Tune's experiment state of sweep {sweep.sweep_id} cannot be restored ({problem}); "
        f"its {len(finals)} finished trial(s) are kept as stored, its {len(reruns)} lost "
        f"trial(s) run again with the knobs they drew, and the {left} trial(s) never started "
        f"are drawn afresh, as Tune experiment {name}"
    )
    log.warning("%s", note)
    return TunePlan(
        experiment=name,
        restore=False,
        trials_left=left,
        done=done,
        reruns=reruns,
        warm_start=warm_start_from(sweep_table(sweep.storage, sweep.sweep_id), sweep.space),
        note=note,
        carried=tuple(sorted(finals)),
    )


def lost_reruns(
    stored: Mapping[str, Mapping[str, Any]], searched: Mapping[str, Any]
) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(trial id, the searched knobs its row records) of each stored `lost` trial, in trial id
    order. A lost row without every searched knob (none is known to be written so) cannot be
    run as drawn: it is left as it is, and its place is drawn afresh."""
    reruns = []
    for trial_id in sorted(stored):
        row = stored[trial_id]
        if trial_id == BASELINE_TRIAL or is_final(row) or row.get("status") is None:
            continue
        params = row.get("effective_params") or {}
        if all(k in params for k in searched):
            reruns.append((trial_id, {k: params[k] for k in searched}))
        else:
            log.warning(
                "lost trial %s has no stored value of every searched knob; its row is kept "
                "and a trial is drawn afresh in its place", trial_id,
            )  # fmt: skip
    return tuple(reruns)


def _next_name(sweep_id: str, path: str, fs: Any) -> str:
    """`<sweep id>.rebuilt-<n>`, n one more than any such experiment already under `path`."""
    import pyarrow.fs as pafs

    filesystem = fs or pafs.LocalFileSystem()
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    prefix = f"{sweep_id}{REBUILT}"
    numbers = [
        int(i.base_name[len(prefix) :])
        for i in infos
        if i.base_name.startswith(prefix) and i.base_name[len(prefix) :].isdigit()
    ]
    return f"{prefix}{max(numbers, default=0) + 1}"


def state_problem(
    experiment_dir: str,
    fs: Any,
    stored: Mapping[str, Mapping[str, Any]],
    *,
    carried: tuple[str, ...] = (),
) -> str | None:
    """Why Tune's experiment in `experiment_dir` cannot be restored as it is, or None when it
    can: no state at all, a newest state file that does not parse (truncated), a searcher
    state that does not load, a trial Tune counts as finished without a final row, or a final
    row of a trial the state does not list (`carried`: trials kept from an experiment a
    rebuild replaced, which it never lists)."""
    from ray import tune

    if not tune.Tuner.can_restore(experiment_dir, storage_filesystem=fs):
        return f"{experiment_dir} holds no Tune experiment state"
    import pyarrow.fs as pafs

    filesystem = fs or pafs.LocalFileSystem()
    infos = filesystem.get_file_info(pafs.FileSelector(experiment_dir))
    state = None
    try:
        for name in _newest_state_files([i.base_name for i in infos]):
            loaded = _load(filesystem, f"{experiment_dir}/{name}")
            state = loaded if name.startswith("experiment_state-") else state
    except _Unreadable as exc:
        return str(exc)
    return _disagreement(state, stored, carried)


# Tune's state files: <kind>-<YYYY-mm-dd_HH-MM-SS>.json|.pkl, one per snapshot; it reads the newest
# of each kind (the experiment state, the search algorithm's and the searcher's).
_STAMPED = re.compile(r"^(?P<kind>.+?)-\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.(json|pkl)$")


def _newest_state_files(names: list[str]) -> list[str]:
    newest: dict[str, str] = {}
    for name in names:
        match = _STAMPED.match(name)
        if match is not None:
            newest[match["kind"]] = max(newest.get(match["kind"], name), name)
    return sorted(newest.values())


_PICKLE = b"\x80"  # the first byte of a pickle (protocol 2 and later)


class _Unreadable(Exception):
    """A Tune state file that does not load (its path and why)."""


def _load(fs: Any, path: str) -> Any:
    """A state file's content (JSON or a pickle), or _Unreadable saying why. The suffix does
    not tell: Tune's grid/random search state is a pickle named `basic-variant-state-*.json`."""
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
        if path.endswith(".json") and not data.startswith(_PICKLE):
            return json.loads(data)
        import cloudpickle

        return cloudpickle.loads(data)
    except Exception as exc:  # truncated JSON, a cut pickle, a missing class: all unreadable
        raise _Unreadable(f"{path} does not load: {type(exc).__name__}: {exc}") from exc


def _disagreement(
    state: Any, stored: Mapping[str, Mapping[str, Any]], carried: tuple[str, ...] = ()
) -> str | None:
    """Where Tune's experiment state and the store disagree: trials Tune counts as finished
    (TERMINATED) without a final row (a restored Tune would never run them again: the sweep
    would end short), or final rows of trials the state does not list (it is older than them:
    its searcher would draw those trials again, and the sweep would end with more rows than
    trials). None when they agree."""
    if not isinstance(state, dict):
        return None
    finals = final_trials(stored)
    missing, listed = [], set()
    for entry in state.get("trial_data") or []:
        try:
            trial = json.loads(entry[0])
        except (TypeError, ValueError, IndexError):
            return "its experiment state lists a trial it cannot read"
        listed.add(trial.get("trial_id"))
        if trial.get("status") == "TERMINATED" and trial.get("trial_id") not in finals:
            missing.append(str(trial.get("trial_id")))
    if missing:
        return (
            f"Tune counts trial(s) {', '.join(sorted(missing))} as finished, but the store has "
            "no row for them (their row could not be written)"
        )
    unknown = sorted(finals - listed - set(carried))
    if unknown:
        return (
            f"the store has the finished row(s) of trial(s) {', '.join(unknown)}, which Tune's "
            "last saved state does not list (it was saved before them: the sweep was stopped "
            "without Tune saving its state)"
        )
    return None
