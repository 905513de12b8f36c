"""From a prepared sweep to what its trials run, and with which Ray resources.

`sweep_plan` makes the `SweepPlan` every trial turns its sampled knobs into stage requests
with (stage defaults, fixed knobs, code version, device, the directory that makes a user's
task importable in Ray workers); `stage_task_options` are the Ray options of every stage task;
`trial_concurrency` is how many trials run at once.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.engine.pipeline import SweepPlan
from orchestrator.engine.records import PreparedSweep
from orchestrator.engine.runtime import ClusterInfo

# Stages train with a fixed seed: the search seed only drives the sampler, so sweeps and
# nightly runs with other search seeds still share (and reuse) their stages.
TRAINING_SEED = 0


def sweep_plan(sweep: PreparedSweep) -> SweepPlan:
    """The sweep's plan. Selection happens on the validation split: objectives and constraints
    name validation columns (`val_accuracy`, see `orchestrator.space.metrics`); the test
    accuracy is only reported."""
    from orchestrator.engine.keys import code_version, source_version

    space = sweep.space
    return SweepPlan(
        sweep_id=sweep.sweep_id,
        task=space.task,
        pipeline=space.pipeline,
        defaults=stage_defaults(space.pipeline),
        fixed=dict(space.fixed()),
        code_version=code_version(),
        storage=sweep.storage.uri,
        objectives=space.search_objectives(),
        constraints=space.search_constraints(),
        seed=TRAINING_SEED,
        device="cuda" if sweep.gpus_per_trial > 0 else "cpu",
        threads=max(1, int(sweep.cpus_per_trial)),
        sys_path=user_sys_path(space.task),
        latency=asdict(space.latency),
        trial_timeout_s=sweep.trial_timeout_s,
        fingerprint=sweep.fingerprint,
        source_version=source_version(),
    )


def user_sys_path(task: str) -> tuple[str, ...]:
    """The directory that makes a user's `pkg.mod:callable` importable in Ray workers."""
    if ":" not in task:
        return ()
    module = task.partition(":")[0]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ()
    depth = module.count(".") + 1
    root = Path(spec.origin).resolve().parent
    if Path(spec.origin).name == "__init__.py":
        depth += 1
    for _ in range(depth - 1):
        root = root.parent
    return (str(root),)


def stage_defaults(pipeline: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{stage: {param: its default}} for every stage of the pipeline."""
    import dataclasses

    from stages import get_stage

    out = {}
    for stage in pipeline:
        spec = get_stage(stage)
        out[stage] = {
            f.name: f.default
            for f in dataclasses.fields(spec.params)  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING
        }
    return out


def stage_task_options(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, Any]:
    """Ray options of every stage task: the trial's CPUs, and its GPUs when asked for.

    Stage tasks of a GPU sweep also get `device="cuda"` (see SweepPlan); a stage on a node
    without CUDA falls back to CPU (stages.device.resolve_device).
    """
    options: dict[str, Any] = {"num_cpus": cpus_per_trial}
    if gpus_per_trial > 0:
        options["num_gpus"] = gpus_per_trial
    return options


def trial_concurrency(sweep: PreparedSweep, info: ClusterInfo) -> int:
    """Trials at once: `max_concurrent` (the options, else the space), else one trial more
    than there are stage slots. A trial is a serial chain that leaves its slot idle while it
    waits for a stage another trial is computing (a shared KD run); the extra trial fills it
    (digits and digits-cnn: 6% faster than one trial per slot; a fourth trial on 2 CPUs adds
    Tune start-up cost: bench/RESULTS.md §1)."""
    slots = int(info.cpus // sweep.cpus_per_trial)
    if sweep.gpus_per_trial > 0:
        slots = min(slots, int(info.gpus // sweep.gpus_per_trial))
    return sweep.max_concurrent or sweep.space.search.max_concurrent or max(1, slots) + 1
