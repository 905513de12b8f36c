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
`coherence_notes` reads a space through the same rules (`deployed_runtime`, `_zeroes_weights`)
and says, in `validate` and at a sweep's start, which knob the space sets a rule replaces.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any, Protocol

from stages.names import (
    ONNX_QUANT_MODES,
    PRUNE_METHODS,
    RUNTIMES,
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
        runtime = params["export"].get("runtime", DEFAULT_RUNTIME)
        if deployed_runtime(mode, runtime) != runtime:
            params["export"]["runtime"] = deployed_runtime(mode, runtime)
    if "lowrank" in params and _zeroes_weights(params.get("prune")):
        params["lowrank"]["rank_ratio"] = 1.0  # the stage's documented no-op
    return params


DEFAULT_RUNTIME = RUNTIMES[0]  # export.runtime's default (stages.export.ExportParams)


def deployed_runtime(mode: str, runtime: str) -> str:
    """The export.runtime a trial with this quantize.mode and export.runtime deploys on: an
    ONNX mode always onnxruntime, a torch-quantized or half-cast mode never onnxruntime
    (eager instead), any other as set."""
    if mode in ONNX_QUANT_MODES:
        return "onnxruntime"
    if mode in TORCH_QUANT_MODES and runtime == "onnxruntime":
        return "eager"
    return runtime


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
    turns off or replaces a knob the space sets: lowrank.rank_ratio after an unstructured
    prune, export.runtime under an ONNX or a torch-quantized quantize.mode; for each, a
    "warning:" when every trial of the space hits it, else a "note:" for the trials that do."""
    return [*_lowrank_notes(space), *_runtime_notes(space)]


def _lowrank_notes(space: _Space) -> list[str]:
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


# why each replacement of export.runtime happens, and what to set instead (by the runtime
# `deployed_runtime` puts in its place)
RUNTIME_WHY = {
    "onnxruntime": (
        "an ONNX quantize.mode (" + ", ".join(ONNX_QUANT_MODES) + ") makes an ONNX Runtime "
        "int8 model, which deploys on onnxruntime only",
        "set export.runtime: onnxruntime, or use a quantize.mode that runs in torch",
    ),
    "eager": (
        "a torch-quantized or half-cast quantize.mode (" + ", ".join(TORCH_QUANT_MODES) + ") "
        "makes a model onnxruntime cannot run, so it deploys eager",
        "set export.runtime: eager (or torchscript, compiled), or use quantize.mode none, "
        + " or ".join(ONNX_QUANT_MODES)
        + " for onnxruntime",
    ),
}


def _runtime_notes(space: _Space) -> list[str]:
    """export.runtime values `deployed_runtime` replaces, one line per replacement."""
    runtime, mode = space.params.get("export.runtime"), space.params.get("quantize.mode")
    if runtime is None or "export" not in space.pipeline:
        return []
    quantized = "quantize" in space.pipeline and mode is not None
    modes = mode.values_for_validation() if quantized and mode is not None else ["none"]
    runs = [(m, r, deployed_runtime(m, r)) for m in modes for r in runtime.values_for_validation()]
    lines = []
    for new, (why, fix) in RUNTIME_WHY.items():
        hit = [(m, r) for m, r, deployed in runs if deployed == new != r]
        if not hit:
            continue
        if len(hit) == len(runs):
            lines.append(
                f"warning: export.runtime {runtime.describe().removeprefix('fixed ')} applies "
                f"in no trial: every trial's quantize.mode ({_said(mode, 'none')}) replaces it "
                f"with {new}: {why}; rows record export.runtime {new}. {fix[0].upper()}{fix[1:]}"
            )
        else:
            replaced = ", ".join(dict.fromkeys(repr(r) for _, r in hit))
            modes_hit = ", ".join(dict.fromkeys(repr(m) for m, _ in hit))
            lines.append(
                f"note: export.runtime {replaced} is replaced by {new} (recorded so) in the "
                f"trials whose quantize.mode is {modes_hit}: {why}"
            )
    return lines


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
