"""The Pareto front of a results table: exact non-dominated sorting and hypervolume.

Dominance (all objectives turned into minimisation): row p dominates row q when p is no worse
in every objective and strictly better in at least one. A row is on the front when no row
dominates it. So duplicates never dominate each other: every copy of a non-dominated point is
kept (moocore's `keep_weakly=True`), and every copy of a dominated point is dropped.

`is_non_dominated` on n points x m objectives:
  1. prefilter (n >= 256): take the point with the smallest normalised sum of objectives as a
     pivot, drop every point it dominates, repeat while that still removes a good share. On
     typical data (uniform random: 1M points, a front of ~100) a couple of numpy passes leave
     a few percent of the points. Only truly dominated points go, and a survivor dominated by
     a dropped point is also dominated by a survivor, so the front of the survivors is the
     front.
  2. exact on the survivors (up to 256: all pairs at once), after a lexicographic sort and
     merging duplicates, so a point can only be dominated by one before it: m = 2 a running
     minimum; m = 3 a vectorised divide and conquer over the sweep order (a radix sort and a
     running minimum per level, O(n log n) numpy work, no Python loop per point: 1M points on
     a plane, all on the front, in about 1 s); m >= 4 blocks compared against the front found
     so far (O(n x front)).

bench/PARETO.md compares it with optuna, pymoo and moocore.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.store.schema import DEFAULT_DIRECTIONS
from stages.errors import SqueezerayError

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_OBJECTIVES: dict[str, str] = {
    "val_accuracy": "max",
    "size_bytes": "min",
    "latency_ms_sweep": "min",
}
DIRECTIONS = ("max", "min")

_BRUTE_MAX = 256  # up to this many points a plain n x n comparison is fastest
_PREFILTER_MIN = 256  # pivots pay off from here on (uniform 2k points: 0.7 -> 0.3 ms)
_LEAF = 16  # divide and conquer: blocks this small are compared pairwise


# -- objectives -----------------------------------------------------------------------------


# What `objectives=` takes, everywhere in the Python API (and the CLI's string):
Objectives = Mapping[str, str] | str | Sequence[str | tuple[str, str]]
OBJECTIVE_SHAPES = (
    '"val_accuracy:max,size_bytes:min" (the CLI\'s --objectives; a column alone takes its '
    'usual direction), a list of columns ["val_accuracy", "size_bytes"], a list of pairs '
    '[("val_accuracy", "max"), ("size_bytes", "min")], or a dict {"val_accuracy": "max"}'
)


def parse_objectives(text: str, *, key: str = "--objectives") -> dict[str, str]:
    """Parse `val_accuracy:max,size_bytes:min`; a bare column takes its natural direction.
    Names follow the one rule of `orchestrator.space.metrics` (`accuracy` is refused)."""
    out: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if item:
            name, _, direction = item.partition(":")
            _add_objective(out, name, direction, key=key, given=text)
    if not out:
        raise SqueezerayError(
            f"{key}={text!r} names no objective; e.g. val_accuracy:max,size_bytes:min"
        )
    return out


def as_objectives(objectives: object, *, key: str = "objectives") -> dict[str, str]:
    """Objectives in any shape the API takes (`OBJECTIVE_SHAPES`) -> {column: "max"|"min"},
    with the CLI's meaning for each name: one parser for both (`parse_objectives`)."""
    if isinstance(objectives, str):
        return parse_objectives(objectives, key=key)
    out: dict[str, str] = {}
    if isinstance(objectives, Mapping):
        pairs = list(objectives.items())
    elif isinstance(objectives, Sequence) and not isinstance(objectives, bytes):
        pairs = [_objective_pair(item, key=key) for item in objectives]
    else:
        raise SqueezerayError(
            f"{key}={objectives!r} is a {type(objectives).__name__}; accepted: {OBJECTIVE_SHAPES}"
        )
    for name, direction in pairs:
        if not isinstance(name, str) or not isinstance(direction, str | None):
            raise SqueezerayError(
                f"{key} has the entry {name!r}: {direction!r}; accepted: {OBJECTIVE_SHAPES}"
            )
        _add_objective(out, name, direction or "", key=key, given=repr(objectives))
    return out


