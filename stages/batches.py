"""Model inputs and outputs as users have them: one place for the rules every stage follows.

Inputs (a dataset sample's `x`):
- a tensor, or a tuple/list of tensors for a model with several inputs (`model(*x)`);
- a dict of named tensors (`{"input_ids": ..., "attention_mask": ...}`, what a Hugging Face
  tokenizer gives), passed by keyword (`model(**x)`), so GPT-2's mask reaches
  `attention_mask`, not its second positional parameter (`past_key_values`); the dict's key
  order is kept (it orders the ONNX inputs);
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

import builtins
import inspect
import keyword
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from stages.errors import SqueezerayError

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
"""One batch of model inputs: a tensor, a tuple of tensors (one per positional model
argument), or a dict of tensors (one per keyword argument)."""

INPUT_RULE = (
    "a sample is (x, y) with x a tensor, a tuple of tensors (one per model argument) or a "
    "dict of tensors (keyword arguments, e.g. input_ids, attention_mask) and y an integer class"
)
OUTPUT_RULE = (
    "the model must return logits (B, num_classes) as a tensor, a tuple/list whose first "
    "element is the logits, or a dict/object with 'logits' (Hugging Face style)"
)


_TO_FLOAT32 = (torch.float64, torch.float16, torch.bfloat16)


def _cast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _TO_FLOAT32 else t


def _is_named(x: Any) -> bool:
    return (
        isinstance(x, Mapping)
        and bool(x)
        and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in x.items())
    )


def as_inputs(x: Any) -> Inputs:
    """A collated batch (or one sample) as model inputs: dtypes kept, other floats -> float32.

    Raises SqueezerayError when `x` is neither a tensor, a tuple/list of tensors nor a dict
    of str -> tensor.
    """
    if isinstance(x, torch.Tensor):
        return _cast(x)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(_cast(t) for t in x)
    if _is_named(x):
        return {k: _cast(t) for k, t in x.items()}
    raise SqueezerayError(f"an input of type {_describe(x)} is not accepted: {INPUT_RULE}")


def tensors(x: Inputs) -> tuple[torch.Tensor, ...]:
    """Every input tensor in order (a dict's in its key order)."""
    if isinstance(x, dict):
        return tuple(x.values())
    return x if isinstance(x, tuple) else (x,)


def input_names(x: Inputs) -> tuple[str, ...] | None:
    """The keyword names of named inputs (a dict's keys, in order); None for positional ones."""
    return tuple(x) if isinstance(x, dict) else None


def as_args(x: Inputs) -> tuple[torch.Tensor, ...]:
    """The positional arguments of the model call, for the tools that call a model only
    positionally (torch.fx's `prepare_fx`); a dict of named inputs has none to give.

    Raises SqueezerayError for named inputs: call the model with `call(model, x)` instead.
    """
    if isinstance(x, dict):
        raise SqueezerayError(
            f"named inputs ({', '.join(x)}) cannot be passed positionally: this model takes "
            "keyword inputs, which this path (a positional-only tracer) does not support"
        )
    return tensors(x)


def call(model: Any, x: Inputs) -> Any:
    """`model(**x)` for named inputs, `model(*x)` for positional ones: the one model call."""
    if isinstance(x, dict):
        return model(**x)
    return model(*tensors(x))


def from_tensors(values: Sequence[torch.Tensor], names: Sequence[str] | None) -> Inputs:
    """Inputs of the given structure: a dict when `names` is given, else a tensor (one value)
    or a tuple of them. The inverse of (`tensors`, `input_names`)."""
    if names is not None:
        return dict(zip(names, values, strict=True))
    return values[0] if len(values) == 1 else tuple(values)


def _map(x: Inputs, fn: Any) -> Inputs:
    if isinstance(x, dict):
        return {k: fn(t) for k, t in x.items()}
    if isinstance(x, tuple):
        return tuple(fn(t) for t in x)
    return fn(x)  # type: ignore[no-any-return]


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    return _map(x, lambda t: t.to(device))


def to_double(x: Inputs) -> Inputs:
    """Floating inputs as float64 (integer ids unchanged), for float64 reference passes."""
    return _map(x, lambda t: t.double() if t.is_floating_point() else t)


def batch_size(x: Inputs) -> int:
    return int(tensors(x)[0].shape[0])


def select(x: Inputs, idx: torch.Tensor | slice) -> Inputs:
    """Rows `idx` of every input."""
    return _map(x, lambda t: t[idx])


def concat(batches: Sequence[Inputs]) -> Inputs:
    """Batches joined along the batch axis."""
    names = input_names(batches[0])
    columns = zip(*(tensors(b) for b in batches), strict=True)
    return from_tensors([torch.cat(list(c)) for c in columns], names)


def stack_samples(samples: Sequence[Any]) -> Inputs:
    """Stack the `x` of single samples into one batch (per input for tuple and dict samples)."""
    first = samples[0]
    if isinstance(first, Mapping):
        return as_inputs({k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in first})
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
    """`logits_of(call(model, x))`."""
    return logits_of(call(model, x))


class LogitsOnly(nn.Module):
    """`model` as a function of positional tensors returning only the logits tensor.

    What tracing and ONNX export see: one output, whatever form the user's model returns.
    With `names` (named inputs), the positional tensors are passed to `model` by keyword
    (`model(**dict(zip(names, args)))`), so the traced graph takes the inputs in `names`'
    order. Holds `model` as its only child, so its state_dict keys are prefixed `model.`.
    """

    # the forward's parameter names when it has them (`named_logits`); None: `forward(*args)`
    arguments: tuple[str, ...] | None = None

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names) if names is not None else None

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return logits_of(call(self.model, from_tensors(args, self.names)))


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


