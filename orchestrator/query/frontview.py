"""The front as people read it: baseline first, then the front points with their ratios to it.

Shared by `squeezeray pareto` and the end of `squeezeray sweep` (`print_front`). Ratios are
to the baseline of the point's own sweep: size_x = baseline size / size (how many times
smaller), accuracy_delta_pts = (test_accuracy - baseline test_accuracy) x 100. The one latency
ratio is the row's `speedup` column: baseline / model latency, paired per round of the final
phase (`stages.latency.interleaved_latency`); rows that were not re-measured have none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestrator.query.knobs import varying_knobs, with_knob_columns
from orchestrator.query.pareto import (
    DEFAULT_OBJECTIVES,
    check_objectives,
    eligible_mask,
    front_baselines,
    pareto_front,
    resolve_objectives,
)
from orchestrator.store.outputs import output_file, write_text_output
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console
    from rich.table import Table as RichTable

FORMATS = ("table", "csv", "json", "parquet")
RATIO_COLUMNS = ("size_x", "accuracy_delta_pts")


@dataclass(frozen=True)
class FrontView:
    """What a front display needs.

    front: the front rows, best first by the first objective, cut to `top`, with
        RATIO_COLUMNS appended (null where the sweep has no baseline).
    baselines: the baseline rows of the sweeps the front comes from (of every sweep if the
        front is empty).
    rows: the table the front was computed from (after `where`; baselines kept).
    """

    front: pa.Table
    baselines: pa.Table
    rows: pa.Table
    objectives: dict[str, str]
    n_candidates: int  # ok, non-baseline rows after `where`
    n_front: int  # front size before `top`
    where: str | None
    knobs: tuple[str, ...] = ()  # the knob columns that tell the trials apart (shown per point)


def build_front(
    table: pa.Table,
    objectives: Mapping[str, str] | None = None,
    *,
    where: str | None = None,
    top: int | None = None,
) -> FrontView:
    """Filter (`where` applies to trials; baseline rows always stay, as the reference), compute
    the front, sort it best-first and append the ratios to each point's baseline."""
    import pyarrow.compute as pc

    chosen = resolve_objectives(check_objectives(objectives, table.schema), table)
    if top is not None and top < 1:
        raise SqueezerayError(f"--top={top} must be a positive number of points")
    table = with_knob_columns(table)  # every searched knob is a column `where` can use
    rows = table
    if where:
        from orchestrator.query.where import parse_where

        expr = parse_where(where, table.schema)
        if "is_baseline" in table.column_names:
            expr = expr | pc.field("is_baseline")  # Kleene or: baselines always stay
        rows = table.filter(expr)
    n_candidates = int(eligible_mask(rows).sum())
    front = pareto_front(rows, chosen)
    front = _sort_best_first(front, chosen)
    n_front = front.num_rows
    if top is not None:
        front = front.slice(0, top)
    baselines = front_baselines(rows, front)
    return FrontView(
        front=_with_ratios(front, baselines),
        baselines=baselines,
        rows=rows,
        objectives=chosen,
        n_candidates=n_candidates,
        n_front=n_front,
        where=where,
        knobs=tuple(varying_knobs(table)),
    )


def _sort_best_first(front: pa.Table, objectives: Mapping[str, str]) -> pa.Table:
    keys = [(name, "descending" if d == "max" else "ascending") for name, d in objectives.items()]
    if "trial_id" in front.column_names:
        keys.append(("trial_id", "ascending"))
    return front.sort_by(keys)


def _with_ratios(front: pa.Table, baselines: pa.Table) -> pa.Table:
    import pyarrow as pa

    by_sweep: dict[Any, dict[str, Any]] = {}
    if "sweep_id" in baselines.column_names:
        for row in baselines.to_pylist():
            by_sweep.setdefault(row["sweep_id"], row)
    elif baselines.num_rows:
        by_sweep[None] = baselines.to_pylist()[0]
    sizes, deltas = [], []
    sweep_ids = front.column("sweep_id").to_pylist() if "sweep_id" in front.column_names else None
    for i, row in enumerate(front.to_pylist()):
        base = by_sweep.get(sweep_ids[i] if sweep_ids is not None else None)
        sizes.append(_ratio(base, row, "size_bytes"))
        deltas.append(accuracy_delta_pts(base, row))
    for name, values in zip(RATIO_COLUMNS, (sizes, deltas), strict=True):
        front = front.append_column(pa.field(name, pa.float64()), pa.array(values, pa.float64()))
    return front


