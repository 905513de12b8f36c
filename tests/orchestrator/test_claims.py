"""On-disk stage claims (`orchestrator.store.claims`) between claimants, the cache actor's
wait for a stage another sweep claimed (its logic, driven directly), and which failures are
the infrastructure's (`orchestrator.engine.faults`). The sweeps themselves, through Ray, are
in test_cache_faults.py."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator.engine.faults import (
    is_infrastructure_error,
    lost_message,
    names_infrastructure_error,
)
from orchestrator.store.claims import StageClaims
from orchestrator.store.storage import CACHE_DIR, open_storage

KEY = "k" * 16


def _claimants(tmp_path: Path, n: int = 2) -> list[StageClaims]:
    store = open_storage(tmp_path / "store", create=True)
    return [StageClaims(store, token=f"sweep{i}") for i in range(n)]


def test_a_claimed_key_is_refused_to_a_second_claimant_until_released(tmp_path: Path) -> None:
    first, second = _claimants(tmp_path)
    assert first.acquire(KEY)
    assert not second.acquire(KEY)
    holder = second.holder(KEY)
    assert holder is not None and holder.token == "sweep0" and holder.pid == os.getpid()
    first.refresh()  # the heartbeat keeps it
    assert not second.acquire(KEY)
    first.release(KEY)
    assert second.acquire(KEY)
    assert second.holder(KEY).token == "sweep1"  # type: ignore[union-attr]


def test_only_one_of_many_racing_claimants_wins(tmp_path: Path) -> None:
    claimants = _claimants(tmp_path, 8)
    barrier = threading.Barrier(len(claimants))
    won: list[bool] = [False] * len(claimants)

    def race(i: int) -> None:
        barrier.wait()
        won[i] = claimants[i].acquire(KEY)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(claimants))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1


def test_a_claim_whose_owner_died_is_taken_over(tmp_path: Path) -> None:
    """A claim written by a process that has since exited (a killed cache actor, on this
    host) is stale: the next claimant takes it over at once."""
    _, second = _claimants(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    path = second.path(KEY)
    path.parent.mkdir(parents=True)
    owner = {"pid": int(dead.stdout), "host": second.owner.host, "token": "x", "claimed_at": 0.0}
    path.write_text(json.dumps(owner))
    assert second.is_stale(KEY)
    assert second.acquire(KEY)
    assert second.holder(KEY).token == "sweep1"  # type: ignore[union-attr]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing left behind


def test_a_silent_claim_from_another_host_goes_stale_by_age(tmp_path: Path) -> None:
    """Another host's pid cannot be checked: its claim is live while it is touched, stale once
    it has not been for `stale_s`."""
    (claims,) = _claimants(tmp_path, 1)
    path = claims.path(KEY)
    path.parent.mkdir(parents=True)
    owner = {"pid": 1, "host": "elsewhere", "token": "x", "claimed_at": 0.0}
    path.write_text(json.dumps(owner))
    assert not claims.acquire(KEY)
    old = path.stat().st_mtime - 10 * claims.stale_s
    os.utime(path, (old, old))
    assert claims.acquire(KEY)


def test_a_claim_that_could_not_be_written_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the claim's write after its file was created: the empty file goes
    (left, it had no owner to judge and held the key for `stale_s`: a resume after a full
    disk waited 120 s for it, tests/orchestrator/test_resume_integrity.py)."""
    first, second = _claimants(tmp_path)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("orchestrator.store.claims.json.dump", full)
        with pytest.raises(OSError, match="No space"):
            first.acquire(KEY)
    assert not first.path(KEY).exists() and KEY not in first.held
    assert second.acquire(KEY)


def test_release_leaves_a_claim_someone_else_took_over(tmp_path: Path) -> None:
    first, second = _claimants(tmp_path)
    assert first.acquire(KEY)
    old = first.path(KEY).stat().st_mtime - 10 * second.stale_s
    os.utime(first.path(KEY), (old, old))  # first went silent: second takes over
    assert second.acquire(KEY)
    first.release(KEY)
    assert second.holder(KEY).token == "sweep1"  # type: ignore[union-attr]