def _objective_pair(item: object, *, key: str) -> tuple[str, str]:
    """One entry of a list of objectives: a column (its usual direction: "" here) or
    "column:max", or a (column, direction) pair."""
    if isinstance(item, str):
        name, _, direction = item.partition(":")
        return name, direction
    if isinstance(item, Sequence) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    raise SqueezerayError(f"{key} has the entry {item!r}; accepted: {OBJECTIVE_SHAPES}")


def _add_objective(out: dict[str, str], name: str, direction: str, *, key: str, given: str) -> None:
    """Check one objective (its name under the metric rule; its direction, or the column's
    usual one when "") and add it to `out`."""
    from orchestrator.space.metrics import resolve_metric

    name, direction = name.strip(), direction.strip().lower()
    resolve_metric(key, name, purpose="choose")
    if not direction:
        if name not in DEFAULT_DIRECTIONS:
            from orchestrator.space.checks import did_you_mean

            hint = did_you_mean(name, list(DEFAULT_DIRECTIONS))  # a misspelt column first
            raise SqueezerayError(
                f"objective {name!r} is not a column with a natural direction{hint}; for "
                f"another numeric column write {name}:max or {name}:min (columns with a "
                f"natural direction: {', '.join(DEFAULT_DIRECTIONS)})"
            )
        direction = DEFAULT_DIRECTIONS[name]
    if direction not in DIRECTIONS:
        raise SqueezerayError(
            f"objective {name}:{direction} has an unknown direction; accepted: max, min"
        )
    if name in out:
        raise SqueezerayError(f"objective {name!r} is named twice in {given}")
    out[name] = direction


def check_objectives(
    objectives: Objectives | None, schema: pa.Schema | None = None
) -> dict[str, str]:
    """Objectives in any accepted shape (`as_objectives`; None: DEFAULT_OBJECTIVES) as
    {column: "max"|"min"}: names under the one rule of `orchestrator.space.metrics` (a bare
    `accuracy` is refused, a test-split column is never chosen on), directions checked, and,
    given a schema, each objective a numeric column."""
    import pyarrow as pa

    from orchestrator.space.metrics import resolve_metric

    chosen = dict(DEFAULT_OBJECTIVES) if objectives is None else as_objectives(objectives)
    if not chosen:
        raise SqueezerayError(f"objectives={objectives!r} is empty; accepted: {OBJECTIVE_SHAPES}")
    for name, direction in chosen.items():
        columns = None if schema is None else schema.names
        resolve_metric("objectives", name, purpose="choose", columns=columns)
        if direction not in DIRECTIONS:
            raise SqueezerayError(
                f"objective {name}={direction!r} has an unknown direction; accepted: max, min"
            )
        if schema is None:
            continue
        numeric = [
            f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
        ]
        if name not in numeric:
            from orchestrator.space.checks import did_you_mean

            raise SqueezerayError(
                f"objective {name!r} is not a numeric column of the results"
                f"{did_you_mean(name, numeric)}; accepted: {', '.join(numeric)}"
            )
    return chosen


def resolve_objectives(objectives: Mapping[str, str], table: pa.Table) -> dict[str, str]:
    """Objective names -> the columns that choose the front: each name is its column (the
    names say their split: `val_accuracy`), checked by `check_objectives` against `table`."""
    return check_objectives(objectives, table.schema)


# -- the core: arrays -----------------------------------------------------------------------


def _to_minimisation(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n, m) values -> (m, n) float64 rows to minimise (one contiguous row per objective)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise SqueezerayError(f"values has shape {array.shape}; expected (n_points, n_objectives)")
    if len(directions) != array.shape[1]:
        raise SqueezerayError(
            f"{len(directions)} directions for {array.shape[1]} objectives; give one per column"
        )
    ys = np.empty((array.shape[1], array.shape[0]))
    np.multiply(array.T, _signs(directions)[:, None], out=ys)
    _check_no_nan(ys)
    return ys


