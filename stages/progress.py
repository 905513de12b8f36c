"""Where a long stage is, for whoever runs it: "epoch 2/3, batch 120/400".

A stage on a model of real size trains for minutes; the sweep's display can only say which
stage runs unless the stage says how far it is. The training loop (`stages.training.fit`,
which every training stage uses) calls `training_step` after each batch and at the start of
each epoch; a caller that wants to hear it wraps the stage in `reporting(report)`, which
passes the text to `report` at most once every `every_s` seconds (the first at once). Without
a `reporting` block the calls cost a context-variable lookup.

Pure Python: the orchestrator's stage task forwards the text to the sweep's cache actor,
whose progress display prints it beside the stage's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

REPORT_EVERY_S = 5.0  # the display asks at most every 2 s and prints a plain line every 30 s


@dataclass
class _Reporter:
    report: Callable[[str], None]
    every_s: float
    last: float = field(default=float("-inf"))


_REPORTER: ContextVar[_Reporter | None] = ContextVar("squeezeray_stage_progress", default=None)


@contextmanager
def reporting(report: Callable[[str], None], *, every_s: float = REPORT_EVERY_S) -> Iterator[None]:
    """Within the block, stage progress goes to `report(text)`, at most once every `every_s`
    seconds (0: every call). `report` must be quick and must not raise: it runs inside the
    training loop."""
    token = _REPORTER.set(_Reporter(report, every_s))
    try:
        yield
    finally:
        _REPORTER.reset(token)


def training_step(epoch: int, epochs: int, batch: int, batches: int | None) -> None:
    """Training is at `batch` (0 at an epoch's start) of `batches` (None: an iterable dataset
    of unknown length) in epoch `epoch` of `epochs` (both counted from 1)."""
    reporter = _REPORTER.get()
    if reporter is None:
        return
    now = time.monotonic()
    if now - reporter.last < reporter.every_s:
        return
    reporter.last = now
    of = f"/{batches}" if batches is not None else ""
    reporter.report(f"epoch {epoch}/{epochs}, batch {batch}{of}")


__all__ = ["REPORT_EVERY_S", "reporting", "training_step"]
