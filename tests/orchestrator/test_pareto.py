"""Pareto front and hypervolume against brute-force oracles (2, 3, 5 objectives, ties, NaN)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.query import pareto
from orchestrator.query.pareto import (
    hypervolume,
    is_non_dominated,
    non_dominated_rank,
    pareto_front,
    parse_objectives,
    resolve_objectives,
)
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError

# -- oracles --------------------------------------------------------------------------------


def oracle_front(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """O(n^2): a point is on the front when no point is <= everywhere and < somewhere."""
    y = values * np.array([-1.0 if d == "max" else 1.0 for d in directions])
    out = np.ones(len(y), dtype=bool)
    for lo in range(0, len(y), 512):  # [i, j]: does j dominate i? in row blocks, for memory
        q = y[lo : lo + 512]
        no_worse = np.ones((len(q), len(y)), dtype=bool)
        better = np.zeros((len(q), len(y)), dtype=bool)
        for k in range(y.shape[1]):
            no_worse &= y[None, :, k] <= q[:, k, None]
            better |= y[None, :, k] < q[:, k, None]
        out[lo : lo + 512] = ~(no_worse & better).any(axis=1)
    return out


def oracle_rank(values: np.ndarray, directions: list[str]) -> np.ndarray:
    ranks = np.zeros(len(values), dtype=int)
    left = np.arange(len(values))
    rank = 1
    while left.size:
        front = oracle_front(values[left], directions)
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    return ranks


def oracle_hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Inclusion-exclusion over every subset (minimisation): exact, for n <= ~10."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), k):
            corner = points[list(subset)].max(axis=0)
            volume = float(np.prod(np.clip(ref - corner, 0, None)))
            total += volume if k % 2 else -volume
    return total


def sample(rng: np.random.Generator, n: int, m: int, kind: str) -> np.ndarray:
    if kind == "grid":  # many ties and duplicates
        return rng.integers(0, 4, size=(n, m)).astype(float)
    if kind == "plane":  # every point non-dominated
        return rng.dirichlet(np.ones(m), size=n)
    if kind == "dupes":
        values = rng.random((n, m))
        if n:
            values[rng.random(n) < 0.3] = values[0]
        return values
    return rng.random((n, m))


# -- the core -------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("kind", ["uniform", "grid", "plane", "dupes"])
def test_front_matches_oracle(m: int, kind: str) -> None:
    rng = np.random.default_rng(m * 31 + len(kind))
    for n in (0, 1, 2, 7, 63, 64, 65, 300, 2500):
        values = sample(rng, n, m, kind)
        directions = list(rng.choice(["min", "max"], size=m))
        got = is_non_dominated(values, directions)
        np.testing.assert_array_equal(got, oracle_front(values, directions), err_msg=f"n={n}")


@settings(max_examples=60, deadline=None)
@given(
    m=st.sampled_from([2, 3, 5]),
    rows=st.lists(st.lists(st.integers(-3, 3), min_size=5, max_size=5), max_size=120),
    flips=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_front_property(m: int, rows: list[list[int]], flips: list[bool]) -> None:
    values = np.array(rows, dtype=float).reshape(-1, 5)[:, :m]
    directions = ["max" if f else "min" for f in flips[:m]]
    got = is_non_dominated(values, directions)
    np.testing.assert_array_equal(got, oracle_front(values, directions))


@pytest.mark.parametrize("m", [2, 3])
def test_large_inputs_take_the_fast_paths_and_stay_exact(m: int) -> None:
    """Sizes past the prefilter threshold; compared with the oracle on the survivors' logic."""
    rng = np.random.default_rng(7)
    for kind in ("uniform", "plane", "grid"):
        values = sample(rng, 5000, m, kind)
        got = is_non_dominated(values, ["min"] * m)
        np.testing.assert_array_equal(got, oracle_front(values, ["min"] * m), err_msg=kind)


def test_prefix_dominated_matches_brute_force_with_ties_and_infinities() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 15, 16, 17, 33, 200, 1000):
        b = rng.integers(0, 5, n).astype(float)
        c = rng.integers(0, 5, n).astype(float)
        c[rng.random(n) < 0.1] = np.inf
        b[rng.random(n) < 0.1] = -np.inf
        expected = np.array([np.any((b[:i] <= b[i]) & (c[:i] <= c[i])) for i in range(n)])
        np.testing.assert_array_equal(pareto._prefix_dominated(b, c), expected)