def _signs(directions: Sequence[str]) -> np.ndarray:
    for d in directions:
        if d not in DIRECTIONS:
            raise SqueezerayError(f"direction {d!r} is unknown; accepted: max, min")
    return np.array([-1.0 if d == "max" else 1.0 for d in directions])


def _check_no_nan(ys: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):  # inf - inf in the sum
        suspicious = np.isnan(ys.sum())  # one cheap pass when the data is clean
    if suspicious and np.isnan(ys).any():
        rows = np.flatnonzero(np.isnan(ys).any(axis=0))
        raise SqueezerayError(
            f"values has NaN in {rows.size} rows (first: {rows[:5].tolist()}); drop them first "
            "(pareto_front does, with a warning)"
        )


def is_non_dominated(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n,) bool: True where no other row of `values` (n, m) dominates the row.

    `directions` holds "max" or "min" per column. Duplicates of a non-dominated row are all
    True. NaN is rejected (SqueezerayError); +-inf compares as usual.
    """
    return _non_dominated_min(_to_minimisation(values, directions))


def non_dominated_rank(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n,) int64 non-domination rank: 1 for the front, 2 for the front of the rest, ...

    Peels one front at a time, so it costs (number of fronts) x one `is_non_dominated`.
    """
    ys = _to_minimisation(values, directions)
    n = ys.shape[1]
    ranks = np.zeros(n, dtype=np.int64)
    remaining = np.arange(n)
    rank = 1
    while remaining.size:
        front = _non_dominated_min(ys[:, remaining])
        ranks[remaining[front]] = rank
        remaining = remaining[~front]
        rank += 1
    return ranks


def _non_dominated_min(ys: np.ndarray) -> np.ndarray:
    """(m, n) minimisation rows -> (n,) bool non-dominated mask."""
    m, n = ys.shape
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    if m == 1:
        return ys[0] == ys[0].min()
    candidates = _prefilter(ys) if n >= _PREFILTER_MIN else np.arange(n)
    sub = ys[:, candidates] if candidates.size < n else ys
    out[candidates[_exact(sub)]] = True
    return out


def _prefilter(ys: np.ndarray) -> np.ndarray:
    """Indices of the points that survive elimination by a few pivots (a superset of the front).

    Each pivot is the survivor with the smallest normalised sum of objectives, which no survivor
    dominates. Stops when a pivot removes less than an eighth of the survivors (e.g. at once on
    points that all lie on a plane).
    """
    m, n = ys.shape
    lo, hi = ys.min(axis=1), ys.max(axis=1)
    finite = bool(np.isfinite(lo).all() and np.isfinite(hi).all())
    if not finite:  # the score only picks pivots: clip infinities to the finite range
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-inf rows
            masked = np.where(np.isfinite(ys), ys, np.nan)
            lo = np.nan_to_num(np.nanmin(masked, axis=1))
            hi = np.nan_to_num(np.nanmax(masked, axis=1))
    scale = 1.0 / np.where(hi > lo, hi - lo, 1.0)
    score = np.zeros(n)
    for k in range(m):
        column = ys[k] if finite else np.clip(ys[k], lo[k], hi[k])
        score += column * scale[k]  # the offset -lo[k] is the same for every point
    alive = np.arange(n)
    cur = ys
    for _ in range(64):
        pivot = cur[:, int(np.argmin(score))].copy()
        no_better = cur[0] >= pivot[0]
        worse = cur[0] > pivot[0]
        for k in range(1, m):
            no_better &= cur[k] >= pivot[k]
            worse |= cur[k] > pivot[k]
        dominated = no_better & worse
        removed = int(np.count_nonzero(dominated))
        if removed:
            keep = ~dominated
            alive, cur, score = alive[keep], cur[:, keep], score[keep]
        if removed * 8 < alive.size + removed or alive.size < _BRUTE_MAX:
            break
    return alive


