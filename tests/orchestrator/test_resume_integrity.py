"""Resume never runs a trial with a config it did not draw, and never replaces a finished row
(issue 21 item 1).

Reproduced first (on main before the fix): a sweep whose Tune experiment state is truncated
(a full disk while Tune saved it), then `--resume`: Tune logged "Failed to restore the run
state", dropped its trials, ran a trial with a config it did not draw and wrote it over the
stored rows' count ("all trials done (5 of 4)"). Now the state is checked first
(`tune_state.state_problem`) and the sweep rebuilt from its manifest and rows; the results
writer refuses a row for a trial whose final row is stored.

The end-to-end test fills a small real filesystem (tmpfs) during a sweep, frees it, resumes
after Tune's state file was cut as the full disk left it in the report, and checks every
finished row unchanged and every other trial run with the knobs its Tune trial drew.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.results import load_results

from .small_fs import SmallFs, small_fs, temp_files


def _trial(trial_id: str, result: dict[str, Any]) -> Any:
    return type("T", (), {"trial_id": trial_id, "last_result": result, "config": {}})()


def test_a_finished_trials_row_is_never_replaced_by_another_runs_row(tmp_path: Path) -> None:
    from orchestrator.engine.tune_callbacks import ResultsWriter
    from orchestrator.store.results import append_results
    from tests.rows import result_row

    stored = result_row("s", "t1", 0, test_accuracy=0.91, status="ok")
    append_results(str(tmp_path), [stored])
    writer = ResultsWriter(
        storage=str(tmp_path), sweep_id="s", sweep_name="s", task="digits", code_version="v",
        constraints=(), total=2, progress=None, done={"ok": 1, "failed": 0},
        final=frozenset({"t1"}),
    )  # fmt: skip
    # Another run comes to trial id t1 again (not a replay of its row): its row is refused.
    writer.on_trial_complete(
        0, [], _trial("t1", {"final": True, "status": "ok", "test_accuracy": 0.1})
    )
    writer.on_trial_error(0, [], _trial("t1", {}))
    writer.on_trial_complete(
        0, [], _trial("t2", {"final": True, "status": "ok", "test_accuracy": 0.5})
    )
    rows = {r["trial_id"]: r for r in load_results(str(tmp_path)).to_pylist()}
    assert set(rows) == {"t1", "t2"}
    assert rows["t1"]["test_accuracy"] == pytest.approx(0.91)
    assert rows["t1"]["finished_at"] == stored["finished_at"]
    assert writer.kept == ["t1"] and writer.counts["ok"] == 2


def test_a_storage_fault_stops_the_writer_and_writes_nothing_more(tmp_path: Path) -> None:
    from orchestrator.engine.tune_callbacks import ResultsWriter
    from orchestrator.store.faults import StorageFault

    writer = ResultsWriter(
        storage=str(tmp_path), sweep_id="s", sweep_name="s", task="digits", code_version="v",
        constraints=(), total=2, progress=None,
    )  # fmt: skip
    fault = "storage is full (no space left on device): could not write x; free space on it"
    with pytest.raises(StorageFault, match="is full"):  # Tune marks that trial errored
        writer.on_trial_complete(
            0, [], _trial("t1", {"final": True, "status": "error", "storage_fault": fault})
        )
    assert writer.fault is not None
    writer.on_trial_complete(0, [], _trial("t2", {"final": True, "status": "ok"}))
    writer.on_trial_error(0, [], _trial("t1", {}))
    assert not (tmp_path / "results").exists()  # no error row for t1, nothing for t2


# --- end to end: a full disk during a real sweep, then --resume -------------------------------

SPACE = """
name: diskfull
task: blobs
pipeline: [teacher, distill, prune, quantize]
params:
  teacher.epochs: 1
  distill.epochs: 1
  prune.ratio: {choice: [0.2, 0.4, 0.6]}
  quantize.mode: {choice: [none, dynamic_int8]}
