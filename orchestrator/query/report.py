"""The nightly report: tonight's front against the previous sweep's and the all-time front.

All hypervolumes in a report use one fixed reference point, derived from the *earliest*
baseline (the uncompressed teacher) of the task in the storage, so numbers in successive
reports compare:

    val_accuracy (a max objective)     0            every model that predicts anything counts
    size_bytes, latency_ms_sweep, ...  2 x baseline a compressed model counts while it is no
                                                    worse than twice the teacher

(`orchestrator.query.pareto.baseline_reference`, the one reference squeezeray uses: each
sweep stores its own in its manifest, and `squeezeray sweeps` uses the task's earliest too.)

(The baseline itself is a poor reference: it is the most accurate model, so nothing would be
strictly better than it in accuracy, and tiny models are often no faster than the teacher.)

Regressions (any one makes the nightly exit with code 3):
  - hypervolume: tonight's front lost more than `hypervolume_drop_pct` % of the previous one's;
  - accuracy: a knob point run in both sweeps lost more than `accuracy_drop_points` points of
    test_accuracy (reported, not chosen on);
  - latency: a knob point run in both sweeps got slower (latency_ms_sweep) by more than
    `latency_increase_pct` %.
"Same knobs" means the same effective parameters (the `params` JSON of the rows); several rows
of one knob point are summarised by their median. Baseline drift (the teacher's accuracy, size
and latency against the previous sweep) is reported, not alerted on.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa

    from orchestrator.store.storage import Storage

REPORTS_DIR = "reports"


@dataclass(frozen=True)
class Thresholds:
    """When a nightly run counts as a regression (exit code 3)."""

    hypervolume_drop_pct: float = 10.0  # latency noise moves the hypervolume too
    accuracy_drop_points: float = 2.0  # percentage points (0.02 of accuracy)
    latency_increase_pct: float = 50.0  # batch-1 latency is noisy: keep this loose

    def __post_init__(self) -> None:
        for name in ("hypervolume_drop_pct", "accuracy_drop_points", "latency_increase_pct"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SqueezerayError(f"threshold {name}={value!r} must be a number >= 0")


@dataclass(frozen=True)
class Comparison:
    """One check against the previous sweep; `crossed` means it is a regression."""

    kind: str  # "hypervolume" | "accuracy" | "latency"
    knobs: str  # the knob point ("" for the hypervolume)
    before: float
    after: float
    change: float  # accuracy: points; latency and hypervolume: percent
    threshold: float
    crossed: bool


@dataclass(frozen=True)
class Drift:
    """The baseline (teacher) of tonight against the previous sweep's."""

    metric: str
    before: float | None
    after: float | None

    @property
    def change_pct(self) -> float | None:
        if self.before is None or self.after is None or self.before == 0:
            return None
        return (self.after / self.before - 1.0) * 100.0


@dataclass(frozen=True)
class NightlyReport:
    sweep_id: str
    sweep_name: str | None
    task: str
    storage: str
    created_at: str
    objectives: dict[str, str]
    reference: dict[str, float]
    reference_sweep_id: str
    previous_sweep_id: str | None
    earlier_sweeps: int
    trials_ok: int
    trials_failed: int  # not ok and not stopped by the scheduler
    hypervolume: float
    hypervolume_previous: float | None
    hypervolume_all_time_before: float | None
    hypervolume_all_time: float
    front: list[dict[str, Any]]  # tonight's front: knobs + objectives, best first
    new_front_points: list[dict[str, Any]]  # tonight's points no earlier point matches
    comparisons: list[Comparison]
    drift: list[Drift]
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)
    trials_stopped: int = 0  # stopped early by the scheduler (ASHA): not failed

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.crossed]

    @property
    def exit_code(self) -> int:
        return 3 if self.regressions else 0


# -- building -------------------------------------------------------------------------------


