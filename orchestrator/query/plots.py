"""Plots of a results table's front: `.png` (matplotlib, Agg) or `.html` (plotly, offline).

PNG: the first objective (accuracy by default) against each other one (size, latency), every
trial faint, the front of all objectives highlighted, the front of each panel's own pair joined
by a step line, the baseline starred. HTML: a 3-D scatter of the first three objectives (2-D
for two), hover showing each trial's knobs; plotly.js is inlined so the file works offline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.query.knobs import varying_knobs, with_knob_columns
from orchestrator.query.pareto import (
    check_objectives,
    eligible_mask,
    is_non_dominated,
    resolve_objectives,
)
from orchestrator.store.outputs import output_file
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa

    from orchestrator.query.pareto import Objectives

SUFFIXES = (".png", ".html")


def plot_front(table: pa.Table, objectives: Objectives | None, path: str | Path) -> Path:
    """Draw the front of `table` (a results table, baseline rows included) to `path`, all or
    nothing (`store.outputs.output_file`: a failed write leaves no file, and any file that was
    at `path` as it was)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in SUFFIXES:
        raise SqueezerayError(
            f"--plot {str(path)!r}: unknown file type {suffix or '(none)'!r}; accepted: "
            ".png (matplotlib) or .html (interactive plotly)"
        )
    chosen = resolve_objectives(check_objectives(objectives, table.schema), table)
    if len(chosen) < 2:
        raise SqueezerayError(f"a front plot needs two or more objectives, got {list(chosen)}")
    data = _PlotData.build(table, chosen)
    # All or nothing: drawn to a temp file renamed into place (a failure leaves no part file).
    with output_file(target, parents=True) as tmp:
        if suffix == ".png":
            _png(data, tmp)
        else:
            _html(data, tmp)
    return target


# -- units ----------------------------------------------------------------------------------


def _axis(column: str, values: np.ndarray) -> tuple[np.ndarray, str]:
    """Values rescaled to a readable unit, and the axis label with that unit."""
    finite = values[np.isfinite(values)]
    top = float(np.max(np.abs(finite))) if finite.size else 0.0
    if column == "size_bytes":
        if top >= 1e6:
            return values / 1e6, "size (MB, zstd)"
        return values / 1e3, "size (KB, zstd)"
    if column.startswith("latency_ms"):
        label = "latency p90" if column.endswith("p90") else "latency"
        when = "final" if "_final" in column else "in-sweep"
        return values, f"{label} (ms, {when}, batch 1, one thread)"
    if column.startswith("params_"):
        return values, f"{column.removeprefix('params_')} parameters"
    if column == "test_accuracy":
        return values, "accuracy (test)"
    if column == "val_accuracy":
        return values, "accuracy (validation)"
    if column == "wall_s":
        return values, "wall time (s)"
    return values, column


# -- data -----------------------------------------------------------------------------------


class _PlotData:
    """The trials, the front mask and the baseline of a table, in display units."""

    def __init__(
        self,
        objectives: dict[str, str],
        trials: list[dict[str, Any]],
        values: np.ndarray,
        on_front: np.ndarray,
        baselines: list[dict[str, Any]],
        baseline_values: np.ndarray,
        knobs: Sequence[str] = (),
    ) -> None:
        self.objectives = objectives
        self.trials = trials  # eligible rows with every objective set
        self.values = values  # (n, m) raw values of `trials`
        self.on_front = on_front  # (n,) bool
        self.baselines = baselines
        self.baseline_values = baseline_values  # (b, m)
        self.knobs = knobs  # knob columns shown on hover: those that differ among trials

    @classmethod
    def build(cls, table: pa.Table, objectives: dict[str, str]) -> _PlotData:
        import pyarrow.compute as pc

        table = with_knob_columns(table)
        names = list(objectives)
        eligible = table.filter(eligible_mask(table))
        raw = _matrix(eligible, names)
        keep = ~np.isnan(raw).any(axis=1)  # as pareto_front: rows missing an objective drop
        values = raw[keep]
        on_front = is_non_dominated(values, list(objectives.values()))
        if "is_baseline" in table.column_names:
            base = table.filter(pc.fill_null(table.column("is_baseline"), False))
        else:
            base = table.slice(0, 0)
        trials = [r for r, k in zip(eligible.to_pylist(), keep, strict=True) if k]
        return cls(
            objectives,
            trials,
            values,
            on_front,
            base.to_pylist(),
            _matrix(base, names),
            knobs=varying_knobs(table),
        )


def _matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return np.empty((0, len(names)))
    return np.column_stack(
        [pc.cast(table.column(n), pa.float64()).to_numpy(zero_copy_only=False) for n in names]
    )


def _hover(row: Mapping[str, Any], objectives: Mapping[str, str], knobs: Sequence[str]) -> str:
    lines = [f"<b>{row.get('trial_id', '')}</b>"]
    if row.get("sweep_id"):
        lines.append(f"sweep {row['sweep_id']}")
    for name in objectives:
        lines.append(f"{name} = {_short(row.get(name))}")
    if row.get("runtime"):
        lines.append(f"runtime = {row['runtime']}")
    for knob in knobs:
        if row.get(knob) is not None:
            lines.append(f"{knob} = {_short(row[knob])}")
    return "<br>".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


