"""Memory requests of stage and measure tasks, sized from the task's model (issue 24).

Ray schedules by CPUs only unless a task asks for `memory`: two 150M-parameter distill tasks on
one 24 GB node could each pass the CPU check and together run it out of memory. A sweep whose
model is large (`REQUEST_FROM_BYTES` float bytes or more) gives every stage task a `memory=`
request of `STAGE_COPIES` model copies plus a worker's own footprint, and every measure task
`MEASURE_COPIES` copies, so Ray runs only as many at once as fit; a sweep whose one stage task
cannot fit on any node is refused before any Ray work starts, with the numbers.

What a stage task holds at its peak (distill with the student made from the teacher, the
largest stage): the teacher's checkpoint (mapped from its file) and module, the student being
trained with its gradients and two AdamW moments, the best-epoch copy, the output's
serialised bytes and the self-check's rebuild. Measured in teacher-sized copies over a
worker's imports (`bench/stage_memory.py`): 2.7-3.4 per stage at 50M parameters, distill up
to 4.6 at 17M; a measurement 1.2-1.8. `STAGE_COPIES` and `MEASURE_COPIES` add a margin.
Training also holds activations, which are not weight copies: a 30M-parameter BERT at
batch 64 of 32 tokens keeps 640 MB of them for backward beside 114 MB of weights. They are
measured before Ray starts (`stages.activations.task_activation_bytes`: autograd's saved
tensors of one training step of the teacher at the space's largest training batch) and a
stage task asks for `ACTIVATION_COPIES` of them too (the saved activations, and their
gradients in backward).
Small models ask for nothing: Ray's CPU scheduling is enough, and a memory request would only
hold back a machine whose free memory Ray under-reports.
"""

from __future__ import annotations

from typing import Any

from stages.errors import SqueezerayError

STAGE_COPIES = 5  # model-sized copies a stage task may hold at its peak (see above)
MEASURE_COPIES = 2  # a measure task: the checkpoint mapped from its file, the module's tensors
ACTIVATION_COPIES = 2  # a training step's saved activations, and their gradients in backward
WORKER_BASELINE_BYTES = 768 * 2**20  # a worker with torch and the stages imported: ~450 MB here
REQUEST_FROM_BYTES = 64 * 2**20  # models from 16M float32 parameters get memory requests


def task_memory_bytes(model_bytes: int, *, copies: int, activation_bytes: int = 0) -> int:
    """Bytes a task holding `copies` copies of a `model_bytes` model, training on
    `activation_bytes` of activations (0 for a task that does not train), asks Ray for."""
    return copies * model_bytes + ACTIVATION_COPIES * activation_bytes + WORKER_BASELINE_BYTES


def memory_options(model_bytes: int, *, copies: int, activation_bytes: int = 0) -> dict[str, Any]:
    """Ray options of a task over this model: `{"memory": bytes}` for a model of at least
    REQUEST_FROM_BYTES, else nothing."""
    if model_bytes < REQUEST_FROM_BYTES:
        return {}
    need = task_memory_bytes(model_bytes, copies=copies, activation_bytes=activation_bytes)
    return {"memory": need}


TRAINING_STAGES = ("teacher", "distill", "finetune", "lora", "prune", "lowrank", "quantize")
INTERNAL_BATCH_SIZE = 64  # prune/lowrank fine-tuning steps, QAT and calibration (no knob)


def training_batch_size(space: Any) -> int:
    """The largest training batch a sweep of `space` runs: every value the space gives a
    `<stage>.batch_size` knob of a stage in its pipeline, else that stage's default, and the
    stages' fixed internal batches (`INTERNAL_BATCH_SIZE`)."""
    from stages import get_stage

    sizes = [INTERNAL_BATCH_SIZE]
    for stage in space.pipeline:
        if stage not in TRAINING_STAGES:
            continue
        dist = space.params.get(f"{stage}.batch_size")
        if dist is not None:
            sizes += [int(v) for v in dist.values_for_validation()]
        else:
            default = getattr(get_stage(stage).make_params({}), "batch_size", None)
            sizes += [int(default)] if default is not None else []
    return max(sizes)


def node_memory_bytes() -> list[float]:
    """The `memory` resource of every alive Ray node (what Ray may schedule there), bytes."""
    import ray

    return [
        float(n["Resources"].get("memory", 0.0))
        for n in ray.nodes()
        if n.get("Alive") and n["Resources"].get("CPU", 0) > 0
    ]


def check_fits(model_bytes: int, nodes: list[float], *, activation_bytes: int = 0) -> None:
    """Refuse a sweep whose stage task (`memory_options` with STAGE_COPIES) fits on no node.

    Raises SqueezerayError with the model's size, its activations, the request and the largest
    node's memory.
    """
    options = memory_options(model_bytes, copies=STAGE_COPIES, activation_bytes=activation_bytes)
    if not options or not nodes:
        return
    need, largest = options["memory"], max(nodes)
    if need > largest:
        gib = 2**30
        raise SqueezerayError(
            f"the task's model holds {model_bytes / gib:.2f} GiB of weights and a training "
            f"step {activation_bytes / gib:.2f} GiB of activations; a stage task "
            f"needs about {STAGE_COPIES} copies of the weights, {ACTIVATION_COPIES} of the "
            f"activations and a worker's own "
            f"{WORKER_BASELINE_BYTES / gib:.2f} GiB = {need / gib:.2f} GiB, and the largest "
            f"Ray node offers {largest / gib:.2f} GiB of memory to tasks; run on a node with "
            "more memory (or give Ray more with `ray start --memory=BYTES`), lower the "
            "training batch size (`<stage>.batch_size` in the space) or compress a smaller model"
        )