def _exact(ys: np.ndarray) -> np.ndarray:
    """Exact non-dominated mask of (m, n) minimisation rows, any n."""
    m, n = ys.shape
    if n <= _BRUTE_MAX:
        return _brute(ys)
    order = _lex_order(ys)
    srt = ys[:, order]
    # Merge duplicates: a point keeps the fate of its first copy.
    same = np.ones(n - 1, dtype=bool)
    for k in range(m):
        same &= srt[k, 1:] == srt[k, :-1]
    first = np.concatenate(([True], ~same))
    duplicates = not first.all()
    uniq = srt[:, first] if duplicates else srt
    if m == 2:
        nd_u = _front_2d(uniq)
    elif m == 3:
        nd_u = ~_prefix_dominated(uniq[1], uniq[2])
    else:
        nd_u = _front_nd(uniq)
    out = np.empty(n, dtype=bool)
    out[order] = nd_u[np.cumsum(first) - 1] if duplicates else nd_u
    return out


def _brute(ys: np.ndarray) -> np.ndarray:
    """O(n^2 m) pairwise check; the oracle's logic, for small n."""
    no_worse = np.ones((ys.shape[1], ys.shape[1]), dtype=bool)  # [p, q]: p <= q everywhere
    better = np.zeros_like(no_worse)  # [p, q]: p < q somewhere
    for row in ys:
        no_worse &= row[:, None] <= row[None, :]
        better |= row[:, None] < row[None, :]
    return np.logical_not(np.any(no_worse & better, axis=0))


def _lex_order(ys: np.ndarray) -> np.ndarray:
    """Indices sorting the points lexicographically (objective 0, then 1, ...)."""
    return _argsort_ties(ys[0], [ys[k] for k in range(1, ys.shape[0])])


def _argsort_ties(primary: np.ndarray, tie_keys: Sequence[np.ndarray]) -> np.ndarray:
    """argsort of `primary`, runs of equal values ordered by `tie_keys` (first key first).

    np.lexsort over every key, or a stable sort, costs several plain argsorts; an unstable
    argsort then re-sorting only the (usually few) tied runs is as exact and much cheaper.
    """
    n = primary.size
    order = np.argsort(primary)
    srt = primary[order]
    tie = srt[1:] == srt[:-1]
    if not tie.any():
        return order
    in_run = np.zeros(n, dtype=bool)
    in_run[1:] |= tie
    in_run[:-1] |= tie
    pos = np.flatnonzero(in_run)
    run_id = np.cumsum(np.concatenate(([True], ~tie)))[pos]  # runs are contiguous, ascending
    sub = order[pos]
    keys = [key[sub] for key in reversed(tie_keys)]
    order[pos] = sub[np.lexsort((*keys, run_id))]
    return order


def _front_2d(uniq: np.ndarray) -> np.ndarray:
    """Unique, lex-sorted 2-D points: on the front iff objective 1 beats every earlier point."""
    y1 = uniq[1]
    before = np.minimum.accumulate(np.concatenate(([np.inf], y1[:-1])))
    nd = y1 < before
    nd[0] = True
    return nd