# -- png ------------------------------------------------------------------------------------


def _png(data: _PlotData, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(data.objectives)
    y_name = names[0]
    others = names[1:4]  # at most three panels
    fig, axes = plt.subplots(1, len(others), figsize=(5.5 * len(others), 4.6), squeeze=False)
    y_all, y_label = _axis(y_name, np.concatenate([data.values[:, 0], data.baseline_values[:, 0]]))
    n = len(data.trials)
    for panel, x_name in enumerate(others, start=1):
        ax = axes[0, panel - 1]
        x_all, x_label = _axis(
            x_name, np.concatenate([data.values[:, panel], data.baseline_values[:, panel]])
        )
        x, y = x_all[:n], y_all[:n]
        ax.scatter(x, y, s=18, color="0.55", alpha=0.35, label=f"trials ({n})")
        if n:
            pair = is_non_dominated(
                np.column_stack([data.values[:, 0], data.values[:, panel]]),
                [data.objectives[y_name], data.objectives[x_name]],
            )
            order = np.argsort(x[pair], kind="stable")
            ax.step(
                x[pair][order], y[pair][order], where="post", color="C0", lw=1.3, alpha=0.8,
                label=f"front of this pair ({int(pair.sum())})",
            )  # fmt: skip
            front = data.on_front
            ax.scatter(
                x[front], y[front], s=42, color="C1", edgecolor="black", linewidth=0.5, zorder=3,
                label=f"Pareto front, all objectives ({int(front.sum())})",
            )  # fmt: skip
        if data.baselines:
            ax.scatter(
                x_all[n:], y_all[n:], s=220, marker="*", color="C3", edgecolor="black",
                linewidth=0.6, zorder=4, label="baseline (teacher)",
            )  # fmt: skip
        positive = x_all[np.isfinite(x_all) & (x_all > 0)]
        if positive.size and positive.max() / positive.min() > 30:
            ax.set_xscale("log")
        ax.set_xlabel(x_label + ("  (better ←)" if data.objectives[x_name] == "min" else ""))
        ax.set_ylabel(y_label + ("  (better ↑)" if data.objectives[y_name] == "max" else ""))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"squeezeray: {int(data.on_front.sum())} front points of {n} ok trials")
    fig.tight_layout()
    fig.savefig(target, dpi=110, format="png")  # (a temp name: the suffix cannot tell)
    plt.close(fig)


# -- html -----------------------------------------------------------------------------------


def _html(data: _PlotData, target: Path) -> None:
    import plotly.graph_objects as go

    names = list(data.objectives)
    n = len(data.trials)
    scaled = []
    labels = []
    for k, name in enumerate(names[:3]):
        values, label = _axis(name, np.concatenate([data.values[:, k], data.baseline_values[:, k]]))
        scaled.append(values)
        labels.append(label)
    # 3-D: z is the first objective (accuracy), x and y the next two (size, latency).
    order = [1, 2, 0] if len(names) >= 3 else [1, 0]
    groups = [
        ("trials", ~data.on_front, dict(size=3, color="rgba(120,120,120,0.35)")),
        ("Pareto front", data.on_front, dict(size=6, color="rgb(230,120,20)")),
    ]
    fig = go.Figure()
    for label, mask, marker in groups:
        rows = [r for r, m in zip(data.trials, mask, strict=True) if m]
        coords = [scaled[k][:n][mask] for k in order]
        hover = [_hover(r, data.objectives, data.knobs) for r in rows]
        fig.add_trace(_trace(go, label, coords, hover, marker))
    if data.baselines:
        coords = [scaled[k][n:] for k in order]
        hover = [_hover(r, data.objectives, data.knobs) for r in data.baselines]
        marker = dict(size=9, color="rgb(200,30,30)", symbol="diamond")
        fig.add_trace(_trace(go, "baseline (teacher)", coords, hover, marker))
    title = f"squeezeray Pareto front: {int(data.on_front.sum())} of {n} ok trials"
    if len(order) == 3:
        axis_titles = dict(xaxis_title=labels[1], yaxis_title=labels[2], zaxis_title=labels[0])
        fig.update_layout(title=title, scene=axis_titles, legend=dict(x=0, y=1))
    else:
        fig.update_layout(title=title, xaxis_title=labels[1], yaxis_title=labels[0])
    fig.write_html(str(target), include_plotlyjs=True, full_html=True)


def _trace(go: Any, name: str, coords: list[np.ndarray], hover: list[str], marker: dict) -> Any:
    if len(coords) == 3:
        return go.Scatter3d(
            x=coords[0], y=coords[1], z=coords[2], mode="markers", name=name, marker=marker,
            hovertext=hover, hoverinfo="text",
        )  # fmt: skip
    return go.Scatter(
        x=coords[0], y=coords[1], mode="markers", name=name, marker=marker,
        hovertext=hover, hoverinfo="text",
    )  # fmt: skip
