"""`SweepResult`: what `run_sweep` returns, the questions Ray Tune's `ResultGrid` and Optuna's
`study.best_trials` answer, on one sweep's rows.

    result = orchestrator.run_sweep("quick", storage="runs/")
    result.table                       # pyarrow.Table: every trial (failures too) + baseline
    result.front()                     # the Pareto front of the sweep's objectives
    result.best("size_bytes", where="val_accuracy >= 0.95")   # one row, as a dict
    result.to_pandas()                 # the rows as a DataFrame
    result.plot("front.png")           # the front drawn (.png or .html)
    result.export("t3", "model/")      # the trial's deployable model and card

Metric names follow the one rule of `orchestrator.space.metrics` (`val_accuracy`, never a
bare `accuracy`); `best` chooses as `squeezeray export --pick` does, `front` as
`squeezeray pareto` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from orchestrator.query.export import ExportResult
    from orchestrator.query.pareto import Objectives


@dataclass(frozen=True)
class SweepResult:
    """One sweep's results (frozen; the table is the stored rows as read back).

    table: a `pyarrow.Table`, one row per trial (every status) plus the `is_baseline` row of
        the uncompressed teacher; columns as `orchestrator.store.schema.RESULTS_SCHEMA`, the
        task metric's `val_<name>`/`test_<name>` appended.
    storage: the storage URI the rows live in (what `export` and `load_model` read).
    sweep_id: the sweep's id.
    objectives: {column: "max"|"min"} the sweep searched on (the default for `front`).
    summary: the sweep's `SweepSummary` (trials, failures, cache hits, times), or None for a
        sweep that had already finished when run again with resume=True.
    """

    table: pa.Table
    storage: str
    sweep_id: str
    objectives: Mapping[str, str]
    summary: Any = field(default=None, compare=False)

    def __repr__(self) -> str:
        """One line a user can read (the default dumps the whole table's schema)."""
        statuses = self.table.column("status").to_pylist() if self.table.num_rows else []
        baseline = self.table.column("is_baseline").to_pylist() if self.table.num_rows else []
        trials = [s for s, b in zip(statuses, baseline, strict=True) if not b]
        counts = ", ".join(f"{trials.count(s)} {s}" for s in sorted(set(trials)))
        objectives = ", ".join(f"{k}:{v}" for k, v in self.objectives.items())
        return (
            f"SweepResult(sweep_id={self.sweep_id!r}, storage={self.storage!r}, "
            f"trials={len(trials)} ({counts or 'none'}), objectives={{{objectives}}})"
        )

    @property
    def baseline(self) -> dict[str, Any] | None:
        """The baseline row (the teacher as given), or None when it did not finish."""
        rows = [r for r in self.table.to_pylist() if r.get("is_baseline")]
        return rows[0] if rows else None

    def front(
        self,
        objectives: Objectives | None = None,
        *,
        where: str | None = None,
        baseline: bool = False,
    ) -> pa.Table:
        """The ok trials on the Pareto front of `objectives` (default: the sweep's; any shape
        `pareto_front` takes: a list of columns, "col:max,col:min", pairs, a dict), after the
        `where` filter (`squeezeray pareto --where` syntax); with `baseline`, the baseline row
        first, as `squeezeray pareto` lists it. `pareto_front` does the work."""
        from orchestrator.query.pareto import pareto_front

        chosen = objectives or dict(self.objectives)
        return pareto_front(self.table, chosen, where=where, baseline=baseline)

    def best(
        self, metric: str, mode: str | None = None, *, where: str | None = None
    ) -> dict[str, Any]:
        """The ok trial best on `metric` ("max"/"min"; default: the metric's natural
        direction, e.g. max for val_accuracy) among those matching `where`, as a dict of its
        columns; ties go to the smallest trial id. The rules of `squeezeray export --pick`:
        a bare `accuracy` is refused, a test-split column is never chosen on.

        Raises SqueezerayError when no ok trial matches or `metric` is no numeric column."""
        from orchestrator.query.choose import select_row

        pick = metric if mode is None else f"{metric}:{mode}"
        return select_row(self.table, where=where, pick=pick)

    def to_pandas(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame (`pyarrow.Table.to_pandas`)."""
        return self.table.to_pandas()

    def plot(self, path: str | Path, objectives: Objectives | None = None) -> Path:
        """Draw the front of `objectives` (default: the sweep's) against the other trials and
        the baseline to `path`: .png (matplotlib) or .html (interactive plotly)."""
        from orchestrator.query.plots import plot_front

        return plot_front(self.table, objectives or dict(self.objectives), path)

    def export(self, trial: str, output: str | Path, *, overwrite: bool = False) -> ExportResult:
        """Write trial `trial`'s model in the runtime it was measured in, with its `model.json`
        card, under `output` (`orchestrator.export_trial` on this sweep)."""
        from orchestrator.query.export import export_trial

        return export_trial(
            self.storage, trial, output=output, sweep=self.sweep_id, overwrite=overwrite
        )
