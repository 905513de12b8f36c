"""Stage keys: what makes two stage executions the same."""

from __future__ import annotations

from orchestrator.engine.keys import canonical_params, code_version, stage_key

BASE = {"stage": "distill", "params": {"temperature": 4.0}, "parent_key": "p", "task": "digits"}


def key(**changes: object) -> str:
    args = {**BASE, "version": "v1", "seed": 0, **changes}
    return stage_key(**args)  # type: ignore[arg-type]


def test_every_ingredient_changes_the_key() -> None:
    base = key()
    assert key() == base
    for change in (
        {"stage": "finetune"},
        {"params": {"temperature": 8.0}},
        {"parent_key": "q"},
        {"task": "blobs"},
        {"version": "v2"},
        {"seed": 1},
    ):
        assert key(**change) != base, change


def test_equal_numbers_give_equal_keys() -> None:
    assert canonical_params({"t": 4, "a": 0.5}) == canonical_params({"a": 0.5, "t": 4.0})
    assert key(params={"temperature": 4}) == key(params={"temperature": 4.0})


def test_code_version_is_stable() -> None:
    assert code_version() == code_version() and len(code_version()) == 12


def test_fingerprint_changes_the_key_and_empty_keeps_old_keys() -> None:
    assert key(fingerprint="") == key()
    assert key(fingerprint="abc") != key()
    assert key(fingerprint="abc") != key(fingerprint="abd")


def test_fingerprint_parts_recompute_from_the_first_stage_they_affect() -> None:
    """The teacher's architecture/weights, the data and the device key the teacher stage; the
    student's key distillation; later stages inherit both through their parent's key."""
    from orchestrator.engine.pipeline import SweepPlan

    fp = {"teacher": "t1", "student": "s1", "data": "d1"}

    def keys(device: str = "cpu", **changes: str) -> list[str]:
        plan = SweepPlan(
            sweep_id="s",
            task="pkg.mod:make",
            pipeline=("teacher", "distill", "prune"),
            defaults={"teacher": {}, "distill": {}, "prune": {"ratio": 0.5}},
            fixed={},
            code_version="v",
            storage="/tmp/x",
            objectives=(("val_accuracy", "max"),),
            device=device,
            fingerprint={**fp, **changes},
        )
        return [r.key for r in plan.requests({}, trial_id="t")]

    base = keys()
    assert keys() == base
    for change in ({"teacher": "t2"}, {"data": "d2"}):
        assert all(a != b for a, b in zip(keys(**change), base, strict=True)), change
    assert all(a != b for a, b in zip(keys(device="cuda"), base, strict=True))
    student = keys(student="s2")
    assert student[0] == base[0]  # the teacher is reused
    assert student[1] != base[1] and student[2] != base[2]


def test_worker_check_compares_the_parts_a_stage_reads() -> None:
    """A worker's copy of the task must match the driver's fingerprint (no Ray needed)."""
    import dataclasses

    import pytest

    from orchestrator.engine.pipeline import SweepPlan
    from orchestrator.engine.stage_tasks import check_same_task
    from stages.errors import SqueezerayError
    from stages.fingerprint import task_fingerprint
    from stages.tasks import load_task

    fp = task_fingerprint(load_task("blobs")).as_dict()
    plan = SweepPlan(
        sweep_id="s",
        task="blobs",
        pipeline=("teacher", "distill", "prune"),
        defaults={"teacher": {}, "distill": {}, "prune": {}},
        fixed={},
        code_version="v",
        storage="/tmp/x",
        objectives=(("val_accuracy", "max"),),
        fingerprint=fp,
    )
    teacher, distill, prune = plan.requests({}, trial_id="t")
    assert set(teacher.fingerprint) == {"teacher", "data"}
    assert set(distill.fingerprint) == {"student", "data"}
    assert prune.fingerprint == {}
    check_same_task(teacher)
    check_same_task(distill)
    other = dataclasses.replace(teacher, fingerprint={**teacher.fingerprint, "data": "0" * 16})
    with pytest.raises(SqueezerayError, match=r"its data on this worker .* differ"):
        check_same_task(other)
