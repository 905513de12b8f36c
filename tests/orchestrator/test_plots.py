"""Front plots: the PNG renders (size, not blank, front colour present); the HTML holds the data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from orchestrator.query.pareto import DEFAULT_OBJECTIVES, pareto_front
from orchestrator.query.plots import plot_front
from orchestrator.store.schema import RESULTS_SCHEMA
from stages.errors import SqueezerayError
from tests.rows import make_rows


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return pa.Table.from_pylist(make_rows("p-1", n=40, seed=4), schema=RESULTS_SCHEMA)


def test_png_renders_both_panels(table: pa.Table, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    path = plot_front(table, None, tmp_path / "front.png")
    image = mpimg.imread(path)  # (h, w, 4) floats in [0, 1]
    height, width = image.shape[:2]
    assert width > 1000 and 400 < height < width  # two panels side by side
    rgb = image[..., :3]
    assert rgb.std() > 0.05  # not blank
    # The front's orange (C1 = #ff7f0e) and the baseline's red star (C3 = #d62728) are drawn.
    for colour in ((1.0, 0.498, 0.055), (0.839, 0.153, 0.157)):
        close = np.abs(rgb - np.array(colour)).max(axis=2) < 0.03
        assert close.sum() > 50, colour


def test_png_without_baseline_and_with_two_objectives(table: pa.Table, tmp_path: Path) -> None:
    import matplotlib.image as mpimg
    import pyarrow.compute as pc

    trials = table.filter(pc.invert(table.column("is_baseline")))
    path = plot_front(trials, {"val_accuracy": "max", "params_nonzero": "min"}, tmp_path / "a.png")
    image = mpimg.imread(path)
    assert image.shape[1] < image.shape[0] * 2  # a single panel


def test_html_is_self_contained_and_carries_the_points(table: pa.Table, tmp_path: Path) -> None:
    path = plot_front(table, DEFAULT_OBJECTIVES, tmp_path / "front.html")
    html = path.read_text()
    assert len(html) > 1_000_000  # plotly.js inlined: works offline
    assert not re.search(r"<script[^>]*src=", html)  # no external script
    assert '"type":"scatter3d"' in html
    front = pareto_front(table)
    for trial in front.column("trial_id").to_pylist():
        # hover text of each front point, as plotly's JSON writes "<b>t003</b>"
        assert f"\\u003cb\\u003e{trial}\\u003c\\u002fb\\u003e" in html
    assert "prune.method = " in html and "quantize.mode = " in html  # knobs in the hover
    assert "Pareto front" in html and "baseline (teacher)" in html
    assert (
        re.search(r"size \(KB, zstd\)", html)
        and "latency (ms, in-sweep, batch 1, one thread)" in html
    )


def test_other_extensions_are_refused(table: pa.Table, tmp_path: Path) -> None:
    with pytest.raises(SqueezerayError, match=r"unknown file type '.svg'; accepted: .png"):
        plot_front(table, None, tmp_path / "front.svg")
    with pytest.raises(SqueezerayError, match="two or more objectives"):
        plot_front(table, {"val_accuracy": "max"}, tmp_path / "front.png")