def _prefix_dominated(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n,) bool: some j < i has b[j] <= b[i] and c[j] <= c[i].

    With unique points sorted lexicographically by (a, b, c), this is exactly "dominated" in
    3-D: an earlier point already has a <= a[i] and is not equal. Divide and conquer on the
    index: at each level every parent block of 2s indices is ordered by b, and a running
    minimum of c over its left half answers the queries of its right half. All blocks of a
    level are done in one pass of numpy calls; the bottom blocks are compared pairwise.
    """
    n = b.size
    dom = np.zeros(n, dtype=bool)
    if np.isposinf(c).any():  # +inf is the sentinel below: compare dense ranks instead
        by_c = np.argsort(c)
        c_sorted = c[by_c]
        dense = np.empty(n)
        dense[by_c] = np.cumsum(np.concatenate(([0], c_sorted[1:] != c_sorted[:-1])))
        c = dense
    # Bottom: pairwise within blocks of _LEAF consecutive indices.
    full = n - n % _LEAF
    for lo, hi in ((0, full), (full, n)):
        if hi - lo < 2:
            continue
        size = min(_LEAF, hi - lo)
        bb = b[lo:hi].reshape(-1, size)
        cc = c[lo:hi].reshape(-1, size)
        earlier = np.tri(size, k=-1, dtype=bool)  # [i, j]: j < i
        hit = (bb[:, None, :] <= bb[:, :, None]) & (cc[:, None, :] <= cc[:, :, None]) & earlier
        dom[lo:hi] = hit.any(axis=2).reshape(-1)

    # by_b: indices in b order, ties by index (so an earlier equal b counts as "<=").
    by_b = _argsort_ties(b, [np.arange(n)]).astype(np.int32)
    s = _LEAF
    while s < n:
        parents = -(-n // (2 * s))
        key = by_b >> ((2 * s).bit_length() - 1)  # parent block of each index
        key = key.astype(np.uint16) if parents <= 1 << 16 else key  # uint16 sorts by radix
        order = by_b[np.argsort(key, kind="stable")]  # grouped by parent, b order inside
        left = (order & s) == 0  # s is a power of two: bit s of the index picks the half
        cv = c[order]
        vals = np.where(left, cv, np.inf)
        acc = np.empty_like(vals)  # running min of c over the left half, per parent
        nfull = (n // (2 * s)) * (2 * s)
        if nfull:
            acc[:nfull] = np.minimum.accumulate(vals[:nfull].reshape(-1, 2 * s), axis=1).ravel()
        if nfull < n:
            acc[nfull:] = np.minimum.accumulate(vals[nfull:])
        hit = ~left & (acc <= cv)
        dom[order[hit]] = True
        s *= 2
    return dom


def _front_nd(uniq: np.ndarray, *, block: int = 256) -> np.ndarray:
    """Unique, lex-sorted points, any m: each block against the front so far, then itself."""
    m, n = uniq.shape
    nd = np.zeros(n, dtype=bool)
    front = np.empty((m, 0))
    earlier = np.tri(block, k=-1, dtype=bool)
    for lo in range(0, n, block):
        blk = uniq[:, lo : lo + block]  # (m, b)
        size = blk.shape[1]
        dominated = np.zeros(size, dtype=bool)
        for f0 in range(0, front.shape[1], 4096):
            f = front[:, f0 : f0 + 4096]
            le = np.ones((f.shape[1], size), dtype=bool)  # [front point, block point]
            for k in range(m):
                le &= f[k][:, None] <= blk[k][None, :]
            dominated |= le.any(axis=0)
        within = earlier[:size, :size].copy()  # [i, j]: j < i and blk[j] <= blk[i]
        for k in range(m):
            within &= blk[k][None, :] <= blk[k][:, None]
        dominated |= within.any(axis=1)
        nd[lo : lo + size] = ~dominated
        front = np.concatenate((front, blk[:, ~dominated]), axis=1)
    return nd


# -- hypervolume ----------------------------------------------------------------------------


def _hypervolume_min(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of (n, m) minimisation points against `ref` (m,).

    Only points strictly better than `ref` in every objective count. m = 2 sums rectangles,
    m = 3 sweeps the third objective keeping a 2-D staircase and its area, m >= 4 slices along
    the last objective (HSO): exact, but exponential in m, meant for fronts of hundreds.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, ref.size)
    pts = pts[(pts < ref).all(axis=1)]
    if pts.shape[0] == 0:
        return 0.0
    pts = np.unique(pts, axis=0)
    pts = pts[_non_dominated_min(np.ascontiguousarray(pts.T))]
    m = ref.size
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        return _hv2(pts, ref)
    if m == 3:
        return _hv3(pts, ref)
    return _hv_slice(pts, ref)


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    """Non-dominated 2-D points: sorted by x, y falls; sum the vertical strips."""
    srt = pts[np.argsort(pts[:, 0])]
    right = np.append(srt[1:, 0], ref[0])
    return float(np.sum((right - srt[:, 0]) * (ref[1] - srt[:, 1])))


def _hv3(pts: np.ndarray, ref: np.ndarray) -> float:
    """Sweep z upwards; the dominated (x, y) area grows as points enter a 2-D staircase."""
    import bisect

    srt = pts[np.argsort(pts[:, 2], kind="stable")]
    xs: list[float] = []  # staircase: x rising, y falling
    ys: list[float] = []
    area = 0.0
    volume = 0.0
    rx, ry = float(ref[0]), float(ref[1])
    for i in range(srt.shape[0]):
        x, y, z = (float(v) for v in srt[i])
        if i:
            volume += area * (z - float(srt[i - 1, 2]))
        pos = bisect.bisect_right(xs, x)
        if pos and ys[pos - 1] <= y:
            continue  # (x, y) already covered
        start = bisect.bisect_left(xs, x)
        stop = start
        while stop < len(xs) and ys[stop] >= y:
            stop += 1
        # Added area: from x rightwards the old height exceeds y until the first kept point.
        height = ys[start - 1] if start else ry
        cursor = x
        for j in range(start, stop):
            area += (xs[j] - cursor) * (height - y)
            cursor, height = xs[j], ys[j]
        end = xs[stop] if stop < len(xs) else rx
        area += (end - cursor) * (height - y)
        xs[start:stop] = [x]
        ys[start:stop] = [y]
    return volume + area * (float(ref[2]) - float(srt[-1, 2]))


def _hv_slice(pts: np.ndarray, ref: np.ndarray) -> float:
    """m >= 4: slabs between consecutive values of the last objective, each an (m-1)-D HV."""
    srt = pts[np.argsort(pts[:, -1], kind="stable")]
    last = np.append(srt[1:, -1], ref[-1])
    total = 0.0
    for i in range(srt.shape[0]):
        depth = float(last[i] - srt[i, -1])
        if depth > 0:
            total += depth * _hypervolume_min(srt[: i + 1, :-1], ref[:-1])
    return total


# -- tables ---------------------------------------------------------------------------------


def _objective_columns(table: pa.Table, objectives: Mapping[str, str]) -> list[np.ndarray]:
    """One float64 array per objective column; nulls become NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return [
        pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
        for name in objectives
    ]