def test_object_stores_have_no_claims_and_every_claimant_computes(tmp_path: Path) -> None:
    store = open_storage("memory://claims-test/store", create=True)
    first, second = StageClaims(store), StageClaims(store)
    assert not first.supported
    assert first.acquire(KEY) and second.acquire(KEY)
    assert first.holder(KEY) is None


# --- the cache actor's wait for another sweep's stage (its logic, without the actor) ----------


def _write_checkpoint(store_root: Path, key: str) -> None:
    """A stage checkpoint as `stage_tasks.execute_stage` writes it: data, then manifest."""
    data = b"model bytes"
    cache = store_root / CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{key}.ckpt").write_bytes(data)
    info = {"key": key, "sha256": hashlib.sha256(data).hexdigest()}
    (cache / f"{key}.json").write_text(json.dumps(info))


@pytest.mark.usefixtures("ray_session")
def test_a_second_cache_waits_for_the_stage_another_claimed_then_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from orchestrator.engine import cache as cache_module

    monkeypatch.setattr(cache_module, "POLL_S", 0.05)
    root = tmp_path / "store"
    caches = [
        cache_module._StageCache(str(root), sweep_id, stage_options={}, measure_options={})
        for sweep_id in ("a", "b")
    ]

    async def scenario() -> tuple[object, object, bool]:
        mine = await caches[0]._load_or_claim(KEY)  # a claims it: a computes it
        waiting = asyncio.ensure_future(caches[1]._load_or_claim(KEY))
        await asyncio.sleep(0.5)
        still_waiting = not waiting.done()
        _write_checkpoint(root, KEY)  # a's stage finishes: checkpoint, then its claim freed
        caches[0].claims.release(KEY)
        return mine, await asyncio.wait_for(waiting, timeout=10), still_waiting

    mine, loaded, still_waiting = asyncio.run(scenario())
    assert mine is None and still_waiting
    assert loaded is not None
    stored = ray.get(loaded[0])  # a local storage's checkpoint travels as its file
    assert Path(stored.path).read_bytes() == b"model bytes" and stored.nbytes == 11
    assert caches[1].waited == [KEY] and caches[1].loaded == [KEY]
    assert caches[0].claims.held == set() and caches[1].claims.held == set()


# --- which failures are the infrastructure's ---------------------------------------------------


def test_ray_infrastructure_errors_are_told_from_the_trials_own() -> None:
    from ray import exceptions as rex

    owner_died = rex.OwnerDiedError("ab" * 14, None, "call site")
    assert is_infrastructure_error(rex.ActorDiedError())
    assert is_infrastructure_error(owner_died)
    assert is_infrastructure_error(rex.NodeDiedError("node gone"))
    wrapped = RuntimeError("while loading the parent")
    wrapped.__cause__ = owner_died
    assert is_infrastructure_error(wrapped)
    # The trial's own: a stage that raised, a worker that died on every retry, OOM.
    assert not is_infrastructure_error(ValueError("bad model"))
    assert not is_infrastructure_error(rex.WorkerCrashedError())
    assert not is_infrastructure_error(rex.OutOfMemoryError("oom"))
    # Tune's error text of a coordinator: its last line names the exception.
    assert names_infrastructure_error("Traceback ...\nray.exceptions.ActorDiedError: it died")
    assert not names_infrastructure_error("Traceback ...\nValueError: bad")
    assert "--resume" in lost_message("stage distill", "OwnerDiedError: x")


def test_a_ray_failure_reaching_the_driver_is_one_line_with_the_resume_command(
    tmp_path: Path,
) -> None:
    from ray import exceptions as rex

    from orchestrator.engine.sweep import SweepLostToRay, _with_resume_hint, prepare_sweep
    from stages.errors import SqueezerayError

    sweep = prepare_sweep("tiny", storage=tmp_path / "store", sweep_id="s1")
    hinted = _with_resume_hint(sweep, rex.ActorDiedError())
    assert isinstance(hinted, SweepLostToRay) and isinstance(hinted, SqueezerayError)  # exit 2
    message = str(hinted)
    assert message.startswith("sweep s1 stopped: Ray failed under it (ActorDiedError")
    assert "squeezeray sweep --resume --sweep-id s1 --storage" in message
    assert "\n" not in message
    plain = ValueError("not Ray's")
    assert _with_resume_hint(sweep, plain) is plain
