"""Weights a user has, loaded into the task's model: `--teacher-weights` / `teacher.weights`.

Accepted (`ACCEPTED`):
- a `torch.save` state_dict (`.pt`, `.pth`, `.bin`, ...), read with `torch.load(weights_only=True)`
  (also `{"state_dict": ...}`, a common training-script layout);
- a `.safetensors` file (`safetensors.torch.save_file`/`save_model`), read with
  `safetensors.torch.load_model` (which restores tensors `save_model` de-duplicated);
- a Hugging Face `save_pretrained` directory (config.json + weights): loaded with the model's
  own class, `type(model).from_pretrained(dir, local_files_only=True)` (shards, renamed and
  tied keys as transformers handles them), then copied into the model; a model that is not a
  `PreTrainedModel` reads the directory's `model.safetensors`.

A whole model (an ONNX file, a TorchScript module, a torch.export .pt2) is refused saying
what it is (`_model_file_kind`, by its header), not as a pickle torch.load cannot read.

Loading is strict: every key of the model must be given, with its shape. `weights_digest`
is the sha256 the sweep pins (a directory: its files' names and bytes), so changed weights
give new stage keys and a file changed mid-sweep is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stages.errors import SqueezerayError
from stages.hf import HF_EXTRA

ACCEPTED = (
    "accepted: a state_dict saved with torch.save(model.state_dict(), path), a .safetensors "
    "file, or a directory written by model.save_pretrained(dir)"
)


def weights_digest(path: Path) -> str:
    """sha256 hex of a weights file's bytes, or of a directory's files (sorted relative names
    and their bytes, recursively)."""
    h = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(file.relative_to(path)).encode() + b"\0")
            h.update(hashlib.sha256(file.read_bytes()).digest())
        return h.hexdigest()
    h.update(path.read_bytes())
    return h.hexdigest()


def load_weights(model: nn.Module, path: str, *, sha256: str = "") -> None:
    """Load the weights at `path` (see the module docstring) into `model`, strictly.

    Raises SqueezerayError naming `path`, what was wrong and the accepted forms: a missing or
    unreadable path, a sha256 other than `sha256` (when given), a file of another kind, keys
    or shapes that do not fit the model, transformers/safetensors missing for those forms.
    """
    file = Path(path)
    where = f"teacher.weights={path!r}"
    if not file.exists():
        raise SqueezerayError(f"{where}: no such file or directory; {ACCEPTED}")
    try:
        digest = weights_digest(file)
    except OSError as exc:
        raise SqueezerayError(
            f"{where} cannot be read ({exc.strerror or exc}); it must be readable on every node"
        ) from exc
    if sha256 and digest != sha256:
        raise SqueezerayError(
            f"{where} changed since the sweep started (sha256 differs); "
            "start a new sweep with the new weights"
        )
    if file.is_dir():
        _load_directory(model, file, where)
    elif file.suffix == ".safetensors" or _looks_like_safetensors(file):
        _load_safetensors(model, file, where)
    else:
        kind = _model_file_kind(file)
        if kind:
            raise SqueezerayError(
                f"{where} is {kind}: a whole exported model, not weights to load; {ACCEPTED} "
                "(e.g. the huggingface/ folder of an export, or the weights you trained)"
            )
        _load_state_dict(model, _torch_state(file, where), where)


def _looks_like_safetensors(file: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then '{'."""
    with file.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


ONNX_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # ModelProto fields 2-8, wire types


def _model_file_kind(file: Path) -> str:
    """What a file that holds a whole model (not a state_dict) is, by its header: an ONNX
    model (a ModelProto: field 1 ir_version, then fields 2-8 in order), a TorchScript module
    (`torch.jit.save`: a zip with code/) or a torch.export program (`torch.export.save`, the
    .pt2 an export writes: a zip with archive_format); "" for anything else."""
    with file.open("rb") as f:
        head = f.read(3)
    if file.suffix == ".onnx" or (
        len(head) == 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in ONNX_FIELDS
    ):
        return "an ONNX model (a protobuf, e.g. model.onnx)"
    if not zipfile.is_zipfile(file):
        return ""
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
    if any(n.endswith("/archive_format") for n in names):
        return "a torch.export program (torch.export.save, e.g. model.pt2)"
    if any("/code/" in n for n in names):
        return "a TorchScript module (torch.jit.save, e.g. an export's model.pt)"
    return ""