def test_duplicates_of_a_front_point_are_all_kept() -> None:
    values = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0], [2.0, 2.0], [2.0, 2.0]])
    assert is_non_dominated(values, ["min", "min"]).tolist() == [True, True, True, False, False]


def test_infinities_compare_as_numbers() -> None:
    values = np.array([[np.inf, 0.0], [1.0, 1.0], [1.0, np.inf], [-np.inf, 5.0]])
    np.testing.assert_array_equal(
        is_non_dominated(values, ["min", "min"]), oracle_front(values, ["min", "min"])
    )


def test_nan_and_bad_directions_are_rejected() -> None:
    with pytest.raises(SqueezerayError, match="NaN in 1 rows"):
        is_non_dominated(np.array([[1.0, np.nan], [0.0, 0.0]]), ["min", "min"])
    with pytest.raises(SqueezerayError, match="direction 'up' is unknown; accepted: max, min"):
        is_non_dominated(np.zeros((2, 2)), ["min", "up"])
    with pytest.raises(SqueezerayError, match="2 directions for 3 objectives"):
        is_non_dominated(np.zeros((2, 3)), ["min", "min"])


@pytest.mark.parametrize("m", [2, 3, 5])
def test_rank_matches_oracle(m: int) -> None:
    rng = np.random.default_rng(m)
    for kind in ("uniform", "grid", "dupes"):
        values = sample(rng, 200, m, kind)
        directions = ["max"] + ["min"] * (m - 1)
        np.testing.assert_array_equal(
            non_dominated_rank(values, directions), oracle_rank(values, directions)
        )


def test_one_objective_front_is_the_best_value_and_its_ties() -> None:
    values = np.array([[3.0], [1.0], [1.0], [2.0]])
    assert is_non_dominated(values, ["min"]).tolist() == [False, True, True, False]
    assert non_dominated_rank(values, ["max"]).tolist() == [1, 3, 3, 2]


