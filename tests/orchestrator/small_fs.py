"""A small real filesystem for storage-fault tests: a tmpfs of a few MiB that can be filled
(ENOSPC) and remounted read-only (EROFS). Mounting needs root (or CAP_SYS_ADMIN); where it is
not permitted the tests that need it are skipped, saying why."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class SmallFs:
    """A mounted tmpfs at `root`; `fill()` leaves it with no free byte, `free()` undoes it."""

    root: Path

    @property
    def filler(self) -> Path:
        return self.root / "filler.bin"

    def fill(self) -> None:
        """Write zeros until the filesystem refuses (ENOSPC): nothing more fits."""
        chunk = b"\0" * (64 * 1024)
        with open(self.filler, "ab", buffering=0) as f:
            for size in (len(chunk), 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(chunk[:size])
        # A last byte must fail: the disk is really full.
        with pytest.raises(OSError) as info, open(self.root / "probe", "wb") as g:
            g.write(b"\0" * 4096)
            g.flush()
            os.fsync(g.fileno())
        assert info.value.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            (self.root / "probe").unlink()

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool = True) -> None:
        mode = "ro" if on else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.root)], check=True)


@contextlib.contextmanager
def small_fs(where: Path, size: str = "8m") -> Iterator[SmallFs]:
    """A tmpfs of `size` mounted at `where` (created), unmounted afterwards; skips the test
    where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` here: the storage-fault tests need a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield SmallFs(where)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(where)], capture_output=True)
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def temp_files(root: Path) -> list[Path]:
    """Every temp file left under `root` (the atomic writers' `.<name>.<tag>.tmp`)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp"))


def snapshot(root: Path, *, skip: tuple[str, ...] = ("filler.bin",)) -> dict[str, bytes]:
    """Every file under `root` and its bytes (the lock files' contents aside)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip and ".lock" not in p.name
    }
