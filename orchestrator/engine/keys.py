"""Stage identity: hash(stage name, its params, parent's key, task name, code version, training
seed, and the part of the task's fingerprint the stage reads)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

# This module runs in Tune trial coordinators, which must not import torch: it finds the
# stages' source without importing the `stages` package.


@functools.cache
def code_version() -> str:
    """A short hash of the stages' source and the library versions that shape their output.

    A change to any file in `stages/` (or to torch / torch-pruning / onnxruntime) gives new
    stage keys, so cached checkpoints from older code are never reused.
    """
    h = hashlib.sha256()
    spec = importlib.util.find_spec("stages")
    assert spec is not None and spec.submodule_search_locations is not None
    root = Path(next(iter(spec.submodule_search_locations)))
    for path in sorted(root.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for dist in ("torch", "torch-pruning", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{dist}=={metadata.version(dist)}".encode())
    return h.hexdigest()[:12]


def source_version() -> str:
    """A short hash of squeezeray's own source as it is on disk now (`orchestrator/` and
    `stages/`, every .py file), read afresh at each call.

    Not part of any stage key: a sweep records it when it starts (`SweepPlan.source_version`)
    and compares it at its end, so that failures from workers that imported newer code (an
    editable install whose repository moved under a running sweep) are named as such.
    """
    h = hashlib.sha256()
    for package in ("orchestrator", "stages"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def canonical_params(params: Mapping[str, Any]) -> str:
    """Params as canonical JSON: sorted keys, floats as repr (so 4 and 4.0 differ not)."""
    return json.dumps(_normalise(dict(params)), sort_keys=True, separators=(",", ":"))


def _normalise(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        f = float(value)
        return int(f) if f.is_integer() else f
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return str(value)


def stage_key(
    *,
    stage: str,
    params: Mapping[str, Any],
    parent_key: str | None,
    task: str,
    version: str,
    seed: int = 0,
    fingerprint: str | None = None,
) -> str:
    """The cache key of one stage execution (24 hex chars).

    The training seed is part of it: a stage trained with another seed is another model.
    `fingerprint` is what the stage reads from the user's task beyond its parent (see
    `SweepPlan.requests`: the teacher's architecture, weights, the data and the device for the
    teacher stage; the student's for distillation); later stages inherit it through
    `parent_key`, so a change recomputes from the first stage it affects.
    """
    fields: dict[str, Any] = {
        "stage": stage,
        "params": canonical_params(params),
        "parent": parent_key,
        "task": task,
        "code": version,
        "seed": seed,
    }
    if fingerprint:  # none (or empty): left out, so keys without one stay what they were
        fields["fingerprint"] = fingerprint
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]
