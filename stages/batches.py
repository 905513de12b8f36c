"""Model inputs and outputs as users have them: one place for the rules every stage follows.

Inputs (a dataset sample's `x`):
- a tensor, or a tuple/list of tensors for a model with several inputs (`model(*x)`);
- dtypes are kept: int64 token ids reach the model unchanged; float64 (numpy's default),
  float16 and bfloat16 are cast to float32, the dtype of the model's weights (models are
  float32: `stages.tasks.check_task`); integers stay as they are.

Outputs (what `model(*x)` returns), read as logits of shape (B, num_classes):
- a tensor;
- a tuple/list whose first element is the logits (`(logits, features)`);
- a dict with a "logits" key, or an object with a `.logits` tensor (Hugging Face's
  `ModelOutput`, a dataclass).

Anything else is refused with a `SqueezerayError` naming the rule (`logits_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from stages.errors import SqueezerayError

Inputs = torch.Tensor | tuple[torch.Tensor, ...]
"""One batch of model inputs: a tensor, or a tuple of tensors (one per model argument)."""

INPUT_RULE = (
    "a sample is (x, y) with x a tensor or a tuple of tensors (one per model argument) "
    "and y an integer class"
)
OUTPUT_RULE = (
    "the model must return logits (B, num_classes) as a tensor, a tuple/list whose first "
    "element is the logits, or a dict/object with 'logits' (Hugging Face style)"
)


_TO_FLOAT32 = (torch.float64, torch.float16, torch.bfloat16)


def _cast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _TO_FLOAT32 else t


def as_inputs(x: Any) -> Inputs:
    """A collated batch (or one sample) as model inputs: dtypes kept, other floats -> float32.

    Raises SqueezerayError when `x` is neither a tensor nor a tuple/list of tensors.
    """
    if isinstance(x, torch.Tensor):
        return _cast(x)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(_cast(t) for t in x)
    raise SqueezerayError(f"an input of type {_describe(x)} is not accepted: {INPUT_RULE}")


def as_args(x: Inputs) -> tuple[torch.Tensor, ...]:
    """The positional arguments of the model call."""
    return x if isinstance(x, tuple) else (x,)


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    if isinstance(x, tuple):
        return tuple(t.to(device) for t in x)
    return x.to(device)


def to_double(x: Inputs) -> Inputs:
    """Floating inputs as float64 (integer ids unchanged), for float64 reference passes."""
    if isinstance(x, tuple):
        return tuple(t.double() if t.is_floating_point() else t for t in x)
    return x.double() if x.is_floating_point() else x


def batch_size(x: Inputs) -> int:
    return int(as_args(x)[0].shape[0])


def select(x: Inputs, idx: torch.Tensor | slice) -> Inputs:
    """Rows `idx` of every input."""
    if isinstance(x, tuple):
        return tuple(t[idx] for t in x)
    return x[idx]


def concat(batches: Sequence[Inputs]) -> Inputs:
    """Batches joined along the batch axis."""
    if isinstance(batches[0], tuple):
        n = len(batches[0])
        return tuple(torch.cat([as_args(b)[i] for b in batches]) for i in range(n))
    return torch.cat([b for b in batches if isinstance(b, torch.Tensor)])


def stack_samples(samples: Sequence[Any]) -> Inputs:
    """Stack the `x` of single samples into one batch (per input for tuple samples)."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        n = len(first)
        return as_inputs(
            tuple(torch.stack([torch.as_tensor(s[i]) for s in samples]) for i in range(n))
        )
    return as_inputs(torch.stack([torch.as_tensor(s) for s in samples]))


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model output (see the module docstring for the accepted forms)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        value = out.get("logits")
        if isinstance(value, torch.Tensor):
            return value
    value = getattr(out, "logits", None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise SqueezerayError(f"the model returned {_describe(out)}: {OUTPUT_RULE}")


def forward_logits(model: nn.Module, x: Inputs) -> torch.Tensor:
    """`logits_of(model(*x))`."""
    return logits_of(model(*as_args(x)))


class LogitsOnly(nn.Module):
    """`model` as a function of positional tensors returning only the logits tensor.

    What tracing and ONNX export see: one output, whatever form the user's model returns.
    Holds `model` as its only child, so its state_dict keys are prefixed `model.`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(*args))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"{type(value).__name__}({inner}{more})"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {list(value)[:6]}"
    return type(value).__name__