def _objective_matrix(table: pa.Table, objectives: Mapping[str, str]) -> np.ndarray:
    """(n, m) float64 of the objective columns; nulls become NaN."""
    columns = _objective_columns(table, objectives)
    return np.column_stack(columns) if columns else np.empty((table.num_rows, 0))


def eligible_mask(table: pa.Table) -> np.ndarray:
    """(n,) bool: status == "ok" and not a baseline row (columns absent: every row)."""
    import pyarrow.compute as pc

    mask = np.ones(table.num_rows, dtype=bool)
    names = set(table.column_names)
    if "status" in names:
        ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
        mask &= ok.to_numpy(zero_copy_only=False)
    if "is_baseline" in names:
        base = pc.fill_null(table.column("is_baseline"), False)
        mask &= ~base.to_numpy(zero_copy_only=False)
    return mask


def pareto_front(
    table: pa.Table,
    objectives: Objectives | None = None,
    *,
    where: str | None = None,
    baseline: bool = False,
) -> pa.Table:
    """The rows of `table` on the Pareto front of `objectives` (default val_accuracy:max,
    size_bytes:min, latency_ms_sweep:min), in table order.

    `baseline`: also the baseline rows of the sweeps the front comes from, first (none when the
    front is empty): the rows `squeezeray pareto` lists (its csv/json/parquet too, which sort
    the front best first and add the ratio columns size_x and accuracy_delta_pts). A baseline
    is the reference the front is read against, never a front point; `where` does not drop it.

    `objectives`: "val_accuracy:max,size_bytes:min" (the CLI's --objectives), a list of
    columns ["val_accuracy", "size_bytes"] (each its usual direction), a list of
    (column, "max"|"min") pairs, or a dict {column: "max"|"min"}; anything else is a
    SqueezerayError naming these shapes (`as_objectives`).

    `where` (see `orchestrator.query.where`) filters rows first. Only rows with status "ok" that are
    not baselines compete; objectives name their columns under the one rule of
    `orchestrator.space.metrics` (a bare `accuracy` is refused, the test split is never chosen
    on); rows with a null/NaN objective are left out with a warning that counts them. Copies of
    a front point are all kept.
    """
    chosen = resolve_objectives(check_objectives(objectives, table.schema), table)
    unfiltered = table
    if where:
        from orchestrator.query.knobs import with_knob_columns
        from orchestrator.query.where import parse_where

        unfiltered = table = with_knob_columns(table)
        table = table.filter(parse_where(where, table.schema))
    columns = _objective_columns(table, chosen)
    eligible = eligible_mask(table)
    missing = np.zeros(table.num_rows, dtype=bool)
    for column in columns:
        missing |= np.isnan(column)
    missing &= eligible
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} of {int(eligible.sum())} ok rows have a missing or NaN "
            f"objective ({', '.join(chosen)}) and were left out of the Pareto front",
            stacklevel=2,
        )
    rows = np.flatnonzero(eligible & ~missing)
    ys = np.empty((len(columns), rows.size))  # (m, n) minimisation rows, as the core wants
    full = rows.size == table.num_rows
    for k, (column, sign) in enumerate(zip(columns, _signs(list(chosen.values())), strict=True)):
        np.multiply(column if full else column[rows], sign, out=ys[k])
    front = table.take(rows[_non_dominated_min(ys)])
    if not baseline or not front.num_rows:
        return front
    import pyarrow as pa

    return pa.concat_tables([front_baselines(unfiltered, front), front])


