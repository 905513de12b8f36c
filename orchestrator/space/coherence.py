"""What a trial really runs: the coherence rules between knobs, and the grid's distinct points.

Some knob combinations cannot run as written, or run the same model as another:

- the ONNX modes (`quantize.mode: onnx_int8`, `onnx_static_int8`) always deploy on
  onnxruntime (`export.runtime` becomes onnxruntime); a torch-quantized or half-cast mode
  (`stages.names.TORCH_QUANT_MODES`) never does (onnxruntime becomes eager).
- `lowrank` after an unstructured `prune` (l1_unstructured, global, random, ratio > 0) is the
  recorded no-op `lowrank.rank_ratio: 1.0`: lowrank leaves every layer that holds pruned zeros
  whole (dense SVD factors would undo the pruning), which after unstructured pruning is every
  layer it could factorise, so the trial would only fail.

`make_coherent` applies those rules, so stage keys, grid deduplication and the results' knob
columns all see the configuration a trial actually runs: a grid runs each effective point once
and no trial of any search becomes an error row for a combination that cannot apply.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any, Protocol

from stages.names import (
    ONNX_QUANT_MODES,
    PRUNE_METHODS,
    TORCH_QUANT_MODES,
    UNSTRUCTURED_PRUNE_METHODS,
)


class _Choices(Protocol):
    @property
    def choices(self) -> tuple[Any, ...]: ...


class _Grid(Protocol):
    """What `grid_points` reads of a `SearchSpace` (a protocol, so this module does not
    import `config`, which imports it)."""

    @property
    def pipeline(self) -> tuple[str, ...]: ...

    def searched(self) -> Mapping[str, _Choices]: ...

    def fixed(self) -> Mapping[str, Any]: ...


def make_coherent(params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Apply the coherence rules (module docstring) to {stage: params} in place; a param not
    given takes its stage's default (`SweepPlan.resolve` passes every one)."""
    mode = params.get("quantize", {}).get("mode", "none")
    if "export" in params:
        if mode in ONNX_QUANT_MODES:
            params["export"]["runtime"] = "onnxruntime"
        elif mode in TORCH_QUANT_MODES and params["export"].get("runtime") == "onnxruntime":
            params["export"]["runtime"] = "eager"
    if "lowrank" in params and _zeroes_weights(params.get("prune")):
        params["lowrank"]["rank_ratio"] = 1.0  # the stage's documented no-op
    return params


def _zeroes_weights(prune: Mapping[str, Any] | None) -> bool:
    """True when a prune stage with these params leaves zeros in the layers it prunes."""
    if prune is None:
        return False
    method = prune.get("method", PRUNE_METHODS[0])
    return method in UNSTRUCTURED_PRUNE_METHODS and float(prune.get("ratio", 0.5)) > 0


class _Bounded(Protocol):
    def values_for_validation(self) -> list[Any]: ...

    def describe(self) -> str: ...


class _Space(Protocol):
    """What `coherence_notes` reads of a `SearchSpace`."""

    @property
    def pipeline(self) -> tuple[str, ...]: ...

    @property
    def params(self) -> Mapping[str, _Bounded]: ...


LOWRANK_SKIP_WHY = (
    "lowrank after an unstructured prune runs as its no-op rank_ratio 1.0: it leaves layers "
    "that hold pruned zeros whole (dense SVD factors would undo the pruning), and after "
    "unstructured pruning that is every layer it could factorise"
)


def coherence_notes(space: _Space) -> list[str]:
    """Lines for `validate` and the sweep's start when a coherence rule (`make_coherent`)
    turns off a knob the space sets: lowrank.rank_ratio after an unstructured prune, a
    "warning:" when every trial of the space hits it, else a "note:" for the trials that do."""
    rank = space.params.get("lowrank.rank_ratio")
    if "lowrank" not in space.pipeline or rank is None:
        return []
    if all(float(v) == 1.0 for v in rank.values_for_validation()):
        return []  # already the no-op
    method, ratio = space.params.get("prune.method"), space.params.get("prune.ratio")
    methods = [PRUNE_METHODS[0]] if method is None else method.values_for_validation()
    ratios = [None] if ratio is None else ratio.values_for_validation()
    hits = [
        _zeroes_weights({"method": m} if r is None else {"method": m, "ratio": r})
        for m in methods
        for r in ratios
        if "prune" in space.pipeline
    ]
    if not any(hits):
        return []
    knob = f"lowrank.rank_ratio {rank.describe().removeprefix('fixed ')}"
    if all(hits):
        return [
            f"warning: {knob} applies in no trial: every trial prunes unstructured before "
            f"lowrank (prune.method {_said(method, PRUNE_METHODS[0])}), and {LOWRANK_SKIP_WHY}; "
            "rows record lowrank.rank_ratio 1.0. Use prune.method: structured, or drop "
            "lowrank from the pipeline"
        ]
    return [
        f"note: {knob} is skipped (run as 1.0, recorded so) in the trials whose prune.method is "
        f"one of {', '.join(UNSTRUCTURED_PRUNE_METHODS)} with prune.ratio > 0: {LOWRANK_SKIP_WHY}"
    ]


def _said(dist: _Bounded | None, default: str) -> str:
    return repr(default) + " (the default)" if dist is None else dist.describe()


def effective_knobs(values: Mapping[str, Any], pipeline: tuple[str, ...]) -> dict[str, Any]:
    """Flat "stage.param" values as a trial would run them (coherence rules applied).

    Two grid points with the same effective knobs train and deploy the same model.
    """
    nested: dict[str, dict[str, Any]] = {stage: {} for stage in pipeline}
    for name, value in values.items():
        owner, _, param = name.partition(".")
        nested.setdefault(owner, {})[param] = plain(value)
    return {f"{s}.{k}": v for s, ps in make_coherent(nested).items() for k, v in ps.items()}


def plain(value: Any) -> Any:
    """numpy scalars (from samplers) -> Python scalars, so keys and JSON are stable."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, str | bytes) else value


def grid_points(space: _Grid) -> tuple[list[dict[str, Any]], int]:
    """(points, full grid size): every combination of the searched choices, in grid order,
    keeping the first of those that share their effective configuration
    (`effective_knobs`)."""
    searched = space.searched()
    names = list(searched)
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    total = 0
    for combo in itertools.product(*(searched[n].choices for n in names)):
        total += 1
        point = dict(zip(names, combo, strict=True))
        knobs = effective_knobs({**space.fixed(), **point}, space.pipeline)
        key = json.dumps(knobs, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points, total


def grid_trials_text(space: _Grid) -> str:
    """ "6 trials (grid)", or when some grid points repeat another's effective configuration
    "4 trials (grid of 6: 2 points repeat another's effective configuration and run once)"."""
    points, total = grid_points(space)
    if len(points) == total:
        return f"{total} trials (grid)"
    return (
        f"{len(points)} trials (grid of {total}: {total - len(points)} points repeat another's "
        "effective configuration and run once)"
    )