def build_report(
    table: pa.Table,
    sweep_id: str,
    *,
    objectives: Mapping[str, str],
    thresholds: Thresholds = Thresholds(),
    knob_names: Sequence[str] | None = None,
    storage: str = "",
    notes: Sequence[str] = (),
) -> NightlyReport:
    """Compare sweep `sweep_id` with the earlier sweeps of its task in `table` (all results)."""
    import pyarrow.compute as pc

    from orchestrator.query.pareto import resolve_objectives

    if sweep_id not in table.column("sweep_id").to_pylist():
        raise SqueezerayError(f"sweep {sweep_id!r} has no rows in the results table")
    history = _History.of(table, sweep_id)
    tonight, previous = history.tonight, history.previous
    # Fronts, hypervolumes and "new points" on the selection columns (val_accuracy), as the search.
    objectives = resolve_objectives(objectives, table)
    hv = _Hypervolumes.of(history, objectives)
    trials = tonight.filter(pc.invert(tonight.column("is_baseline")))
    ok = int(pc.sum(pc.equal(trials.column("status"), "ok")).as_py() or 0)
    stopped = int(pc.sum(pc.equal(trials.column("status"), "stopped")).as_py() or 0)
    names = list(knob_names) if knob_names is not None else None
    front, new_points = _front_points(history, objectives, names)
    comparisons: list[Comparison] = []
    if previous is not None:
        comparisons.append(_hypervolume_check(hv.previous or 0.0, hv.tonight, thresholds))
        comparisons += _same_knob_checks(previous, tonight, thresholds, names)
    return NightlyReport(
        sweep_id=sweep_id,
        sweep_name=_first(tonight.column("sweep_name").to_pylist()),
        task=history.task,
        storage=storage,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        objectives=objectives,
        reference=hv.reference,
        reference_sweep_id=hv.reference_sweep_id,
        previous_sweep_id=history.previous_id,
        earlier_sweeps=len(history.earlier_ids),
        trials_ok=ok,
        trials_failed=trials.num_rows - ok - stopped,
        trials_stopped=stopped,
        hypervolume=hv.tonight,
        hypervolume_previous=hv.previous,
        hypervolume_all_time_before=hv.all_time_before,
        hypervolume_all_time=hv.all_time,
        front=front,
        new_front_points=new_points,
        comparisons=comparisons,
        drift=_drift(previous, tonight) if previous is not None else [],
        thresholds=thresholds,
        notes=list(notes),
    )


@dataclass(frozen=True)
class _History:
    """A sweep's rows and those of its task's other sweeps, ordered by start time."""

    sweep_id: str
    task: str
    tonight: pa.Table
    same_task: pa.Table  # every sweep of the task
    order: list[str]  # the task's sweep ids, first started first
    earlier_ids: list[str]  # those started before tonight's
    earlier: pa.Table
    previous_id: str | None  # the last of the earlier ones
    previous: pa.Table | None

    @classmethod
    def of(cls, table: pa.Table, sweep_id: str) -> _History:
        import pyarrow.compute as pc

        tonight = table.filter(pc.equal(table.column("sweep_id"), sweep_id))
        task = _first(tonight.column("task").to_pylist()) or ""
        same_task = table.filter(pc.equal(table.column("task"), task))
        order = _sweeps_by_start(same_task)
        earlier_ids = order[: order.index(sweep_id)]
        previous_id = earlier_ids[-1] if earlier_ids else None
        return cls(
            sweep_id=sweep_id,
            task=task,
            tonight=tonight,
            same_task=same_task,
            order=order,
            earlier_ids=earlier_ids,
            earlier=same_task.filter(pc.is_in(same_task.column("sweep_id"), _array(earlier_ids))),
            previous_id=previous_id,
            previous=(
                same_task.filter(pc.equal(same_task.column("sweep_id"), previous_id))
                if previous_id
                else None
            ),
        )