def front_baselines(table: pa.Table, front: pa.Table) -> pa.Table:
    """The baseline rows of `table` (`is_baseline`, any status) of the sweeps `front`'s rows
    come from; every sweep's when `front` is empty or has no sweep_id column."""
    import pyarrow.compute as pc

    if "is_baseline" not in table.column_names:
        return table.slice(0, 0)
    baselines = table.filter(pc.fill_null(table.column("is_baseline"), False))
    if front.num_rows and "sweep_id" in front.column_names and baselines.num_rows:
        sweeps = pc.unique(front.column("sweep_id"))
        baselines = baselines.filter(pc.is_in(baselines.column("sweep_id"), value_set=sweeps))
    return baselines


REFERENCE_SLACK = 2.0  # min objectives: the reference is this multiple of the baseline value
# The baseline's latency for a reference: its final-phase figure (interleaved rounds after the
# search) where the final phase measured it. The in-sweep one was taken beside the first trials'
# training and, on a busy machine with a short time cap, from a handful of calls (a ViT's read
# 46 ms +-62% against 3.7 ms in the final phase, and became every later sweep's reference).
_STEADIER_BASELINE = {
    "latency_ms_sweep": "latency_ms_final",
    "latency_ms_sweep_p90": "latency_ms_final_p90",
}


def baseline_reference(table: pa.Table, objectives: Mapping[str, str]) -> dict[str, float]:
    """The one hypervolume reference point squeezeray uses, from the ok baseline row (the
    uncompressed teacher) of `table`:

        a max objective (val_accuracy)        0: every model that predicts anything counts
        a min objective (size, latency, ...)  2 x the baseline's value: a compressed model
                                              counts while it is no worse than twice the teacher

    (The baseline itself would be a poor reference: it is the most accurate model, so nothing
    would be strictly better than it in accuracy, and tiny models are often no faster.)
    A latency's baseline value is the final phase's (`latency_ms_final`, its p90) where the
    final phase measured the baseline, else the in-sweep one. Without a usable baseline value
    (it failed, or is 0), 2 x the worst ok value of the objective is used. Keyed by the
    objectives' names. A sweep stores it in its manifest (`hypervolume_reference`);
    `squeezeray sweeps` and nightly reports measure every sweep of a task against the
    reference of the task's earliest sweep, so their numbers compare.
    """
    import pyarrow.compute as pc

    rows = table.filter(pc.fill_null(pc.equal(table.column("status"), "ok"), False))
    baseline = rows.filter(pc.fill_null(rows.column("is_baseline"), False)).to_pylist()
    ref: dict[str, float] = {}
    for name, direction in objectives.items():
        if direction == "max":
            ref[name] = 0.0
            continue
        value = _baseline_value(baseline[0], name) if baseline else None
        if value is None or not np.isfinite(float(value)) or float(value) <= 0:
            value = _worst(rows, name, direction)
        ref[name] = float(value) * REFERENCE_SLACK
    return ref


