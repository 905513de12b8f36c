"""Ctrl-C and SIGTERM around a sweep: stop launching trials, keep everything finished.

`stop_signals()` installs the handlers (main thread only) for the time the trials run, and
again for the baseline row and the final latency phase after them (a signal stops the phase);
the sweep then records what finished and raises `SweepInterrupted`, whose message is the
resume command. While the finished sweep records its status (`StopSignals.hold`) a first
signal is only noted. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any


class StopSignals:
    """SIGINT/SIGTERM handling around a sweep (main thread only).

    Before `tuner.fit()` a signal raises KeyboardInterrupt. During it, the signal is handed to
    Tune's own stop handler (installed for SIGUSR1; Tune's SIGINT handler is switched off so
    that this class sees Ctrl-C): Tune stops launching trials, saves its experiment state and
    returns. Afterwards it is only noted, so the rows are still written. A second signal
    always raises KeyboardInterrupt. SIGTERM replaces Ray's handler, which would kill the
    local Ray processes before the sweep could record anything.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_fit = False
        self.after_fit = False
        self._usr1_before: Any = None

    def enter_fit(self) -> None:
        self._usr1_before = signal.getsignal(signal.SIGUSR1)
        self.in_fit = True

    def leave_fit(self) -> None:
        self.in_fit, self.after_fit = False, True
        if self._usr1_before is not None:
            signal.signal(signal.SIGUSR1, self._usr1_before)

    def hold(self) -> None:
        """From now on a first signal is only noted (`received`), as after a fit: for the
        steps that record a sweep whose work is done (its status, its compacted files)."""
        self.after_fit = True

    def handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if not first:
            raise KeyboardInterrupt
        if self.in_fit:
            tune_stop = signal.getsignal(signal.SIGUSR1)
            if callable(tune_stop) and tune_stop is not self._usr1_before:
                tune_stop(signum, frame)
                return
        if not self.after_fit:
            raise KeyboardInterrupt


def interrupt_tune() -> bool:
    """Stop a running `tuner.fit()` as a first Ctrl-C does (Tune stops launching trials, saves
    its experiment state and returns): call Tune's own stop handler, which it installs for
    SIGUSR1 while it runs in the main thread. False when none is installed (not in a fit, or
    not in the main thread)."""
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler) or handler in (signal.default_int_handler,):
        return False
    handler(signal.SIGUSR1, None)
    return True


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for sig in previous:
        signal.signal(sig, stop.handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop.in_fit:
            stop.leave_fit()
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env
