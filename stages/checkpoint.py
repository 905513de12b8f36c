"""What flows between stages: a plain state_dict plus a small recipe to rebuild the module.

A `ModelCheckpoint` pickles cheaply through Ray's object store and saves to disk as a dict that
`torch.load(weights_only=True)` accepts (tensors, str, int, float, lists, dicts). This module
is the data format only; `stages.rebuild.build_model` turns a checkpoint back into a module by
replaying its recipe on the task's own model factory (never unpickling code).

Format 2 (this one) records structured pruning; format 1 resized layers to the saved shapes,
which could not rebuild depthwise convs, LayerNorm or attention, and is refused with the fix.

An ONNX Runtime artifact (`runtime == "onnxruntime"`) carries the ONNX model bytes beside it.

Memory: `to_buffer` serialises once and hands out the serialised bytes without copying them
(a memoryview); `from_bytes` reads from any bytes-like object (bytes, memoryview, a read-only
numpy array that Ray maps from its object store) without copying it first, so a checkpoint in
transit costs its serialised bytes once plus the loaded tensors once; `from_file` maps the
tensors from a checkpoint file instead, so they cost the file's pages only.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, replace
from typing import IO, Any, cast

import torch
from torch import nn

from stages.errors import SqueezerayError
from stages.quiet import int8_tensor_warnings
from stages.tasks import Task

FORMAT_VERSION = 2


@dataclass(frozen=True)
class ModelCheckpoint:
    """A model's weights and how to rebuild it from its task.

    recipe keys (all optional but `arch`): `arch` ("teacher"|"student"), `pruned` (structured
    pruning history, `stages.surgery`), `lowrank` ({layer: rank}), `quantize` (mode name),
    `runtime` (one of `stages.names.RUNTIMES`), `masked` (bool: the model carries
    unstructured-pruning zeros that later stages must keep). `stages.rebuild.build_model`
    replays it.
    """

    task: str
    state_dict: dict[str, torch.Tensor]
    recipe: dict[str, Any] = field(default_factory=lambda: {"arch": "student"})
    onnx: bytes | None = None

    @property
    def arch(self) -> str:
        return str(self.recipe.get("arch", "student"))

    @property
    def runtime(self) -> str:
        return str(self.recipe.get("runtime", "eager"))

    @property
    def quantize(self) -> str:
        return str(self.recipe.get("quantize", "none"))

    def with_recipe(self, **changes: Any) -> ModelCheckpoint:
        return replace(self, recipe={**self.recipe, **changes})

    # -- bytes / disk ------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        """A `weights_only`-safe dict."""
        payload: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "task": self.task,
            "recipe": _packed(self.recipe),
            "state_dict": self.state_dict,
        }
        if self.onnx is not None:
            payload["onnx"] = torch.frombuffer(bytearray(self.onnx), dtype=torch.uint8)
        return payload

    def save(self, stream: IO[bytes]) -> None:
        """Serialise the checkpoint into a writable binary stream (`torch.save` of
        `to_payload`, written in order: a stream that hashes what it is given hashes the
        file). The bytes are those `to_buffer` returns."""
        with int8_tensor_warnings():
            torch.save(self.to_payload(), stream)

    def to_buffer(self) -> memoryview:
        """The serialised checkpoint (`save`), not copied again: a read-only view of the one
        buffer it was written to."""
        buf = io.BytesIO()
        self.save(buf)
        return buf.getbuffer().toreadonly()

    def to_bytes(self) -> bytes:
        """The serialised checkpoint as `bytes` (a copy of `to_buffer`; prefer that one for
        large models)."""
        return bytes(self.to_buffer())

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | Any) -> ModelCheckpoint:
        """The checkpoint serialised in `data` (bytes, a memoryview or a uint8 numpy array),
        loaded `weights_only` without first copying `data` (its tensors are a copy of it)."""
        return cls._load(cast(IO[bytes], _BufferReader(data)), mmap=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ModelCheckpoint:
        """The checkpoint in the file at `path`, loaded `weights_only` with its tensors mapped
        from the file (`torch.load(mmap=True)`, private: writes never reach the file), so the
        weights cost no memory of their own beyond the file's pages the model reads."""
        return cls._load(os.fspath(path), mmap=True)

    @classmethod
    def _load(cls, source: str | IO[bytes], *, mmap: bool) -> ModelCheckpoint:
        try:
            with int8_tensor_warnings():  # torch's own, rebuilding a torch.ao int8 tensor
                payload = torch.load(source, weights_only=True, map_location="cpu", mmap=mmap)
        except Exception as exc:  # truncated/corrupt file or a non-checkpoint pickle
            # torch's message advises weights_only=False or allowlisting the global, either of
            # which would run a poisoned file's code: say what was refused, and the safe fix.
            raise SqueezerayError(
                f"not a readable squeezeray checkpoint ({refusal_reason(exc)}); it was not "
                "unpickled: delete the file and squeezeray will recompute it"
            ) from exc
        if isinstance(payload, dict) and payload.get("format") == 1:
            raise SqueezerayError(
                "checkpoint format 1 was written by an older squeezeray, whose structurally "
                f"pruned models could not be rebuilt; this version reads format {FORMAT_VERSION}: "
                "delete the file and let squeezeray recompute it"
            )
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            raise SqueezerayError("not a squeezeray checkpoint (missing or unknown 'format')")
        onnx = payload.get("onnx")
        return cls(
            task=str(payload["task"]),
            state_dict=dict(payload["state_dict"]),
            recipe=_unpacked(dict(payload["recipe"])),
            onnx=onnx.numpy().tobytes() if onnx is not None else None,
        )


