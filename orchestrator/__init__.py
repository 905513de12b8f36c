"""squeezeray's Ray side: search spaces, the stage DAG and its cache, Tune search, results.

The public API (every name in `__all__`; docs/guide.md shows each):

    run_sweep(space, options=None, *, trials=..., storage=...)  -> SweepResult
        space: a SearchSpace, a dict of the YAML's keys, a YAML path or a packaged name
    SweepResult: .table, .front(), .best(metric, mode, where=), .to_pandas(), .plot(path),
                 .export(trial, output)
    SweepOptions.build(storage=..., trials=..., time_budget="30m", ...) -> SweepOptions
    load_space(path) -> SearchSpace;  SearchSpace: a validated search space
    load_results(storage, *, sweep="latest")                -> pyarrow.Table
    load_stages(storage, *, sweep="latest")                 -> pyarrow.Table
    list_sweeps(storage)                                    -> pyarrow.Table
    pareto_front(table, objectives, *, where=None, baseline=False) -> pyarrow.Table
    hypervolume(front, objectives, reference=None)          -> float
        objectives: ["val_accuracy", "size_bytes"], "val_accuracy:max,size_bytes:min",
        [("val_accuracy", "max"), ...] or {"val_accuracy": "max", ...}
    non_dominated_rank(values, directions)                  -> numpy array of ranks
    load_model(storage, trial_id, *, sweep="latest")        -> p(*inputs) -> logits, any runtime
    export_trial(storage, trial_id, *, output=DIR, sweep="latest") -> ExportResult
    SqueezerayError: every problem a user can fix

One rule for `sweep=`: every function that reads stored results reads the latest sweep unless
given a sweep id or "all". One rule for metric names: a name says its split or measurement
(`val_accuracy`, `test_accuracy`, `latency_ms_sweep`, `latency_ms_final`); the bare
`accuracy` is refused everywhere (`orchestrator.space.metrics`).

Names load lazily, so `import orchestrator` (and validating a space) never imports ray or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stages.errors import SqueezerayError

if TYPE_CHECKING:
    from orchestrator.engine.sweep import run_sweep
    from orchestrator.query.checkpoints import load_model
    from orchestrator.query.export import export_trial
    from orchestrator.query.pareto import hypervolume, non_dominated_rank, pareto_front
    from orchestrator.query.result import SweepResult
    from orchestrator.space.config import load_space
    from orchestrator.space.model import SearchSpace
    from orchestrator.space.options import SweepOptions
    from orchestrator.store.results import list_sweeps, load_results, load_stages

_LAZY = {
    "run_sweep": "orchestrator.engine.sweep",
    "load_results": "orchestrator.store.results",
    "load_stages": "orchestrator.store.results",
    "list_sweeps": "orchestrator.store.results",
    "pareto_front": "orchestrator.query.pareto",
    "hypervolume": "orchestrator.query.pareto",
    "non_dominated_rank": "orchestrator.query.pareto",
    "load_space": "orchestrator.space.config",
    "load_model": "orchestrator.query.checkpoints",
    "export_trial": "orchestrator.query.export",
    "SearchSpace": "orchestrator.space.model",
    "SweepOptions": "orchestrator.space.options",
    "SweepResult": "orchestrator.query.result",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


__all__ = [
    "SearchSpace",
    "SqueezerayError",
    "SweepOptions",
    "SweepResult",
    "export_trial",
    "hypervolume",
    "list_sweeps",
    "load_model",
    "load_results",
    "load_space",
    "load_stages",
    "non_dominated_rank",
    "pareto_front",
    "run_sweep",
]