# -- hypervolume ----------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_hypervolume_matches_inclusion_exclusion(m: int) -> None:
    rng = np.random.default_rng(100 + m)
    for trial in range(40):
        n = int(rng.integers(0, 9))
        pts = rng.integers(0, 5, size=(n, m)).astype(float) if trial % 2 else rng.random((n, m))
        ref = np.full(m, 4.0 if trial % 2 else 1.0) - rng.random(m) * 0.5 * (trial % 3 == 0)
        expected = oracle_hypervolume(pts, ref)
        assert pareto._hypervolume_min(pts, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hypervolume_grid_count_3d() -> None:
    """Integer points: the volume equals the number of unit cells dominated."""
    rng = np.random.default_rng(5)
    pts = rng.integers(0, 6, size=(30, 3)).astype(float)
    ref = np.array([6.0, 6.0, 6.0])
    cells = itertools.product(range(6), repeat=3)
    count = sum(bool(((pts <= np.array(c)).all(axis=1)).any()) for c in cells)
    assert pareto._hypervolume_min(pts, ref) == count


def test_hypervolume_points_not_strictly_better_than_reference_add_nothing() -> None:
    ref = np.array([1.0, 1.0])
    assert pareto._hypervolume_min(np.array([[1.0, 0.0], [0.5, 1.0]]), ref) == 0.0
    assert pareto._hypervolume_min(np.array([[0.5, 0.5], [2.0, -5.0]]), ref) == 0.25


# -- tables ---------------------------------------------------------------------------------


def table_of(rows: list[dict]) -> pa.Table:
    base = {"sweep_id": "s", "status": "ok", "is_baseline": False}
    full = [{**base, "trial_id": f"t{i}", **r} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=RESULTS_SCHEMA)


def test_pareto_front_skips_failed_and_baseline_rows_and_warns_on_nan() -> None:
    table = table_of(
        [
            {
                "val_accuracy": 0.99,
                "size_bytes": 100_000,
                "latency_ms_sweep": 0.03,
                "is_baseline": True,
            },
            {"val_accuracy": 0.999, "size_bytes": 1, "latency_ms_sweep": 0.001, "status": "error"},
            {"val_accuracy": 0.97, "size_bytes": 20_000, "latency_ms_sweep": 0.02},
            {"val_accuracy": 0.96, "size_bytes": 6_000, "latency_ms_sweep": 0.02},
            {
                "val_accuracy": 0.95,
                "size_bytes": 7_000,
                "latency_ms_sweep": 0.03,
            },  # dominated by t3
            {"val_accuracy": float("nan"), "size_bytes": 10, "latency_ms_sweep": 0.01},
            {"val_accuracy": 0.5, "size_bytes": None, "latency_ms_sweep": 0.001},
        ]
    )
    with pytest.warns(UserWarning, match=r"2 of 5 ok rows have a missing or NaN objective"):
        front = pareto_front(table)
    assert front.column("trial_id").to_pylist() == ["t2", "t3"]
    assert front.schema == table.schema


def test_pareto_front_custom_objectives_and_where() -> None:
    table = table_of(
        [
            {"val_accuracy": 0.97, "params_nonzero": 900, "prune.method": "structured"},
            {"val_accuracy": 0.98, "params_nonzero": 2000, "prune.method": "global"},
            {"val_accuracy": 0.96, "params_nonzero": 800, "prune.method": "structured"},
        ]
    )
    front = pareto_front(table, {"val_accuracy": "max", "params_nonzero": "min"})
    assert front.column("trial_id").to_pylist() == ["t0", "t1", "t2"]
    front = pareto_front(
        table,
        {"val_accuracy": "max", "params_nonzero": "min"},
        where='prune.method == "structured"',
    )
    assert front.column("trial_id").to_pylist() == ["t0", "t2"]


def test_pareto_front_on_an_empty_table() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pareto_front(table_of([])).num_rows == 0


def test_objective_checks() -> None:
    with pytest.raises(SqueezerayError, match=r"'prune.method' is not a numeric column.*accuracy"):
        pareto_front(table_of([]), {"prune.method": "max"})
    with pytest.raises(SqueezerayError, match="unknown direction; accepted: max, min"):
        pareto_front(table_of([]), {"val_accuracy": "maximum"})


def test_parse_objectives() -> None:
    assert parse_objectives("val_accuracy:max, size_bytes:min,latency_ms_sweep") == {
        "val_accuracy": "max",
        "size_bytes": "min",
        "latency_ms_sweep": "min",
    }
    with pytest.raises(SqueezerayError, match="unknown direction"):
        parse_objectives("val_accuracy:up")
    with pytest.raises(
        SqueezerayError, match="natural direction; for another numeric column write wall_s:max"
    ):
        parse_objectives("wall_s")
    # a misspelt column is named first (new user F7: the advice to add :min led to a second
    # error, "not a numeric column")
    with pytest.raises(SqueezerayError, match=r"'size_byte' .*\(did you mean size_bytes\?\)"):
        parse_objectives("val_accuracy, size_byte")
    with pytest.raises(SqueezerayError, match="named twice"):
        parse_objectives("val_accuracy,val_accuracy:min")
    with pytest.raises(SqueezerayError, match=r"'accuracy' is ambiguous.*val_accuracy.*test_acc"):
        parse_objectives("accuracy:max")
    with pytest.raises(SqueezerayError, match=r"'latency_ms' is ambiguous.*latency_ms_sweep"):
        parse_objectives("latency_ms")


def test_objectives_take_every_documented_shape_with_the_clis_meaning() -> None:
    """A list of columns (each its usual direction, as the CLI's bare column), the CLI's
    "col:max,col:min" string, pairs and a dict all mean the same front and hypervolume; any
    other shape is a SqueezerayError naming the accepted ones."""
    table = table_of(
        [
            {"val_accuracy": 0.9, "size_bytes": 200, "is_baseline": True},
            {"val_accuracy": 0.8, "size_bytes": 100},
            {"val_accuracy": 0.7, "size_bytes": 50},
            {"val_accuracy": 0.6, "size_bytes": 150},  # dominated
        ]
    )
    shapes = [
        ["val_accuracy", "size_bytes"],
        "val_accuracy:max,size_bytes:min",
        "val_accuracy, size_bytes",
        [("val_accuracy", "max"), ("size_bytes", "min")],
        ["val_accuracy:max", "size_bytes"],
        {"val_accuracy": "max", "size_bytes": "min"},
    ]
    expected = {"val_accuracy": "max", "size_bytes": "min"}
    for objectives in shapes:
        assert pareto.check_objectives(objectives) == expected, objectives
        front = pareto_front(table, objectives)
        assert front.column("trial_id").to_pylist() == ["t1", "t2"], objectives
        assert hypervolume(table, objectives) == pytest.approx(0.8 * 300 + 0.7 * 50), objectives
    # one meaning per name: the list refuses what the CLI refuses, with the same words
    with pytest.raises(SqueezerayError, match=r"'accuracy' is ambiguous.*val_accuracy"):
        pareto_front(table, ["accuracy", "size_bytes"])
    with pytest.raises(SqueezerayError, match="another numeric column write wall_s:max"):
        pareto_front(table, ["wall_s"])
    with pytest.raises(SqueezerayError, match="named twice"):
        hypervolume(table, ["size_bytes", ("size_bytes", "max")])
    for bad in (42, [("val_accuracy", "max", "x")], [3], {"val_accuracy": 1}):
        with pytest.raises(SqueezerayError, match=r"accepted: .*col.*list of pairs.*dict"):
            pareto_front(table, bad)  # type: ignore[arg-type]
    with pytest.raises(SqueezerayError, match="empty; accepted"):
        pareto_front(table, [])


def test_hypervolume_of_a_table_default_reference_and_explicit() -> None:
    table = table_of(
        [
            {"val_accuracy": 0.9, "size_bytes": 200, "latency_ms_sweep": 2.0, "is_baseline": True},
            {"val_accuracy": 0.8, "size_bytes": 100, "latency_ms_sweep": 1.0},
            {"val_accuracy": 0.7, "size_bytes": 50, "latency_ms_sweep": 1.0},
            {"val_accuracy": 0.6, "size_bytes": 150, "latency_ms_sweep": 1.5},  # dominated
        ]
    )
    # default reference: the baseline's, 0 for accuracy and x2 for size and latency:
    # (0, 400, 4.0); minimisation: the three trials against (-0, 400, 4)
    expected = oracle_hypervolume(
        np.array([[-0.8, 100, 1.0], [-0.7, 50, 1.0], [-0.6, 150, 1.5]]), np.array([0, 400, 4.0])
    )
    assert hypervolume(table) == pytest.approx(expected)
    ref = {"val_accuracy": 0.75, "size_bytes": 120, "latency_ms_sweep": 1.2}
    assert hypervolume(table, reference=ref) == pytest.approx(0.05 * 20 * 0.2)
    with pytest.raises(SqueezerayError, match="missing: \\['latency_ms_sweep'\\]"):
        hypervolume(table, reference={"val_accuracy": 0.5, "size_bytes": 10})


def test_hypervolume_grows_with_a_better_point() -> None:
    rows = [
        {"val_accuracy": 0.5, "size_bytes": 300, "latency_ms_sweep": 3.0},
        {"val_accuracy": 0.8, "size_bytes": 100, "latency_ms_sweep": 1.0},
    ]
    ref = {"val_accuracy": 0.5, "size_bytes": 300, "latency_ms_sweep": 3.0}
    before = hypervolume(table_of(rows), reference=ref)
    after = hypervolume(
        table_of([*rows, {"val_accuracy": 0.85, "size_bytes": 90, "latency_ms_sweep": 1.0}]),
        reference=ref,
    )
    assert after > before > 0


def test_front_is_chosen_on_validation_when_validation_and_test_disagree() -> None:
    """The test split never chooses: objectives name `val_accuracy`."""
    table = table_of(
        [
            # t0 is the best on test but the worst on validation, at the same size/latency
            {
                "val_accuracy": 0.90,
                "test_accuracy": 0.99,
                "size_bytes": 1000,
                "latency_ms_sweep": 0.02,
            },
            {
                "val_accuracy": 0.95,
                "test_accuracy": 0.91,
                "size_bytes": 1000,
                "latency_ms_sweep": 0.02,
            },
            {
                "val_accuracy": 0.93,
                "test_accuracy": 0.97,
                "size_bytes": 500,
                "latency_ms_sweep": 0.02,
            },
            {
                "val_accuracy": 0.92,
                "test_accuracy": 0.98,
                "size_bytes": 600,
                "latency_ms_sweep": 0.02,
            },
        ]
    )
    assert resolve_objectives({"val_accuracy": "max", "size_bytes": "min"}, table) == {
        "val_accuracy": "max",
        "size_bytes": "min",
    }
    # On test, t0 and t3 would be the front; on validation it is t1 and t2.
    assert pareto_front(table).column("trial_id").to_pylist() == ["t1", "t2"]
    assert pareto_front(table, {"val_accuracy": "max", "size_bytes": "min"}).column(
        "trial_id"
    ).to_pylist() == ["t1", "t2"]
    # the hypervolume too
    val_ref = {"val_accuracy": 0.0, "size_bytes": 2000.0, "latency_ms_sweep": 1.0}
    expected = (0.95 * 1000 + 0.93 * 500) * 0.98  # the staircase of t1, t2 x latency depth
    assert hypervolume(table, reference=val_ref) == pytest.approx(expected)


def test_tables_without_validation_values_never_fall_back_to_the_test_split() -> None:
    table = table_of(
        [
            {"test_accuracy": 0.99, "size_bytes": 1000, "latency_ms_sweep": 0.02},
            {"test_accuracy": 0.91, "size_bytes": 500, "latency_ms_sweep": 0.02},
        ]
    )
    assert resolve_objectives({"val_accuracy": "max"}, table) == {"val_accuracy": "max"}
    with pytest.warns(UserWarning, match="2 of 2 ok rows have a missing or NaN objective"):
        assert pareto_front(table).num_rows == 0
    with pytest.raises(SqueezerayError, match="'test_accuracy' is the test split"):
        pareto_front(table, {"test_accuracy": "max"})


def test_front_view_shows_both_splits_and_the_final_latency() -> None:
    """`pareto` says which split chose the front and shows the final latency phase."""
    from rich.console import Console

    from orchestrator.query.frontview import build_front, render_front

    base = {"size_bytes": 1000, "latency_ms_sweep": 0.02}
    table = table_of(
        [
            {**base, "is_baseline": True, "val_accuracy": 0.97, "test_accuracy": 0.98,
             "latency_ms_sweep": 0.03, "latency_ms_final": 0.031, "latency_cv": 0.01,
             "speedup": 1.0, "latency_rounds": 7},
            {**base, "val_accuracy": 0.95, "test_accuracy": 0.91, "size_bytes": 300,
             "latency_ms_sweep": 0.015, "latency_ms_final": 0.0155, "latency_cv": 0.02,
             "speedup": 2.0, "latency_rounds": 7},
            {**base, "val_accuracy": 0.90, "test_accuracy": 0.99, "size_bytes": 400,
             "latency_ms_sweep": 0.02},  # best on test, dominated on validation
        ]
    )  # fmt: skip
    view = build_front(table)
    assert view.objectives == {
        "val_accuracy": "max",
        "size_bytes": "min",
        "latency_ms_sweep": "min",
    }
    assert view.front.column("trial_id").to_pylist() == ["t1"]
    console = Console(width=200, record=True)
    console.print(render_front(view))
    text = console.export_text()
    for header in ("val acc", "test acc", "sweep ms", "final ms", "lat cv", "speedup"):
        assert header in text, header
    assert "front chosen on the validation split (val_accuracy)" in text
    assert "2.00×" in text and "2.0%" in text and "7 interleaved rounds" in text


def test_front_marks_speedup_resting_on_an_unsteady_latency() -> None:
    """latency_cv above LATENCY_CV_UNSTEADY flags the row's `lat cv` and every `speedup` that
    uses it (a baseline's too) with `!`, and the caption names `latency_unsteady`."""
    from rich.console import Console

    from orchestrator.query.frontview import build_front, render_front
    from orchestrator.query.steadiness import (
        LATENCY_CV_UNSTEADY,
        latency_unsteady,
        speedup_unsteady,
    )

    base = {"size_bytes": 1000, "latency_ms_sweep": 1.4, "latency_rounds": 2}
    table = table_of(
        [
            {**base, "is_baseline": True, "val_accuracy": 0.97, "test_accuracy": 0.98,
             "latency_ms_final": 8.3, "latency_cv": 1.02, "speedup": 1.0},
            {**base, "val_accuracy": 0.95, "test_accuracy": 0.91, "size_bytes": 300,
             "latency_ms_sweep": 0.2, "latency_ms_final": 0.21, "latency_cv": 0.02,
             "speedup": 40.46},
        ]
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render_front(build_front(table)))
    text = console.export_text()
    assert "102.0% !" in text and " 2.0%  40.46× !" in text  # t1 itself is steady
    assert "latency_unsteady" in text and f"{100 * LATENCY_CV_UNSTEADY:.0f}%" in text
    assert latency_unsteady({"latency_cv": 0.02}) is False and latency_unsteady({}) is None
    assert speedup_unsteady({"latency_cv": 0.02}, {"latency_cv": 1.02})
    assert not speedup_unsteady({"latency_cv": 0.02}, {"latency_cv": 0.05})


def test_front_marks_an_imprecise_in_sweep_latency() -> None:
    """latency_ci_sweep above LATENCY_CI_IMPRECISE marks the row's `sweep ms` with `~` (the
    time cap came before latency.precision) and the caption says what it means; a precise
    row and a row without the column (written before it was recorded) stay unmarked."""
    from rich.console import Console

    from orchestrator.query.frontview import build_front, render_front
    from orchestrator.query.steadiness import LATENCY_CI_IMPRECISE, sweep_latency_imprecise

    table = table_of(
        [
            {"is_baseline": True, "val_accuracy": 0.97, "test_accuracy": 0.98,
             "size_bytes": 1000, "latency_ms_sweep": 1.4, "latency_ci_sweep": 0.01},
            {"val_accuracy": 0.95, "test_accuracy": 0.91, "size_bytes": 300,
             "latency_ms_sweep": 0.25, "latency_ci_sweep": 0.31},
            {"val_accuracy": 0.90, "test_accuracy": 0.90, "size_bytes": 200,
             "latency_ms_sweep": 0.5, "latency_ci_sweep": 0.02},
        ]
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render_front(build_front(table)))
    text = console.export_text()
    assert "0.25 ~" in text and "0.5 ~" not in text and "1.4 ~" not in text
    assert f"+-{100 * LATENCY_CI_IMPRECISE:.0f}%" in text and "latency_ci_sweep" in text
    assert sweep_latency_imprecise({"latency_ci_sweep": 0.02}) is False
    assert sweep_latency_imprecise({}) is None
    # no imprecise row: no caption about it
    precise = table_of(
        [
            {"is_baseline": True, "val_accuracy": 0.97, "size_bytes": 1000,
             "latency_ms_sweep": 1.4, "latency_ci_sweep": 0.01},
            {"val_accuracy": 0.95, "size_bytes": 300, "latency_ms_sweep": 0.25,
             "latency_ci_sweep": 0.02},
        ]
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render_front(build_front(precise)))
    assert "latency_ci_sweep" not in console.export_text()


def test_a_final_latency_objective_is_one_column_and_the_left_out_note_a_plain_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Objectives naming latency_ms_final showed its "final ms" column twice, and the note
    about rows left out of the front was a raw Python warning with its source line (new user
    F20): the CLI prints squeezeray's own warnings as one "note:" line."""
    import warnings

    from rich.console import Console

    from orchestrator.cli import _show_warning
    from orchestrator.query.frontview import build_front, render_front

    final = {"latency_rounds": 5, "latency_cv": 0.01, "speedup": 1.0}
    table = table_of(
        [
            {"is_baseline": True, "val_accuracy": 0.97, "size_bytes": 1000,
             "latency_ms_sweep": 1.4, "latency_ms_final": 1.3, **final},
            {"val_accuracy": 0.95, "size_bytes": 300, "latency_ms_sweep": 0.25,
             "latency_ms_final": 0.2, **final},
            {"val_accuracy": 0.90, "size_bytes": 200, "latency_ms_sweep": 0.5},  # not re-timed
        ]
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        view = build_front(table, {"val_accuracy": "max", "latency_ms_final": "min"})
    console = Console(width=200, record=True)
    console.print(render_front(view))
    header = next(line for line in console.export_text().splitlines() if "val acc" in line)
    assert header.count("final ms") == 1, header
    (note,) = [w for w in caught if "left out of the Pareto front" in str(w.message)]
    _show_warning(note.message, note.category, note.filename, note.lineno)
    err = capsys.readouterr().err
    assert err.startswith("note: 1 of 2 ok rows have a missing") and "frontview.py" not in err
