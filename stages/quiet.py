"""Known-harmless library log lines, dropped at their loggers (nothing else is hidden), and
torch.ao's deprecation warnings, silenced around the calls that raise them (`deprecated_ao`).

Installed when `stages` is imported (every squeezeray process and Ray worker imports it), before
the libraries log them, as `logging.Filter`s on the exact loggers that emit them; each filter
matches one message's text, so any other warning of those loggers still shows:

- torchao's `Failed to load .../torchao/_C_*.so` (its CUDA-only kernel libraries, which cannot
  load on a CPU machine; torchao's CPU paths do not use them);
- torch's `_pytree` note that torchao registers Enum subclasses with `register_constant`
  (a deprecation addressed to torchao, logged once per enum at `import torchao`);
- transformers' "`loss_type=None` ... Using the default loss: `ForCausalLMLoss`", logged when
  torch.export/trace reads a model's `loss_function` property: squeezeray never uses the
  model's own loss (it trains with its cross-entropy), so a classifier need not set one. A
  `loss_type` a user did set and transformers does not know still warns.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (logger name, text the message starts with or contains): each line the filter drops.
_HARMLESS: tuple[tuple[str, str], ...] = (
    ("torchao", "Failed to load "),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
    ("transformers.modeling_utils", "`loss_type=None` was set in the config"),
)


class _DropKnown(logging.Filter):
    """Drops the records whose message contains `text` (and, for torchao, names a `_C` .so)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        if self.text not in message:
            return True
        return self.text == "Failed to load " and "/_C" not in message


_installed = False


def install_log_filters() -> None:
    """Add the filters (once per process; idempotent)."""
    global _installed
    if _installed:
        return
    for name, text in _HARMLESS:
        logging.getLogger(name).addFilter(_DropKnown(text))
    _installed = True


# What torch warns each time it (de)serialises or copies a torch.ao int8 tensor: its storage
# API and its quantized tensor constructors are deprecated (torch's own code calls them).
_INT8_TENSOR_WARNINGS = (
    ".*TypedStorage is deprecated.*",
    ".*quantized tensor creation functions.*",
)


@contextmanager
def int8_tensor_warnings() -> Iterator[None]:
    """Silence, for the block only, the two deprecation warnings torch itself raises while it
    saves, loads or copies torch.ao int8 tensors (a user running with warnings as errors could
    otherwise not load a dynamic-int8 checkpoint). Other warnings still show."""
    with warnings.catch_warnings():
        for text in _INT8_TENSOR_WARNINGS:
            warnings.filterwarnings("ignore", message=text)
        yield


@contextmanager
def deprecated_ao() -> Iterator[None]:
    """Silence the deprecation warnings of torch.ao.quantization (and those of its int8
    tensors: `int8_tensor_warnings`) for the block only."""
    with int8_tensor_warnings(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        yield


__all__ = ["deprecated_ao", "install_log_filters", "int8_tensor_warnings"]
