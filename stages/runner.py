"""The stage runner: every stage runs through `run_stage`, which enforces the stage contract.

A stage function holds only its own behaviour; what every stage needs and promises is
declared on its `StageSpec` (`stages.base`) and checked here, the same way for all of them:

before the stage runs (a SqueezerayError naming the stage and the fix, before any work):
- the device: `StageInput.device` resolved once (`stages.device.resolve_device`: a bad name
  is refused; `auto`/`cuda` without CUDA give CPU), the stage gets the resolved name;
- the parent: present when `needs_parent` (with `teacher_as_parent`, the teacher stands in
  for a missing parent); a float torch model when `float_parent_fix` is set;
- the teacher: present when `needs_teacher(params)` names a setting that reads it;

after it returns:
- the metrics: every key of `StageSpec.metrics` is in `StageOutput.metrics`;
- the checkpoint round trip: its bytes load `weights_only` and rebuild into the model the
  stage computed (`stages.selfcheck.check_output`).

The orchestrator's stage task (`orchestrator.engine.stage_tasks.execute_stage`) calls
`run_stage`, so a SqueezerayError raised here is that stage's error row and nothing is cached.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from stages.base import StageInput, StageOutput, StageSpec
from stages.device import resolve_device
from stages.errors import SqueezerayError
from stages.heap import trim
from stages.selfcheck import CheckpointFile, check_output


def run_stage(
    spec: StageSpec[Any],
    inp: StageInput,
    params: Any,
    *,
    timing: dict[str, float] | None = None,
    into: CheckpointFile | None = None,
) -> tuple[StageOutput, memoryview | None]:
    """Run `spec` on `inp` with `params` under its contract; return its output and the
    checkpoint bytes (a read-only view, `ModelCheckpoint.to_buffer`) that were checked to
    rebuild into `out.model` -- or None with `into`: the checkpoint was written to its file,
    and that file was checked (`check_output`). `timing`, when given, receives run_s and
    run_cpu_s: the wall and CPU seconds of the stage function alone (what a hand-written loop
    would spend).

    Raises SqueezerayError (naming the stage) for an input the contract refuses, a missing
    metric, or a checkpoint that does not rebuild; the stage's own errors pass through.
    """
    inp = check_input(spec, inp, params)
    task = inp.task
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = spec.run(inp, params)
    if timing is not None:  # the stage's own compute, apart from the contract's checks
        timing["run_s"] = time.perf_counter() - wall0
        timing["run_cpu_s"] = time.process_time() - cpu0
    # The input checkpoints (a KD teacher, the parent) are garbage from here when the caller
    # kept no reference (the stage task does not): freed before the self-check's rebuild.
    del inp
    trim()  # and the pages the stage freed (gradients, optimizer moments) go back to the OS
    check_metrics(spec, out)
    return out, check_output(task, spec.name, out, into=into)


def check_input(spec: StageSpec[Any], inp: StageInput, params: Any) -> StageInput:
    """`inp` as the stage gets it (device resolved, the teacher standing in for a missing
    parent where the spec says so); SqueezerayError when the contract refuses it."""
    name = spec.name
    inp = replace(inp, device=str(resolve_device(inp.device)))
    if spec.teacher_as_parent and inp.parent is None:
        inp = replace(inp, parent=inp.teacher)
    parent = inp.parent
    if spec.needs_parent and parent is None:
        needed = (
            "a teacher checkpoint (its parent, or StageInput.teacher)"
            if spec.teacher_as_parent
            else "a parent checkpoint (StageInput.parent is None)"
        )
        raise SqueezerayError(f"stage {name!r} needs {needed}; {spec.parent_fix}")
    if (
        spec.float_parent_fix
        and parent is not None
        and (parent.quantize != "none" or parent.onnx is not None)
    ):
        raise SqueezerayError(
            f"stage {name!r} needs a float model, and its parent is already quantized or "
            f"exported (quantize={parent.quantize!r}, runtime={parent.runtime!r}); "
            f"{spec.float_parent_fix}"
        )
    setting = spec.needs_teacher(params) if spec.needs_teacher is not None else None
    if setting and inp.teacher is None:
        raise SqueezerayError(
            f"{setting} needs the teacher checkpoint (StageInput.teacher) and none was given; "
            f"{spec.teacher_fix}"
        )
    return inp


def check_metrics(spec: StageSpec[Any], out: StageOutput) -> None:
    """Every metric the spec promises is in the output (a missing one is a bug in the stage)."""
    missing = [key for key in spec.metrics if key not in out.metrics]
    if missing:
        raise SqueezerayError(
            f"stage {spec.name!r} did not report the metric(s) {', '.join(missing)} that its "
            f"spec promises ({', '.join(spec.metrics)}); it reported "
            f"{', '.join(sorted(out.metrics)) or 'none'}: this is a bug in the stage, please "
            "report it"
        )


__all__ = ["check_input", "check_metrics", "run_stage"]