def _baseline_value(baseline: Mapping[str, Any], name: str) -> Any:
    """The baseline row's value of `name` for a reference (`_STEADIER_BASELINE`)."""
    steadier = baseline.get(_STEADIER_BASELINE.get(name, name))
    return steadier if steadier is not None else baseline.get(name)


def metrics_reference(table: pa.Table) -> dict[str, float]:
    """`baseline_reference` of every metric column of `table` that has a natural direction
    (what a sweep stores in its manifest as `hypervolume_reference`, so any objectives of a
    later query find their reference there); metrics without any value are left out."""
    ref: dict[str, float] = {}
    for name, direction in DEFAULT_DIRECTIONS.items():
        if name in table.column_names and name != "speedup":
            try:
                ref.update(baseline_reference(table, {name: direction}))
            except SqueezerayError:
                continue
    return ref


def hypervolume_of_points(
    points: Sequence[Sequence[float]],
    objectives: Mapping[str, str],
    reference: Mapping[str, float],
) -> float:
    """The hypervolume of `points` (one value per objective, in `objectives`' order) against
    `reference`, as `hypervolume` computes it for a table's rows."""
    if not points:
        return 0.0
    signs = np.array([-1.0 if d == "max" else 1.0 for d in objectives.values()])
    values = np.asarray(points, dtype=float).reshape(len(points), len(objectives))
    values = values[~np.isnan(values).any(axis=1)]
    ref = np.array([float(reference[name]) for name in objectives]) * signs
    return _hypervolume_min(values * signs, ref)


def _worst(rows: pa.Table, name: str, direction: str) -> float:
    column = _objective_columns(rows, {name: direction})[0]
    column = column[~np.isnan(column)]
    if column.size == 0:
        raise SqueezerayError(
            f"no ok row has a value for objective {name!r}; pass reference={{...}}"
        )
    return float(column.min() if direction == "max" else column.max())


def hypervolume(
    front: pa.Table,
    objectives: Objectives | None = None,
    reference: Mapping[str, float] | None = None,
) -> float:
    """Exact hypervolume dominated by the ok, non-baseline rows of `front` (any results table;
    dominated rows add nothing), in the product of the objectives' own units. `objectives`
    takes the shapes `pareto_front` takes (a list of columns, the CLI's string, pairs, a dict).

    `reference` maps every objective to a value in its units, e.g. {"val_accuracy": 0.5,
    "size_bytes": 200_000, "latency_ms_sweep": 0.1}; default `baseline_reference(front,
    objectives)`: 0 for max objectives, 2 x the baseline row's value for min ones. A point adds
    volume only where it is strictly better than the reference in every objective, so points
    on the reference's boundary add nothing. Extra keys in `reference` (a stored reference
    covers every metric) are ignored.
    """
    chosen = check_objectives(objectives, front.schema)
    columns = list(chosen)
    if reference is not None:
        reference = {k: v for k, v in reference.items() if k in chosen} or reference
    if reference is None:
        if front.num_rows == 0:
            return 0.0
        ref_map = baseline_reference(front, chosen)
    else:
        unknown = sorted(set(reference) - set(chosen))
        missing = [name for name in chosen if name not in reference]
        if unknown or missing:
            raise SqueezerayError(
                f"reference keys {sorted(reference)} must be exactly the objectives "
                f"{list(chosen)} (missing: {missing}, unknown: {unknown})"
            )
        ref_map = {name: float(reference[name]) for name in chosen}
    values = _objective_matrix(front, dict(zip(columns, chosen.values(), strict=True)))
    keep = eligible_mask(front) & ~np.isnan(values).any(axis=1)
    signs = np.array([-1.0 if d == "max" else 1.0 for d in chosen.values()])
    ref = np.array([ref_map[name] for name in chosen]) * signs
    return _hypervolume_min(values[keep] * signs, ref)