def accuracy_delta_pts(base: Mapping[str, Any] | None, row: Mapping[str, Any]) -> float | None:
    """(test_accuracy - the baseline's test_accuracy) x 100, in points; None without both."""
    if not base:
        return None
    top, mine = _num(base.get("test_accuracy")), _num(row.get("test_accuracy"))
    return None if top is None or mine is None else (mine - top) * 100.0


def _num(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def size_ratio(base: Mapping[str, Any] | None, row: Mapping[str, Any]) -> float | None:
    """Baseline size / size (how many times smaller); None without both."""
    return _ratio(base, row, "size_bytes")


def _ratio(base: Mapping[str, Any] | None, row: Mapping[str, Any], column: str) -> float | None:
    if not base:
        return None
    top, bottom = _num(base.get(column)), _num(row.get(column))
    if top is None or bottom is None or bottom <= 0:
        return None
    return top / bottom


# -- rich table -----------------------------------------------------------------------------


def _fmt_size(value: Any) -> str:
    if _num(value) is None:
        return "-"
    size = float(value)
    if size >= 1e6:
        return f"{size / 1e6:.2f} MB"
    if size >= 1e3:
        return f"{size / 1e3:.1f} KB"
    return f"{size:.0f} B"


def _fmt_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _columns(view: FrontView) -> list[tuple[str, str]]:
    """(header, column) pairs to show: id, objectives, runtime; knobs go in one column."""
    names = set(view.front.column_names) | set(view.baselines.column_names)
    cols: list[tuple[str, str]] = []
    sweeps = {*_col(view.front, "sweep_id"), *_col(view.baselines, "sweep_id")}
    if len(sweeps) > 1:
        cols.append(("sweep", "sweep_id"))
    cols.append(("trial", "trial_id"))
    headers = {
        "size_bytes": "size",
        "test_accuracy": "test acc",
        "val_accuracy": "val acc",
        "latency_ms_sweep": "sweep ms",
        "latency_ms_final": "final ms",
        "latency_cv": "lat cv",
        "speedup": "speedup",
    }
    # the front re-measured apart: its figures and speedup (each column once, an objective too)
    final = ["latency_ms_final", "latency_cv", "speedup"] if _final_latency(view) else []
    metric_cols = list(
        dict.fromkeys([*view.objectives, *DEFAULT_OBJECTIVES, "test_accuracy", *final])
    )
    cols += [(headers.get(c, c), c) for c in metric_cols if c in names]
    if "runtime" in names:
        cols.append(("runtime", "runtime"))
    return [*cols, ("size×", "size_x"), ("Δacc", "accuracy_delta_pts")]


# When a console is too narrow for every column, they give way from the end of this order
# (`_fitted`): who the row is and what the front was chosen on stay, then the speedup and the
# final latency; test accuracy, the ratios, lat cv and runtime go first.
_GIVE_WAY_LAST = ("sweep_id", "trial_id")
_GIVE_WAY_ORDER = (
    "speedup",
    "latency_ms_final",
    "test_accuracy",
    "accuracy_delta_pts",
    "size_x",
    "latency_cv",
    "runtime",
)


def _keep_order(view: FrontView, cols: list[tuple[str, str]]) -> list[str]:
    """The columns of `cols`, most important first (ids, the objectives, then
    `_GIVE_WAY_ORDER`, then any other)."""
    present = [c for _, c in cols]
    order = dict.fromkeys([*_GIVE_WAY_LAST, *view.objectives, *_GIVE_WAY_ORDER, *present])
    return [c for c in order if c in present]


def _final_latency(view: FrontView) -> bool:
    """True when some front row carries the final latency phase's numbers."""
    return any(v is not None for v in _col(view.front, "latency_rounds"))


def _col(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else []


def _cell(column: str, value: Any) -> str:
    if column == "size_x":
        return "-" if _num(value) is None else f"{float(value):.1f}×"
    if column == "accuracy_delta_pts":
        return "-" if _num(value) is None else f"{float(value):+.2f}"
    if column == "size_bytes":
        return _fmt_size(value)
    if column.endswith("accuracy") and _num(value) is not None:
        return f"{float(value):.4f}"
    if column == "latency_cv" and _num(value) is not None:
        return f"{100 * float(value):.1f}%"
    if column == "speedup" and _num(value) is not None:
        return f"{float(value):.2f}×"
    return _fmt_value(value)


_KNOB_LABELS = {
    "distill.temperature": "T",
    "distill.alpha": "α",
    "prune.ratio": "prune",
    "prune.method": "",
    "lora.rank": "lora",
    "quantize.mode": "",
}


def _knobs(row: Mapping[str, Any], names: tuple[str, ...]) -> str:
    """The trial's knobs among `names`, compact: `T=4 α=0.5 prune=0.35 structured lora=4
    dynamic_int8 lowrank.rank_ratio=0.5` (common knobs by short labels)."""
    parts = []
    for knob in names:
        value = row.get(knob)
        if value is None or (knob == "quantize.mode" and value == "none"):
            continue
        label = _KNOB_LABELS.get(knob, knob)
        parts.append(f"{label}={_fmt_value(value)}" if label else _fmt_value(value))
    return " ".join(parts) or "-"


# Narrower than this, the knobs column would be folded a few characters a line: the knobs go in
# a table of their own below the front instead.
KNOBS_INLINE_MIN_WIDTH = 120


# The knobs column's share of a wide console's width when the other columns are fitted.
_KNOBS_MIN_WIDTH = 12


def show_front(view: FrontView, console: Console) -> None:
    """Print the front table fitted to the console's width (`render_front(width=)`), with
    the knobs as its last column when the console has room, else followed by a trial -> knobs
    table."""
    if console.width >= KNOBS_INLINE_MIN_WIDTH:
        console.print(render_front(view, width=console.width))
        return
    console.print(render_front(view, knobs=False, width=console.width))
    console.print(render_knobs(view))


def render_knobs(view: FrontView) -> RichTable:
    """The knobs of each front point, keyed like the front table's rows (for narrow consoles)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="knobs", title_justify="left")
    keys = [(h, c) for h, c in _columns(view) if c in ("sweep_id", "trial_id")]
    for header, _ in keys:
        table.add_column(header, no_wrap=True)
    table.add_column("knobs", overflow="fold")
    for row in view.front.to_pylist():
        table.add_row(*(str(row.get(c)) for _, c in keys), _knobs(row, view.knobs))
    return table


def render_front(view: FrontView, *, knobs: bool = True, width: int | None = None) -> RichTable:
    """The rich table: baseline row(s) first, then the front points with their ratios (and
    their knobs as the last column unless `knobs=False`).

    `width` (a console's columns): the columns that do not fit give way, least important
    first (`_GIVE_WAY_ORDER`), instead of every column being cut to an ellipsis; the caption
    names those left out and how to see them. None: every column."""
    cols = _columns(view)
    hidden: list[str] = []
    if width is not None:
        room = width - (_KNOBS_MIN_WIDTH + 2 if knobs else 0)
        cols, hidden = _fitted(view, cols, room)
    table = _front_table(view, cols, knobs=knobs, hidden=hidden, width=width)
    _add_front_rows(table, view, cols, knobs=knobs)
    return table


def _fitted(
    view: FrontView, cols: list[tuple[str, str]], width: int
) -> tuple[list[tuple[str, str]], list[str]]:
    """(the columns of `cols` whose natural widths fit in `width` characters, in their order;
    the headers of those left out). The ids and the first objective always stay."""
    import io

    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(width=max(width, 1) * 4, file=io.StringIO())  # measures, never prints
    keep = _keep_order(view, cols)
    floor = sum(c in _GIVE_WAY_LAST for c in keep) + 1  # the ids and the first objective
    while len(keep) > floor:
        shown = [hc for hc in cols if hc[1] in keep]
        table = _front_table(view, shown, knobs=False, hidden=[], width=None, caption=False)
        _add_front_rows(table, view, shown, knobs=False)
        if Measurement.get(probe, probe.options, table).maximum <= width:
            break
        keep.pop()
    shown = [hc for hc in cols if hc[1] in keep]
    return shown, [h for h, c in cols if c not in keep]


def _front_table(
    view: FrontView,
    cols: list[tuple[str, str]],
    *,
    knobs: bool,
    hidden: list[str],
    width: int | None,
    caption: bool = True,
) -> RichTable:
    """The front table's frame: title, caption and the columns `cols` (no rows yet)."""
    from rich import box
    from rich.table import Table

    title = (
        f"Pareto front: {view.n_front} of {view.n_candidates} ok trials "
        f"({', '.join(f'{k}:{v}' for k, v in view.objectives.items())})"
    )
    table = Table(
        title=title,
        caption=_front_caption(view, [c for _, c in cols], hidden, width) if caption else None,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,  # no vertical rules: the knobs keep room on 80 columns
        pad_edge=False,
        collapse_padding=True,
    )
    for header, column in cols:
        numeric = column not in ("trial_id", "sweep_id", "runtime")
        table.add_column(header, no_wrap=True, justify="right" if numeric else "left")
    if knobs:
        table.add_column("knobs", overflow="fold", min_width=_KNOBS_MIN_WIDTH)
    return table


def _front_caption(view: FrontView, shown: list[str], hidden: list[str], width: int | None) -> str:
    """The front table's caption: the filter, a cut to the best K, the split the front was
    chosen on, how latency was measured, what the ratio columns shown mean, and the columns
    a narrow console left out (`hidden`: their headers)."""
    caption_parts = []
    if view.where:
        caption_parts.append(f"where {view.where}")
    if view.front.num_rows < view.n_front:
        caption_parts.append(
            f"showing the best {view.front.num_rows} by {next(iter(view.objectives))}"
        )
    caption_parts.append(_chosen_on(view))
    if _final_latency(view) and {"latency_ms_final", "speedup"} & set(shown):
        from orchestrator.query.steadiness import LATENCY_CV_UNSTEADY, UNSTEADY_MARK

        rounds = max(r for r in _col(view.front, "latency_rounds") if r is not None)
        caption_parts.append(
            f"final ms = latency re-measured apart after the search with the baseline in "
            f"{rounds} interleaved rounds (lat cv: spread of the round medians; speedup: "
            "baseline / model, paired per round: the one latency ratio); sweep ms = the "
            f"in-sweep figure the front was chosen on; {UNSTEADY_MARK} = latency_unsteady: "
            f"lat cv above {100 * LATENCY_CV_UNSTEADY:.0f}% (the row's, or for speedup its "
            "baseline's): not to be trusted, re-measure with more latency.rounds or on a "
            "quieter node"
        )
    if "latency_ms_sweep" in shown:
        from orchestrator.query.steadiness import (
            IMPRECISE_MARK,
            LATENCY_CI_IMPRECISE,
            sweep_latency_imprecise,
        )

        rows = [*view.front.to_pylist(), *view.baselines.to_pylist()]
        if any(sweep_latency_imprecise(r) for r in rows):
            caption_parts.append(
                f"{IMPRECISE_MARK} = sweep ms known only to more than "
                f"+-{100 * LATENCY_CI_IMPRECISE:.0f}% (latency_ci_sweep: the time cap came "
                "before latency.precision on a busy machine): its place on the front may be "
                "noise; a quieter node (--latency-resource) or a longer latency.time_cap"
            )
    ratios = [
        text
        for column, text in (
            ("size_x", "size× = baseline size / size"),
            ("accuracy_delta_pts", "Δacc = test accuracy - baseline test accuracy, in points"),
        )
        if column in shown
    ]
    if ratios:
        caption_parts.append(", ".join(ratios))
    if hidden:
        caption_parts.append(
            f"not shown at {width} columns: {', '.join(hidden)}; a wider terminal "
            "(e.g. COLUMNS=200) or `squeezeray pareto --format csv` shows every column"
        )
    return "; ".join(caption_parts)


def _add_front_rows(
    table: RichTable, view: FrontView, cols: list[tuple[str, str]], *, knobs: bool
) -> None:
    """The baseline row(s) in bold (ratios 1.0), then one row per front point."""
    baselines = {b.get("sweep_id"): b for b in view.baselines.to_pylist()}
    columns = [c for _, c in cols]
    for row in view.baselines.to_pylist():
        cells = _marked_cells(cols, {**row, "size_x": 1.0, "accuracy_delta_pts": 0.0}, None)
        trial = row.get("trial_id")
        label = "baseline" if trial in (None, "baseline") else f"baseline ({trial})"
        cells[columns.index("trial_id")] = label
        extra = ["teacher, uncompressed"] if knobs else []
        table.add_row(*cells, *extra, style="bold")
    for row in view.front.to_pylist():
        cells = _marked_cells(cols, row, baselines.get(row.get("sweep_id")))
        table.add_row(*cells, *([_knobs(row, view.knobs)] if knobs else []))


def _marked_cells(
    cols: list[tuple[str, str]], row: Mapping[str, Any], baseline: Mapping[str, Any] | None
) -> list[str]:
    """The row's cells, `lat cv` and `speedup` marked `!` where they rest on an unsteady final
    latency (`orchestrator.query.steadiness`: the row's or its baseline's), `sweep ms` marked
    `~` where the in-sweep median is imprecise (`sweep_latency_imprecise`)."""
    from orchestrator.query.steadiness import (
        IMPRECISE_MARK,
        UNSTEADY_MARK,
        latency_unsteady,
        speedup_unsteady,
        sweep_latency_imprecise,
    )

    cells = []
    for _, column in cols:
        cell = _cell(column, row.get(column))
        if (column == "latency_cv" and latency_unsteady(row)) or (
            column == "speedup" and row.get(column) is not None and speedup_unsteady(row, baseline)
        ):
            cell += f" {UNSTEADY_MARK}"
        if column == "latency_ms_sweep" and sweep_latency_imprecise(row):
            cell += f" {IMPRECISE_MARK}"
        cells.append(cell)
    return cells


def _chosen_on(view: FrontView) -> str:
    """Which columns chose the front, and what the test column is for."""
    validation = [c for c in view.objectives if c.startswith("val_")]
    if validation:
        return (
            f"front chosen on the validation split ({', '.join(validation)}); "
            "test acc = test split, reported only"
        )
    return "front chosen on the columns named (this table has no validation accuracy)"


def empty_message(view: FrontView) -> str:
    """Why the front is empty, with the next thing to try."""
    if view.where and view.n_candidates == 0:
        return f"no ok trial matches --where {view.where!r}; loosen it or drop it"
    if view.n_candidates == 0:
        return "no ok trials to build a front from (every trial failed or none ran yet)"
    return (
        f"none of the {view.n_candidates} ok trials has every objective "
        f"({', '.join(view.objectives)}) set"
    )


def print_front(
    table: pa.Table,
    objectives: Mapping[str, str] | None,
    console: Console,
    *,
    top: int | None = None,
    where: str | None = None,
) -> FrontView:
    """Print the front of `table` (a results table, baseline rows included) to `console`."""
    view = build_front(table, objectives, where=where, top=top)
    tasks = {t for t in _col(view.rows, "task") if t is not None}
    if len(tasks) > 1:
        console.print(
            f"note: these results mix tasks ({', '.join(sorted(tasks))}); pick one with "
            "--sweep ID or --where 'task == \"NAME\"'",
            highlight=False,
        )
    if view.front.num_rows == 0:
        console.print(empty_message(view), highlight=False)
    else:
        show_front(view, console)
    return view


# -- machine formats ------------------------------------------------------------------------


def export_front(view: FrontView, fmt: str, output: Path | None, stdout: IO[str]) -> None:
    """Write the front's sweeps' baseline rows (`is_baseline` true, first, as the table shows
    them) and the front rows, with ratio columns, as csv, json or parquet; a file `output` all
    or nothing (`store.outputs`: a failed write leaves it as it was).

    csv/json go to `stdout` when `output` is None; parquet needs `output`. An empty front is
    a valid empty document (csv header, `[]`, an empty parquet file)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt not in FORMATS or fmt == "table":
        raise SqueezerayError(
            f"--format {fmt!r} is not a machine format; accepted: csv, json, parquet"
        )
    front = _with_baselines(view)
    if fmt == "parquet":
        if output is None:
            raise SqueezerayError("--format parquet writes binary data; give --output FILE.parquet")
        with output_file(output) as tmp:
            pq.write_table(front, str(tmp))
        return
    if fmt == "json":
        text = json.dumps([_json_row(r) for r in front.to_pylist()], indent=1, allow_nan=False)
        _write_text(text + "\n", output, stdout)
        return
    csv_table = _flatten_lists(front)
    import io

    buffer = io.BytesIO()
    pacsv.write_csv(csv_table, buffer)
    _write_text(buffer.getvalue().decode(), output, stdout)


def _with_baselines(view: FrontView) -> pa.Table:
    """The front's rows after its sweeps' baselines (their ratios to themselves: 1x, +0
    points), for the machine formats: `size_x` and `accuracy_delta_pts` read beside them."""
    import pyarrow as pa

    if not view.front.num_rows or not view.baselines.num_rows:
        return view.front
    baselines = _with_ratios(view.baselines, view.baselines)
    baselines = baselines.select(
        [n for n in view.front.column_names if n in baselines.column_names]
    )
    return pa.concat_tables([baselines, view.front], promote_options="default")


def _write_text(text: str, output: Path | None, stdout: IO[str]) -> None:
    if output is None:
        stdout.write(text)
        stdout.flush()
    else:
        write_text_output(output, text)


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def _flatten_lists(table: pa.Table) -> pa.Table:
    """CSV has no lists: join list columns (stage_keys) with ';'."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            joined = [
                None if v is None else ";".join(map(str, v)) for v in table.column(i).to_pylist()
            ]
            table = table.set_column(
                i, pa.field(field.name, pa.string()), pa.array(joined, pa.string())
            )
    return table