search: {algorithm: optuna, trials: 6, seed: 0, max_concurrent: 1}
latency: {warmup: 1, repeats: 3}
"""
TRIALS = 6
KNOBS = {"prune.ratio": {0.2, 0.4, 0.6}, "quantize.mode": {"none", "dynamic_int8"}}


def _tune_configs(storage: Path) -> dict[str, dict[str, Any]]:
    """Trial id -> the knobs its Tune trial drew, over every Tune experiment of the storage,
    read from the trial directories' names (`trial_function_<id>_<n>_prune_ratio=0.4000,
    quantize_mode=none_<date>`): the state files may be cut short by the full disk."""
    configs: dict[str, dict[str, Any]] = {}
    for path in glob.glob(str(storage / "tune" / "*" / "trial_function_*")):
        match = re.match(r"trial_function_([0-9a-f]+)_\d+_(.*)_\d{4}-\d\d-\d\d_", Path(path).name)
        assert match is not None, path
        knobs = dict(pair.split("=") for pair in match[2].split(","))
        configs[match[1]] = {
            "prune.ratio": float(knobs["prune_ratio"]),
            "quantize.mode": knobs["quantize_mode"],
        }
    return configs


@pytest.fixture
def disk(tmp_path: Path) -> Any:
    with small_fs(tmp_path / "disk", size="48m") as fs:
        yield fs


@pytest.mark.slow
def test_disk_full_during_a_sweep_then_resume_keeps_rows_and_runs_drawn_knobs(
    disk: SmallFs, tmp_path: Path, ray_session: None
) -> None:
    from orchestrator.engine.sweep import run_sweep
    from orchestrator.store.faults import StorageFault

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = disk.root / "results"

    def fill_after_two(event: str, data: Any) -> None:
        if event == "done" and data["counts"]["ok"] + data["counts"]["failed"] == 2:
            disk.fill()

    with pytest.raises(StorageFault) as info:
        run_sweep(space, storage=str(storage), sweep_id="full-a", progress=fill_after_two)
    message = str(info.value)
    assert "is full" in message and str(storage) in message and "\n" not in message
    assert "squeezeray sweep --resume --sweep-id full-a" in message
    assert [p for p in temp_files(storage) if "/tune/" not in str(p)] == []
    before = {r["trial_id"]: r for r in load_results(str(storage)).to_pylist()}
    assert len([t for t in before if t != "baseline"]) == 2
    # No claim left without its owner by a write the full disk refused (it held its stage key
    # for claims.STALE_S: the resume below waited 120 s for it).
    claims = list((storage / "cache" / ".claims").glob("*.claim"))
    assert all(p.stat().st_size > 0 for p in claims), claims

    disk.free()
    # Tune's newest experiment state cut short, as the full disk left it in the report (it
    # usually is already: Tune copies it to the storage without a temp file).
    newest = Path(max(glob.glob(str(storage / "tune" / "full-a" / "experiment_state-*.json"))))
    newest.write_bytes(newest.read_bytes()[:300])
    table = run_sweep(None, storage=str(storage), sweep_id="full-a", resume=True).table

    after = {r["trial_id"]: r for r in table.to_pylist()}
    trials = {t: r for t, r in after.items() if t != "baseline"}
    assert len(trials) == TRIALS, sorted(trials)
    for trial_id, row in before.items():  # finished rows kept as they were
        if trial_id == "baseline":
            continue
        for column in ("started_at", "wall_s", "params", "val_accuracy", "size_bytes", "status"):
            assert after[trial_id][column] == row[column], (trial_id, column)
    # The cut state was not restored: the trials left ran as a new Tune experiment.
    assert len(glob.glob(str(storage / "tune" / "full-a.rebuilt-*"))) == 1
    configs = _tune_configs(storage)
    for trial_id, row in trials.items():  # every trial ran the knobs its Tune trial drew
        assert row["status"] == "ok", row["error"]
        params = json.loads(row["params"])
        assert configs[trial_id] == {k: params[k] for k in KNOBS}, trial_id
        assert all(params[k] in allowed for k, allowed in KNOBS.items()), params
    assert temp_files(storage / "results") == [] and temp_files(storage / "cache") == []


def test_tune_state_that_disagrees_with_the_store_is_not_restored() -> None:
    """Tune counts a trial finished whose row could not be written: restoring would never run
    it again, so the sweep would end short. A row of a trial the state does not list (the
    state is older than the row): restoring would draw it again. Trials a rebuild carried over
    are not the experiment's. The newest state file of each kind is checked."""
    from orchestrator.engine.tune_state import _disagreement, _newest_state_files

    def entry(trial_id: str, status: str) -> list[str]:
        return [json.dumps({"trial_id": trial_id, "status": status}), "{}"]

    state = {
        "trial_data": [entry("a", "TERMINATED"), entry("b", "TERMINATED"), entry("c", "RUNNING")]
    }
    ok, lost = {"status": "ok"}, {"status": "lost"}
    assert _disagreement(state, {"a": ok, "b": ok, "c": lost, "baseline": ok}) is None
    problem = _disagreement(state, {"a": ok, "baseline": ok})
    assert problem is not None and "b" in problem and "no row" in problem
    unknown = _disagreement(state, {"a": ok, "b": ok, "d": ok, "e": lost})
    assert unknown is not None and "trial(s) d," in unknown and "does not list" in unknown
    assert _disagreement(state, {"a": ok, "b": ok, "d": ok}, carried=("d",)) is None
    names = [
        "experiment_state-2026-12-07_00-54-25.json", "experiment_state-2026-12-07_00-55-29.json",
        "searcher-state-2026-12-07_00-54-25.pkl", "tuner.pkl", "trial_function_x",
    ]  # fmt: skip
    assert _newest_state_files(names) == [
        "experiment_state-2026-12-07_00-55-29.json",
        "searcher-state-2026-12-07_00-54-25.pkl",
    ]


def test_grid_search_state_a_pickle_named_json_is_readable(tmp_path: Path) -> None:
    """Tune keeps a grid/random search's state as a pickle named `basic-variant-state-*.json`:
    it loads, so such a sweep is restored, not rebuilt (seen: a resumed grid sweep rebuilt with
    the space's default of 16 trials instead of its 2 grid points)."""
    import cloudpickle
    import pyarrow.fs as pafs

    from orchestrator.engine.tune_state import _load

    path = tmp_path / "basic-variant-state-2026-12-07_01-33-09.json"
    path.write_bytes(cloudpickle.dumps({"_uuid_prefix": "26fc5_"}))
    assert _load(pafs.LocalFileSystem(), str(path)) == {"_uuid_prefix": "26fc5_"}
    state = tmp_path / "experiment_state-2026-12-07_01-33-09.json"
    state.write_text('{"trial_data": []}')
    assert _load(pafs.LocalFileSystem(), str(state)) == {"trial_data": []}


def test_state_files_load_as_tune_writes_them_and_cut_ones_do_not(tmp_path: Path) -> None:
    """Tune pickles its search algorithm's state even under a `.json` name: a sound pickle or
    JSON file loads, the same file cut short (a full disk) is unreadable, naming the file."""
    import cloudpickle
    import pyarrow.fs as pafs

    from orchestrator.engine.tune_state import _load, _Unreadable

    fs = pafs.LocalFileSystem()
    pickled = tmp_path / "search_gen_state-2026-12-07_00-54-25.json"
    pickled.write_bytes(cloudpickle.dumps({"counter": 4, "points": [1.5] * 50}))
    text = tmp_path / "experiment_state-2026-12-07_00-54-25.json"
    text.write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    assert _load(fs, str(pickled))["counter"] == 4
    assert _load(fs, str(text))["trial_data"] == []
    for path in (pickled, text):
        path.write_bytes(path.read_bytes()[:20])
        with pytest.raises(_Unreadable, match=path.name):
            _load(fs, str(path))


def test_a_rebuild_reruns_lost_trials_with_their_knobs_and_saves_which_it_launched(
    tmp_path: Path,
) -> None:
    """`tune_state.lost_reruns`: each lost row with every searched knob is re-run as drawn (a
    lost row without them is left, its place drawn afresh); `RerunLost` yields them first under
    their own ids, within the concurrency limit, and a restored experiment does not launch the
    ones already launched (its state file is one `tune_state` checks)."""
    from orchestrator.engine.rerun_search import RerunLost
    from orchestrator.engine.tune_state import _newest_state_files, lost_reruns

    searched = {"prune.ratio": None, "quantize.mode": None}
    knobs = {"prune.ratio": 0.25, "quantize.mode": "none", "teacher.epochs": 1}
    stored = {
        "baseline": {"status": "lost", "effective_params": {}},
        "a": {"status": "ok", "effective_params": knobs},
        "b": {"status": "lost", "effective_params": knobs},
        "c": {"status": "lost", "effective_params": {"prune.ratio": 0.5}},
    }
    reruns = lost_reruns(stored, searched)
    assert reruns == (("b", {"prune.ratio": 0.25, "quantize.mode": "none"}),)

    class Inner:
        total_samples = 2

        def __init__(self) -> None:
            self.made = 0
            self.told: list[str] = []

        def next_trial(self) -> Any:
            self.made += 1
            return type("T", (), {"trial_id": f"new{self.made}"})()

        def on_trial_complete(self, trial_id: str, **kw: Any) -> None:
            self.told.append(trial_id)

        def is_finished(self) -> bool:
            return self.made >= 2

        def has_checkpoint(self, dirpath: str) -> bool:
            return True

        def save_to_dir(self, dirpath: str, **kw: Any) -> None:
            pass

        def restore_from_dir(self, dirpath: str) -> None:
            pass

    inner = Inner()
    search = RerunLost(inner, [("b", {"prune.ratio": 0.25}), ("d", {"prune.ratio": 0.7})],
                       max_concurrent=1)  # fmt: skip
    made: list[str] = []
    search._rerun_trial = lambda: type("T", (), {"trial_id": search.pending.pop(0)[0]})()  # type: ignore[method-assign]
    made.append(search.next_trial().trial_id)
    assert search.next_trial() is None  # one at a time
    search.save_to_dir(str(tmp_path), session_str="2026-12-07_02-20-00")
    search.on_trial_complete("b", result={})
    made.append(search.next_trial().trial_id)
    search.on_trial_complete("d", result={})
    made += [search.next_trial().trial_id, "-"]
    assert made == ["b", "d", "new1", "-"] and inner.told == [] and search.total_samples == 4
    assert not search.is_finished()

    restored = RerunLost(Inner(), [("b", {}), ("d", {})], max_concurrent=1)
    restored.restore_from_dir(str(tmp_path))
    assert [t for t, _ in restored.pending] == ["d"]  # b was launched before the save
    names = [p.name for p in tmp_path.iterdir()]
    assert _newest_state_files(names) == ["rerun-lost-state-2026-12-07_02-20-00.json"]
