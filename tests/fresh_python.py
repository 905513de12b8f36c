"""Running a Python snippet in a new interpreter, to observe what a fresh process (a Ray worker,
a user's first import) does: the repository on its path, output captured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_fresh(script: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`script` run by this interpreter in a new process (cwd and PYTHONPATH: the repository,
    PATH: the system's only), its stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
