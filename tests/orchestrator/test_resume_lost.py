"""`--resume` after a fault runs each unfinished trial with the knobs it drew, whether Tune's state
is restored or the sweep is rebuilt (issue 21 item 1).

One real sweep (random search over a continuous knob, so a fresh draw never repeats a drawn
value) is stopped by a storage fault at its third row; the faulted trial's knobs are what its
row would have said. Then, on two copies of its storage:
- restored (Tune's state intact): the faulted trial runs again under its id with its knobs;
- rebuilt (Tune's state cut short, and the second trial's row made `lost`): the lost trial runs
  again under its id with its stored knobs, its new row replacing the `lost` one, and only the
  trial that never got a row is drawn afresh (a new trial id).
In both the first trial's row is unchanged.
"""

from __future__ import annotations

import glob
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.results import load_results

SPACE = """
name: lostrerun
task: blobs
pipeline: [teacher, prune]
params:
  teacher.epochs: 1
  prune.ratio: {uniform: [0.1, 0.8]}
search: {algorithm: random, trials: 3, seed: 0, max_concurrent: 1}
latency: {warmup: 1, repeats: 3, rounds: 0}
"""
KEPT = ("started_at", "finished_at", "params", "val_accuracy", "size_bytes", "status")


def _rows(storage: Path) -> dict[str, dict[str, Any]]:
    rows = load_results(str(storage), sweep="lost").to_pylist()
    return {r["trial_id"]: r for r in rows if not r["is_baseline"]}


def _ratio(row: dict[str, Any]) -> float:
    return float(json.loads(row["params"])["prune.ratio"])


def _faulted_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Any]]:
    """The sweep stopped by a storage fault at its third trial's row; (storage, that row)."""
    import orchestrator.store.results as results
    from orchestrator.engine.sweep import run_sweep
    from orchestrator.store.faults import StorageFault

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "store"
    real, refused = results.append_results, []

    def append(uri: str, rows: list[dict[str, Any]]) -> Any:
        if any(r["trial_id"] != "baseline" for r in rows) and len(_rows_or_none(storage)) == 2:
            refused.extend(rows)
            raise StorageFault(f"storage is full (no space left on device): could not write {uri}")
        return real(uri, rows)

    monkeypatch.setattr(results, "append_results", append)
    with pytest.raises(StorageFault):
        run_sweep(space, storage=str(storage), sweep_id="lost")
    monkeypatch.setattr(results, "append_results", real)
    assert len(refused) == 1 and len(_rows(storage)) == 2
    return storage, refused[0]


def _rows_or_none(storage: Path) -> dict[str, dict[str, Any]]:
    return _rows(storage) if (storage / "results").exists() else {}


def _make_lost(storage: Path, row: dict[str, Any]) -> None:
    """The row of a trial Ray failed under: same trial and knobs, status lost, written later."""
    from orchestrator.store.results import append_results

    lost = {
        **row,
        "status": "lost",
        "error": "lost to an infrastructure failure (ActorDiedError); its model did not fail",
        "finished_at": row["finished_at"] + timedelta(seconds=1),
    }
    append_results(str(storage), [lost])
    assert _rows(storage)[row["trial_id"]]["status"] == "lost"


