"""Files squeezeray writes for the user outside its storage - a front (`pareto --output`), a plot
(`--plot`, `SweepResult.plot`), an exported model folder (`squeezeray export`) - all or nothing.

A file is written under a hidden temp name beside it (`.<name>.<pid>.<random>.tmp`) and renamed
onto its name when complete (`output_file`); a folder is written into a hidden staging folder
inside it, whose entries move into place only when every file is written (`output_folder`). A
write that fails (a full disk, a read-only or forbidden folder, or any other error on the way)
removes what it wrote, and the folders it created: the output is left as it was. A storage-kind
`OSError` becomes a `StorageFault` naming the path (the CLI's one line, exit 2).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from orchestrator.store.faults import storage_writes, temp_tag

STAGING_PREFIX = ".squeezeray-output."  # an output folder's staging folder (`output_folder`)


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of `path` (itself included) that does not exist yet, or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


@contextlib.contextmanager
def output_file(path: str | os.PathLike[str], *, parents: bool = False) -> Iterator[Path]:
    """Yields a hidden temp path beside `path` to write the file to; when the block ends
    without error it is renamed onto `path` (replacing a file there), else removed - with the
    folders created for it when `parents` (create `path`'s missing folders)."""
    target = Path(path)
    created = _first_missing(target.parent) if parents else None
    tmp = target.parent / f".{target.name}.{temp_tag()}.tmp"
    with storage_writes(str(target)):
        try:
            if parents:
                target.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise


@contextlib.contextmanager
def output_folder(out: str | os.PathLike[str], *, replace: Sequence[Path] = ()) -> Iterator[Path]:
    """Yields an empty hidden staging folder inside `out` (created, with its missing folders).
    When the block ends without error, `replace` (files of a previous export) are removed and
    the staged entries moved into `out`; on error the staging folder, and `out` itself when
    this created it, are removed: `out` is as it was."""
    folder = Path(out)
    created = _first_missing(folder)
    staging = folder / f"{STAGING_PREFIX}{temp_tag()}.tmp"
    with storage_writes(str(folder)):
        try:
            staging.mkdir(parents=True)
            yield staging
            for old in replace:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            for entry in sorted(staging.iterdir()):
                os.replace(entry, folder / entry.name)
            staging.rmdir()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise


def write_text_output(path: str | os.PathLike[str], text: str) -> None:
    """`text` written to `path` all or nothing (`output_file`)."""
    with output_file(path) as tmp:
        tmp.write_text(text)