# A pruning history's index lists (`recipe["pruned"]`, thousands of ints at 10M parameters)
# travel as int64 tensors: `torch.load(weights_only=True)` unpickles each int of a list in
# Python (~8 ms a load for 3,000 of them, paid by every stage and measurement reading the
# checkpoint) and a tensor as one storage. In memory the recipe keeps plain int lists.


def _packed(recipe: dict[str, Any]) -> dict[str, Any]:
    pruned = recipe.get("pruned")
    if not isinstance(pruned, list) or not pruned:
        return recipe
    return {**recipe, "pruned": [_packed_entry(entry) for entry in pruned]}


def _packed_entry(entry: Any) -> Any:
    """[name, out, [int, ...]] with its indices as an int64 tensor; anything else as it is
    (`surgery.check_history` refuses a malformed history where it is read)."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
        return entry
    idxs = entry[2]
    if not isinstance(idxs, (list, tuple)) or not all(type(i) is int for i in idxs):
        return entry
    return [entry[0], entry[1], torch.tensor(idxs, dtype=torch.int64)]


def _unpacked(recipe: dict[str, Any]) -> dict[str, Any]:
    pruned = recipe.get("pruned")
    if not isinstance(pruned, list):
        return recipe
    return {**recipe, "pruned": [_unpacked_entry(entry) for entry in pruned]}


def _unpacked_entry(entry: Any) -> Any:
    if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], torch.Tensor):
        idxs = entry[2]
        if idxs.dim() == 1 and idxs.dtype == torch.int64:
            return [entry[0], entry[1], idxs.tolist()]
    return entry


class _BufferReader(io.RawIOBase):
    """A seekable, read-only file over a bytes-like object that does not copy it (io.BytesIO
    copies any buffer that is not `bytes`)."""

    def __init__(self, data: Any) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def refusal_reason(exc: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused some bytes, in squeezeray's words: the
    blocked global (a poisoned or foreign pickle) or the first line of a read error (a
    truncated file). torch's own advice (re-run with weights_only=False, allowlist the global)
    is never passed on: following it would run the file's code."""
    import re

    text = str(exc)
    blocked = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    if blocked:
        return (
            f"it holds the global `{blocked.group(1)}`, which the weights-only loader blocks; "
            "a squeezeray checkpoint holds only tensors and plain values, so this file was "
            "not written by squeezeray or was altered"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unpickler = [line for line in lines if "WeightsUnpickler error" in line]
    if unpickler:  # another refusal (an unsupported operand or class): its first sentence
        first = unpickler[0].split("WeightsUnpickler error:", 1)[1].strip()
        return f"the weights-only loader refused it: {first.split('. ')[0].rstrip('.')}"
    reason = lines[0] if lines else type(exc).__name__
    if len(reason) > 300:
        reason = reason[:300].rsplit(" ", 1)[0] + " ..."
    return reason


def from_model(task: Task, model: nn.Module, recipe: dict[str, Any]) -> ModelCheckpoint:
    """A checkpoint of a stage's finished model: its state_dict moved to CPU and detached.

    A CPU model's tensors are shared, not copied (a model's worth of memory saved at the end
    of every stage): stages call this last and return the model beside it, which nothing
    changes afterwards. A caller that goes on training `model` must snapshot it first."""
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    return ModelCheckpoint(task=task.name, state_dict=state, recipe=dict(recipe))
