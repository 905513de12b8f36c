"""Files written for the user outside the storage - an exported model folder, a plot, a front
written with `pareto --output` - are all or nothing (issue 21 item 1, `store.outputs`): a disk
that fills while they are written leaves the output as it was (a previous export, plot or
front unchanged; no part file, no temp or staging file; no folder created), on a real small
filesystem (tmpfs; skipped where mounting is not permitted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.store.faults import StorageFault
from stages.tasks import Task, load_task
from tests.stages.conftest import train_checkpoint

from .small_fs import SmallFs, small_fs, snapshot
from .test_export import _store


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallFs]:
    with small_fs(tmp_path / "disk", size="8m") as fs:
        yield fs


def _leave_free(disk: SmallFs, nbytes: int) -> None:
    """Fill the disk, then free about `nbytes` (a file of that size written before the fill)."""
    spare = disk.root / "spare.bin"
    spare.write_bytes(b"\0" * nbytes)
    disk.fill()
    spare.unlink()


def _leftovers(root: Path) -> list[str]:
    """Hidden temp files or staging folders (the output writers' `.<name>.<tag>.tmp`)."""
    return sorted(str(p) for p in root.rglob(".*") if p.name.endswith(".tmp"))


@pytest.mark.slow  # trains a small student and exports it three times (~15 s under load)
def test_an_export_that_fills_the_disk_leaves_the_output_folder_as_it_was(
    disk: SmallFs, tmp_path: Path
) -> None:
    from orchestrator.query.export import export_trial

    digits: Task = load_task("digits")
    torch.set_num_threads(1)
    student: Any = train_checkpoint(digits, "student", epochs=1, lr=3e-3)
    storage = tmp_path / "runs"
    _store(storage, digits, student, "baseline", "none")
    _store(storage, digits, student, "t1", "none")  # eager: model.pt, state_dict.pt, ...
    out = disk.root / "model"
    first = export_trial(storage, "t1", output=out)
    before = snapshot(out)
    assert len(before) >= 5, sorted(before)

    # Room for about half an export: the second one fails part way through its files.
    _leave_free(disk, sum(len(b) for b in before.values()) // 2)
    with pytest.raises(StorageFault, match="is full"):
        export_trial(storage, "t1", output=out, overwrite=True)
    assert snapshot(out) == before and first.files
    assert _leftovers(disk.root) == []
    new = disk.root / "new" / "deeper"
    with pytest.raises(StorageFault, match="is full"):
        export_trial(storage, "t1", output=new)
    assert not (disk.root / "new").exists()  # the folders it created are gone too


def test_a_plot_and_a_front_on_a_full_disk_leave_the_files_there_as_they_were(
    disk: SmallFs, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.query.plots import plot_front
    from orchestrator.store.results import append_results, load_results
    from tests.rows import make_rows

    storage = tmp_path / "runs"
    append_results(str(storage), make_rows("run-a", 6))
    table = load_results(str(storage))
    plot = disk.root / "front.png"
    plot_front(table, None, plot)
    front = disk.root / "front.csv"
    args = ["pareto", "--storage", str(storage), "--format", "csv", "--output", str(front)]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = snapshot(disk.root)
    assert {"front.png", "front.csv"} <= set(before)

    _leave_free(disk, len(before["front.png"]) // 3)  # a part of a plot fits, not a whole one
    with pytest.raises(StorageFault, match="is full"):
        plot_front(table, None, plot)
    with pytest.raises(StorageFault, match="is full"):
        plot_front(table, None, disk.root / "plots" / "front.html")
    disk.fill()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "is full" in result.output, result.output
    table_args = [*args[:4], "--format", "table", "--output", str(disk.root / "front.csv")]
    assert CliRunner().invoke(app, table_args).exit_code == 2
    assert snapshot(disk.root) == before
    assert _leftovers(disk.root) == [] and not (disk.root / "plots").exists()
