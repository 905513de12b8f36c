"""Hand freed heap memory back to the OS (Linux glibc's `malloc_trim`; a no-op elsewhere).

glibc keeps the pages of freed allocations below its mmap threshold (up to 32 MiB each) for
reuse: a stage that trained a student keeps its gradients' and optimizer moments' pages
resident after they are freed, under the self-check's rebuild."""

from __future__ import annotations

import contextlib
import ctypes
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL("libc.so.6")


def trim() -> None:
    """`malloc_trim(0)`: return the free pages of every malloc arena to the OS (about a
    millisecond); nothing where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)