# Names a TorchScript module's serialized code uses itself (torch's python_print reserves them):
# an argument so named is renamed or shadows them, and the saved model.pt would not load back.
_TORCHSCRIPT_RESERVED = frozenset(
    {
        *("self", "torch", "ops", "aten", "attribute", "CONSTANTS", "fork", "getattr"),
        *("inf", "nan", "infj", "nanj", "annotate", "uninitialized", "unchecked_cast"),
        *dir(builtins),
    }
)


def signature_names_ok(names: Sequence[str]) -> bool:
    """Whether `names` can be the parameters of a traced forward: distinct Python identifiers,
    no keyword, builtin or name TorchScript's code reserves (`_TORCHSCRIPT_RESERVED`)."""
    return len(set(names)) == len(names) and all(
        n.isidentifier()
        and not keyword.iskeyword(n)
        and not n.startswith("__")
        and n not in _TORCHSCRIPT_RESERVED
        for n in names
    )


def named_logits(
    model: nn.Module, keywords: Sequence[str] | None, names: Sequence[str]
) -> LogitsOnly:
    """`LogitsOnly(model, keywords)` whose forward's parameters are `names` (the inputs as the
    model's card lists them), for tracers: `torch.jit.trace` names the traced module's
    arguments after its forward's signature, so `model.pt` takes `ts(**batch)` as well as
    positional tensors in `names`' order (a forward of `*args` gets the debug names of values
    inside the model: `input` for a tensor passed to nn.Embedding), and `torch.export` names
    the program's inputs so. Positional calls only reach the forward (the tracers pass the
    example positionally). Names that cannot be a TorchScript argument (`signature_names_ok`)
    leave the plain `LogitsOnly`.
    """
    if not signature_names_ok(names):
        return LogitsOnly(model, keywords)
    param = inspect.Parameter
    signature = inspect.Signature(
        [
            param("self", param.POSITIONAL_OR_KEYWORD),
            *(param(n, param.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor) for n in names),
        ],
        return_annotation=torch.Tensor,
    )

    def forward(self: LogitsOnly, *args: torch.Tensor) -> torch.Tensor:
        return LogitsOnly.forward(self, *args)

    forward.__signature__ = signature  # type: ignore[attr-defined]  # read by inspect
    # a class per signature (a method's signature is its class's); named as its base, which
    # the TorchScript schema shows
    named = type(
        "LogitsOnly",
        (LogitsOnly,),
        {"forward": forward, "arguments": tuple(names), "__module__": __name__},
    )
    return named(model, keywords)  # type: ignore[no-any-return]