@pytest.mark.slow
def test_resume_reruns_unfinished_and_lost_trials_with_their_drawn_knobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_session: None
) -> None:
    from orchestrator.engine.sweep import run_sweep

    storage, faulted = _faulted_sweep(tmp_path, monkeypatch)
    first, second = sorted(_rows(storage).values(), key=lambda r: r["started_at"])
    copy = tmp_path / "copy"
    shutil.copytree(storage, copy)

    # Restored: Tune's state is sound; the faulted trial runs again as it was drawn.
    run_sweep(None, storage=str(storage), sweep_id="lost", resume=True)
    after = _rows(storage)
    assert set(after) == {first["trial_id"], second["trial_id"], faulted["trial_id"]}
    assert not glob.glob(str(storage / "tune" / "lost.rebuilt-*"))
    for row in (first, second):
        assert {c: after[row["trial_id"]][c] for c in KEPT} == {c: row[c] for c in KEPT}
    rerun = after[faulted["trial_id"]]
    assert rerun["status"] == "ok", rerun["error"]
    assert _ratio(rerun) == _ratio(faulted)

    # Rebuilt: Tune's state cut short and the second trial lost to Ray.
    _make_lost(copy, second)
    newest = Path(max(glob.glob(str(copy / "tune" / "lost" / "experiment_state-*.json"))))
    newest.write_bytes(newest.read_bytes()[:300])
    run_sweep(None, storage=str(copy), sweep_id="lost", resume=True)
    after = _rows(copy)
    assert len(glob.glob(str(copy / "tune" / "lost.rebuilt-*"))) == 1
    assert len(after) == 3 and first["trial_id"] in after and second["trial_id"] in after
    assert {c: after[first["trial_id"]][c] for c in KEPT} == {c: first[c] for c in KEPT}
    again = after[second["trial_id"]]
    assert again["status"] == "ok", again["error"]  # its row replaces the lost one
    assert _ratio(again) == _ratio(second) and again["finished_at"] > second["finished_at"]
    (fresh,) = [r for t, r in after.items() if t not in (first["trial_id"], second["trial_id"])]
    assert fresh["status"] == "ok" and fresh["trial_id"] != faulted["trial_id"]
    assert _ratio(fresh) not in (_ratio(first), _ratio(second))


def test_a_finished_sweep_with_lost_rows_is_resumed_not_called_done(tmp_path: Path) -> None:
    """A sweep can finish with `lost` rows (the cache actor gone for good; its summary says
    `--resume` runs them again): `--resume` then runs them, where it used to say "already
    finished: nothing is left to resume". Without lost rows a finished sweep stays done."""
    from orchestrator.engine.manifest import write_manifest
    from orchestrator.engine.sweep import prepare_sweep
    from orchestrator.store.results import append_results
    from tests.rows import result_row

    storage = tmp_path / "runs"
    first = prepare_sweep("tiny", storage=storage, sweep_id="t")
    write_manifest(first.storage, first, status="finished")
    append_results(str(storage), [result_row("t", "baseline"), result_row("t", "a", 1)])
    assert prepare_sweep(None, storage=storage, resume=True, sweep_id="t").finished
    append_results(str(storage), [result_row("t", "b", 2, status="lost")])
    assert not prepare_sweep(None, storage=storage, resume=True, sweep_id="t").finished


def test_a_rebuilt_grid_reruns_its_lost_point_and_draws_only_the_points_never_run(
    tmp_path: Path,
) -> None:
    """The plan of a rebuilt resume (no readable Tune state) of a 3-point grid with one ok and
    one lost point: the lost point re-run under its id, one point left (not the space's default
    trial count, which the note used to say), the two others out of the grid."""
    import dataclasses

    from orchestrator.engine.search import grid_left
    from orchestrator.engine.sweep import prepare_sweep
    from orchestrator.engine.tune_state import tune_plan

    space = tmp_path / "grid.yaml"
    space.write_text(SPACE.replace("{uniform: [0.1, 0.8]}", "{choice: [0.2, 0.4, 0.6]}")
                     .replace("algorithm: random, trials: 3", "algorithm: grid"))  # fmt: skip
    sweep = prepare_sweep(str(space), storage=tmp_path / "runs", sweep_id="g")
    knobs = {"prune.ratio": 0.4, "teacher.epochs": 1}
    stored = {
        "g_0": {"status": "ok", "effective_params": {**knobs, "prune.ratio": 0.2}},
        "g_1": {"status": "lost", "effective_params": knobs},
    }
    plan = tune_plan(dataclasses.replace(sweep, resume=True), stored)
    assert not plan.restore and plan.experiment == "g.rebuilt-1"
    assert plan.reruns == (("g_1", {"prune.ratio": 0.4}),)
    assert plan.trials_left == 1 and "the 1 trial(s) never started" in plan.note
    assert grid_left(sweep.space, plan.done) == [{"prune.ratio": 0.6}]