@dataclass(frozen=True)
class _Hypervolumes:
    """Tonight's, the previous sweep's and the all-time fronts' hypervolumes, from one fixed
    reference point (the baseline of the task's earliest sweep)."""

    reference_sweep_id: str
    reference: dict[str, float]
    tonight: float
    previous: float | None
    all_time_before: float | None
    all_time: float

    @classmethod
    def of(cls, history: _History, objectives: Mapping[str, str]) -> _Hypervolumes:
        import pyarrow.compute as pc

        from orchestrator.query.pareto import hypervolume

        same_task, previous = history.same_task, history.previous
        reference_id = history.earlier_ids[0] if history.earlier_ids else history.sweep_id
        reference = fixed_reference(
            same_task.filter(pc.equal(same_task.column("sweep_id"), reference_id)), objectives
        )
        everything = same_task.filter(pc.is_in(same_task.column("sweep_id"), _array(history.order)))
        return cls(
            reference_sweep_id=reference_id,
            reference=reference,
            tonight=hypervolume(history.tonight, objectives, reference),
            previous=hypervolume(previous, objectives, reference) if previous is not None else None,
            all_time_before=(
                hypervolume(history.earlier, objectives, reference) if history.earlier_ids else None
            ),
            all_time=hypervolume(everything, objectives, reference),
        )


