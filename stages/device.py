"""Device selection: CUDA when asked for and present, else CPU."""

from __future__ import annotations

import torch

from stages.errors import SqueezerayError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str = "auto") -> torch.device:
    """Map a requested device name to a torch device.

    `auto` takes CUDA when it is available, else CPU. `cuda` without CUDA falls back to CPU
    (a GPU trial scheduled on a CPU-only node still runs, slower) - stage code never fails
    for the lack of a GPU.
    """
    name = requested.split(":")[0]
    if name not in DEVICES:
        raise SqueezerayError(
            f"device={requested!r} is not a device; accepted: {', '.join(DEVICES)} (or cuda:N)"
        )
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device(requested if name == "cuda" else "cuda")
    return torch.device("cpu")