def _torch_state(file: Path, where: str) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(file.read_bytes()), weights_only=True, map_location="cpu")
    except Exception as exc:  # not a torch file, or one that would run code when unpickled
        text = str(exc)
        reason = (
            "it pickles Python objects besides tensors (e.g. a whole model saved with "
            "torch.save(model, path)), which weights_only loading refuses"
            if "Weights only load failed" in text
            else f"not a torch.save file ({type(exc).__name__})"
        )
        raise SqueezerayError(
            f"{where} is not a state_dict torch.load(weights_only=True) reads: {reason}; {ACCEPTED}"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SqueezerayError(
            f"{where} holds a {type(state).__name__}, not a state_dict; save it with "
            "torch.save(model.state_dict(), path)"
        )
    return state


def _does_not_fit(
    where: str, model: nn.Module, shapes: dict[str, tuple[int, ...]], exc: RuntimeError
) -> SqueezerayError:
    """Why a file's tensors (`shapes`: name -> shape) do not load into `model`, summarised:
    how many differ in shape, are missing or are unexpected, with the first few of each (torch's
    own message lists every missing key first and buries the shapes that explain it)."""
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = [k for k in mine if k in shapes and tuple(shapes[k]) != mine[k]]
    missing = [k for k in mine if k not in shapes]
    unexpected = [k for k in shapes if k not in mine]
    parts = []
    if differ:
        shown = "; ".join(f"{k}: file {tuple(shapes[k])} vs model {mine[k]}" for k in differ[:3])
        parts.append(f"{len(differ)} tensor(s) differ in shape, e.g. {shown}")
    if missing:
        parts.append(f"{len(missing)} missing from the file, e.g. {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model, e.g. {', '.join(unexpected[:3])}")
    if not parts:  # not a key or shape problem: torch's own words, on one line
        parts.append(" ".join(line.strip() for line in str(exc).splitlines() if line.strip()))
    return SqueezerayError(
        f"{where} does not fit the task's teacher ({type(model).__name__}, {len(mine)} "
        f"tensors; the file has {len(shapes)}): {'; '.join(parts)}; give the weights of the "
        "architecture the task's teacher factory builds (same sizes and layer names)"
    )


def _load_state_dict(model: nn.Module, state: dict[str, Any], where: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
        raise _does_not_fit(where, model, shapes, exc) from exc


def _load_safetensors(model: nn.Module, file: Path, where: str) -> None:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_model
    except ImportError as exc:
        raise SqueezerayError(
            f"{where} is a .safetensors file, which needs the safetensors package; install "
            f"the extra: {HF_EXTRA}"
        ) from exc
    try:
        load_model(model, str(file), strict=True, device="cpu")
    except SafetensorError as exc:
        raise SqueezerayError(
            f"{where} is not a readable safetensors file ({exc}); {ACCEPTED}"
        ) from exc
    except RuntimeError as exc:
        raise _does_not_fit(where, model, _safetensors_shapes(file), exc) from exc


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in a safetensors file (its header; no data read)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:  # type: ignore[no-untyped-call]
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def _load_directory(model: nn.Module, directory: Path, where: str) -> None:
    if not (directory / "config.json").is_file():
        names = ", ".join(sorted(p.name for p in directory.iterdir())[:6]) or "empty"
        raise SqueezerayError(
            f"{where} is a directory without config.json ({names}), not one written by "
            f"save_pretrained; {ACCEPTED}"
        )
    if not _is_pretrained(model):
        single = directory / "model.safetensors"
        if not single.is_file():
            raise SqueezerayError(
                f"{where}: the task's teacher ({type(model).__name__}) is not a transformers "
                "PreTrainedModel, so only a directory holding one model.safetensors can be "
                f"loaded into it; {ACCEPTED}"
            )
        _load_safetensors(model, single, where)
        return
    try:
        loaded, info = type(model).from_pretrained(  # type: ignore[attr-defined]
            str(directory),
            local_files_only=True,
            dtype=next(model.parameters()).dtype,
            output_loading_info=True,
        )
    except (OSError, RuntimeError, ValueError) as exc:  # other shapes, no weights file, ...
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise SqueezerayError(
            f"{where} does not load as the task's teacher ({type(model).__name__}."
            f"from_pretrained: {type(exc).__name__}: {first[:300]}); give the directory of a "
            "model of the task's class and config"
        ) from exc
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        saved = json.loads((directory / "config.json").read_text()).get("architectures")
        raise SqueezerayError(
            f"{where} does not fit the task's teacher ({type(model).__name__}; the directory "
            f"holds {saved}): "
            + (f"missing {', '.join(map(str, missing[:5]))}; " if missing else "")
            + (f"other shapes {', '.join(map(str, mismatched[:5]))}; " if mismatched else "")
            + "give the directory of a model of the task's class and config"
        )
    _load_state_dict(model, loaded.state_dict(), where)


def _is_pretrained(model: nn.Module) -> bool:
    import sys

    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None)
    return base is not None and isinstance(model, base)


__all__ = ["ACCEPTED", "load_weights", "weights_digest"]