def _front_points(
    history: _History, objectives: Mapping[str, str], names: list[str] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tonight's front (best first on the first objective) and its points that no earlier
    trial matches, each as knobs + objectives."""
    from orchestrator.query.pareto import pareto_front

    front_rows = _quiet(pareto_front, history.tonight, objectives).to_pylist()
    first = next(iter(objectives))
    front_rows.sort(key=lambda r: r[first] or 0.0, reverse=objectives[first] == "max")
    front = [_point(r, objectives, names) for r in front_rows]
    new_points = [
        _point(r, objectives, names)
        for r in front_rows
        if not _matched_by_earlier(r, history.earlier, objectives)
    ]
    return front, new_points


def fixed_reference(rows: pa.Table, objectives: Mapping[str, str]) -> dict[str, float]:
    """The reference point from the baseline row of `rows`: squeezeray's one hypervolume
    reference (`orchestrator.query.pareto.baseline_reference`, see the module docstring)."""
    from orchestrator.query.pareto import baseline_reference

    return baseline_reference(rows, objectives)


def _sweeps_by_start(table: pa.Table) -> list[str]:
    """Sweep ids ordered by their earliest started_at (sweeps without one first)."""
    never = datetime.min.replace(tzinfo=timezone.utc)
    starts: dict[str, datetime] = {}
    for sweep, started in zip(
        table.column("sweep_id").to_pylist(), table.column("started_at").to_pylist(), strict=True
    ):
        if sweep not in starts or (
            started is not None and (starts[sweep] == never or started < starts[sweep])
        ):
            starts[sweep] = started or never
    return sorted(starts, key=lambda s: (starts[s], s))


def _array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _quiet(fn: Any, *args: Any) -> Any:
    """Call `fn` without its missing-objective warning (the report counts failures itself)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _knobs(row: Mapping[str, Any], names: Sequence[str] | None) -> dict[str, Any]:
    params = json.loads(row.get("params") or "{}")
    if names is None:
        return dict(sorted(params.items()))
    return {name: params[name] for name in names if name in params}


def _knob_text(knobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format_number(v)}" for k, v in knobs.items()) or "(no knobs)"


def _point(
    row: Mapping[str, Any], objectives: Mapping[str, str], names: Sequence[str] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"trial_id": row["trial_id"], "knobs": _knob_text(_knobs(row, names))}
    out.update({name: row.get(name) for name in objectives})
    return out


def _matched_by_earlier(
    row: Mapping[str, Any], earlier: pa.Table, objectives: Mapping[str, str]
) -> bool:
    """True when an earlier ok trial is at least as good as `row` in every objective."""
    from orchestrator.query.pareto import eligible_mask

    if earlier.num_rows == 0:
        return False
    keep = eligible_mask(earlier)
    no_worse = keep.copy()
    for name, direction in objectives.items():
        column = earlier.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        value = float(row[name])
        with np.errstate(invalid="ignore"):
            no_worse &= column >= value if direction == "max" else column <= value
    return bool(no_worse.any())


def _hypervolume_check(before: float, after: float, thresholds: Thresholds) -> Comparison:
    change = (after / before - 1.0) * 100.0 if before > 0 else 0.0
    return Comparison(
        kind="hypervolume",
        knobs="",
        before=before,
        after=after,
        change=change,
        threshold=thresholds.hypervolume_drop_pct,
        crossed=before > 0 and -change > thresholds.hypervolume_drop_pct,
    )


def _by_knobs(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows.to_pylist():
        if row.get("is_baseline") or row.get("status") != "ok":
            continue
        out.setdefault(row.get("params") or "{}", []).append(row)
    return out


def _median(rows: list[dict[str, Any]], column: str) -> float | None:
    values = [float(r[column]) for r in rows if r.get(column) is not None]
    return statistics.median(values) if values else None


def _same_knob_checks(
    previous: pa.Table, tonight: pa.Table, thresholds: Thresholds, names: Sequence[str] | None
) -> list[Comparison]:
    before, after = _by_knobs(previous), _by_knobs(tonight)
    out: list[Comparison] = []
    for key in sorted(set(before) & set(after)):
        knobs = _knob_text(_knobs({"params": key}, names))
        acc0 = _median(before[key], "test_accuracy")
        acc1 = _median(after[key], "test_accuracy")
        if acc0 is not None and acc1 is not None:
            points = (acc1 - acc0) * 100.0
            out.append(
                Comparison(
                    kind="accuracy",
                    knobs=knobs,
                    before=acc0,
                    after=acc1,
                    change=points,
                    threshold=thresholds.accuracy_drop_points,
                    crossed=-points > thresholds.accuracy_drop_points,
                )
            )
        # the in-sweep latency: every row has it, measured the same way each night
        lat0 = _median(before[key], "latency_ms_sweep")
        lat1 = _median(after[key], "latency_ms_sweep")
        if lat0 is not None and lat1 is not None and lat0 > 0:
            pct = (lat1 / lat0 - 1.0) * 100.0
            out.append(
                Comparison(
                    kind="latency",
                    knobs=knobs,
                    before=lat0,
                    after=lat1,
                    change=pct,
                    threshold=thresholds.latency_increase_pct,
                    crossed=pct > thresholds.latency_increase_pct,
                )
            )
    return out


def _ok_baseline(rows: pa.Table) -> dict[str, Any]:
    """The first ok baseline row of `rows`, or {}."""
    found = [r for r in rows.to_pylist() if r.get("is_baseline") and r["status"] == "ok"]
    return found[0] if found else {}


def _drift(previous: pa.Table, tonight: pa.Table) -> list[Drift]:
    b0, b1 = _ok_baseline(previous), _ok_baseline(tonight)
    return [
        Drift(metric=m, before=_float(b0.get(m)), after=_float(b1.get(m)))
        for m in ("test_accuracy", "size_bytes", "params_total", "latency_ms_sweep")
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _first(values: list[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def format_number(value: Any) -> str:
    """A number as the report prints it: 4 significant digits; whole values of 1000+ whole."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return str(int(value))  # bytes, parameter counts
        return f"{value:.4g}"
    return str(value)


# -- rendering ------------------------------------------------------------------------------

# A report is a list of blocks, rendered once as markdown and once as HTML:
#   ("h1" | "h2" | "p", text) or ("table", headers, rows, flagged row indices)
Block = tuple[Any, ...]


def _hv_change(before: float | None, after: float) -> str:
    if before is None:
        return "-"
    if before <= 0:
        return "n/a (was 0)"
    return f"{(after / before - 1.0) * 100.0:+.1f} %"


def report_blocks(report: NightlyReport) -> list[Block]:
    """The report's sections in order: summary and verdict, hypervolumes, new front points,
    regressions, baseline drift, tonight's front."""
    return [
        *_summary_blocks(report),
        *_hypervolume_blocks(report),
        *_new_point_blocks(report),
        *_regression_blocks(report),
        *_drift_blocks(report),
        ("h2", f"Tonight's front ({len(report.front)} points)"),
        _points_table(report.front, list(report.objectives))
        if report.front
        else ("p", "Empty: no ok trial."),
    ]


def _summary_blocks(r: NightlyReport) -> list[Block]:
    """Title, which sweep against which, the verdict and the run's notes."""
    verdict = (
        f"REGRESSION: {len(r.regressions)} check(s) crossed a threshold (exit code 3)"
        if r.regressions
        else "OK: no threshold crossed (exit code 0)"
    )
    stopped = f"{r.trials_stopped} stopped early by the scheduler, " if r.trials_stopped else ""
    blocks: list[Block] = [
        ("h1", f"squeezeray nightly report: {r.sweep_name or r.sweep_id}"),
        (
            "p",
            f"Sweep {r.sweep_id} of task {r.task} in {r.storage or '(storage)'}, written "
            f"{r.created_at}. Trials: {r.trials_ok} ok, {stopped}{r.trials_failed} failed. "
            f"Previous sweep: {r.previous_sweep_id or 'none (first sweep of this task)'}; "
            f"{r.earlier_sweeps} earlier sweep(s) of this task in total.",
        ),
        ("p", f"Verdict: {verdict}."),
    ]
    return blocks + [("p", note) for note in r.notes]


def _hypervolume_blocks(r: NightlyReport) -> list[Block]:
    """Tonight's hypervolume against the previous sweep's and the all-time fronts', all
    measured from one fixed reference point."""
    ref = ", ".join(f"{k} {format_number(v)}" for k, v in r.reference.items())
    objectives = ", ".join(f"{k}:{v}" for k, v in r.objectives.items())
    return [
        ("h2", "Hypervolume"),
        (
            "p",
            f"Objectives {objectives}; one fixed reference point for every number below: {ref} "
            f"(accuracy 0, and twice the size/latency of the baseline of sweep "
            f"{r.reference_sweep_id}, the earliest of this task). Units: the product of the "
            "objectives' units.",
        ),
        (
            "table",
            ["front", "sweeps", "hypervolume", "change vs tonight"],
            [
                ["tonight", r.sweep_id, format_number(r.hypervolume), ""],
                [
                    "previous sweep",
                    r.previous_sweep_id or "-",
                    format_number(r.hypervolume_previous),
                    _hv_change(r.hypervolume_previous, r.hypervolume),
                ],
                [
                    "all time, before tonight",
                    str(r.earlier_sweeps),
                    format_number(r.hypervolume_all_time_before),
                    _hv_change(r.hypervolume_all_time_before, r.hypervolume),
                ],
                [
                    "all time, with tonight",
                    str(r.earlier_sweeps + 1),
                    format_number(r.hypervolume_all_time),
                    "",
                ],
            ],
            [],
        ),
    ]


def _new_point_blocks(r: NightlyReport) -> list[Block]:
    """Tonight's front points that no earlier trial matches."""
    heading = ("h2", f"New front points ({len(r.new_front_points)})")
    if not r.new_front_points:
        return [
            heading,
            ("p", "None: every front point of tonight was matched by an earlier trial."),
        ]
    return [
        heading,
        ("p", "Tonight's front points that no earlier trial matches or beats in every objective."),
        _points_table(r.new_front_points, list(r.objectives)),
    ]


def _regression_blocks(r: NightlyReport) -> list[Block]:
    """The thresholds, then every check against the previous sweep (crossed ones flagged)."""
    t = r.thresholds
    blocks: list[Block] = [
        ("h2", f"Regressions ({len(r.regressions)})"),
        (
            "p",
            f"Thresholds: hypervolume drop > {t.hypervolume_drop_pct:g} %, same-knob accuracy "
            f"drop > {t.accuracy_drop_points:g} points, same-knob latency increase > "
            f"{t.latency_increase_pct:g} %. Same knobs: identical effective parameters in the "
            "previous sweep and tonight.",
        ),
    ]
    if not r.comparisons:
        return [*blocks, ("p", "Nothing to compare: no previous sweep of this task.")]
    rows = [
        [
            "REGRESSION" if c.crossed else "ok",
            c.kind,
            c.knobs or "(whole front)",
            format_number(c.before),
            format_number(c.after),
            f"{c.change:+.2f}{' points' if c.kind == 'accuracy' else ' %'}",
        ]
        for c in r.comparisons
    ]
    flagged = [i for i, c in enumerate(r.comparisons) if c.crossed]
    headers = ["", "check", "knobs", "previous", "tonight", "change"]
    return [*blocks, ("table", headers, rows, flagged)]


def _drift_blocks(r: NightlyReport) -> list[Block]:
    """How the uncompressed teacher's metrics moved since the previous sweep."""
    blocks: list[Block] = [("h2", "Baseline drift (the uncompressed teacher)")]
    if not r.drift:
        return [*blocks, ("p", "No previous baseline to compare with.")]
    rows = [
        [
            d.metric,
            format_number(d.before),
            format_number(d.after),
            "-" if d.change_pct is None else f"{d.change_pct:+.1f} %",
        ]
        for d in r.drift
    ]
    return [*blocks, ("table", ["metric", "previous", "tonight", "change"], rows, [])]


def _points_table(points: list[dict[str, Any]], columns: list[str]) -> Block:
    rows = [
        [p["trial_id"], *(format_number(p.get(c)) for c in columns), p["knobs"]] for p in points
    ]
    return ("table", ["trial", *columns, "knobs"], rows, [])


def render_markdown(report: NightlyReport) -> str:
    lines: list[str] = []
    for block in report_blocks(report):
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        else:
            headers, rows, flagged = block[1], block[2], set(block[3])
            cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
            lines.append("| " + " | ".join(cell(h) or " " for h in headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            for i, row in enumerate(rows):
                text = [cell(v) for v in row]
                if i in flagged:
                    text = [f"**{v}**" if v else v for v in text]
                lines.append("| " + " | ".join(text) + " |")
            lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr.regression td { background: #fde2e2; font-weight: bold; }
"""


def render_html(report: NightlyReport) -> str:
    """A self-contained page (inline CSS, no scripts, no external resources)."""
    e = html.escape
    title = f"squeezeray nightly report: {report.sweep_name or report.sweep_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for block in report_blocks(report):
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(block[1])}</p>")
        else:
            headers, rows, flagged = block[1], block[2], set(block[3])
            parts.append("<table><thead><tr>")
            parts += [f"<th>{e(str(h))}</th>" for h in headers]
            parts.append("</tr></thead><tbody>")
            for i, row in enumerate(rows):
                cls = ' class="regression"' if i in flagged else ""
                parts.append(f"<tr{cls}>" + "".join(f"<td>{e(str(v))}</td>" for v in row))
                parts.append("</tr>")
            parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    report: NightlyReport, *, store: Storage, report_dir: str | Path | None = None
) -> tuple[str, str]:
    """Write `<sweep_id>.md` and `<sweep_id>.html`; return their paths.

    Default place: `<storage>/reports/` (works for URIs too); `report_dir` is a local folder.
    """
    markdown = render_markdown(report).encode()
    page = render_html(report).encode()
    names = (f"{report.sweep_id}.md", f"{report.sweep_id}.html")
    if report_dir is None:
        return (
            store.write_atomic(markdown, REPORTS_DIR, names[0]),
            store.write_atomic(page, REPORTS_DIR, names[1]),
        )
    from orchestrator.store.storage import open_storage

    local = open_storage(Path(report_dir), create=True)
    return local.write_atomic(markdown, names[0]), local.write_atomic(page, names[1])
