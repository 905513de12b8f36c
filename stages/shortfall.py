"""A structured prune that removed far less than its ratio asked, said in a warning.

Structured pruning narrows what torch-pruning can follow and leaves the rest: the output
layer's outputs (the logits), `nn.LSTM`/`nn.GRU`/`nn.RNN` layers and what feeds them (the
Embedding of a text model), and, in a Hugging Face model, the attention heads and hidden width
of a layout squeezeray cannot prune by whole heads (`stages.hfheads`). Where that leaves most
of the parameters, `distill.student_ratio: 0.5` or `prune.ratio: 0.5` removes a few percent
of them. `shortfall` says so, for every model (plain PyTorch or Hugging Face) and both knobs
that prune structurally; `stages.prune` warns with it (a `SqueezerayWarning`), so the stage's
log, `squeezeray validate` and the sweep's pre-flight (`stages.precheck`) print it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from stages.hfheads import pretrained_models, what_changed
from stages.hfheads import sizes as hf_sizes

# a structured prune that removes under this share of what its ratio asked is reported
SHORTFALL = 0.5


@dataclass(frozen=True)
class Before:
    """A model's sizes before structured pruning (`before`), for `shortfall`."""

    total: int  # parameters
    own: dict[str, int]  # each module's own parameters, by qualified name
    hf: dict[str, dict[str, int]]  # `stages.hfheads.sizes` of its Hugging Face models
    output: str | None  # the output layer's qualified name (its outputs are the logits)


def before(
    model: nn.Module,
    *,
    output: nn.Module | None = None,
    hf: dict[str, dict[str, int]] | None = None,
) -> Before:
    """`model`'s sizes now. `output`: its output layer (which pruning keeps at the logits'
    width); `hf`: its `stages.hfheads.sizes` when already computed (that function refuses a
    config squeezeray cannot prune, with the knob's fix)."""
    names = {id(m): name for name, m in model.named_modules()}
    return Before(
        total=sum(p.numel() for p in model.parameters()),
        own=_own_counts(model),
        hf=hf_sizes(model) if hf is None else hf,
        output=None if output is None else names.get(id(output)),
    )


def shortfall(model: nn.Module, was: Before, fraction: float, *, what: str, fix: str) -> str | None:
    """A warning when structured pruning to `fraction` removed under `SHORTFALL` of that share
    of `model`'s parameters (`was`: its sizes before), else None. It names the knob (`what`),
    the shares removed and asked, what went and what stayed and why (a Hugging Face model's
    heads and hidden width, recurrent layers and what feeds them, the output layer's
    outputs), and `fix`."""
    after = sum(p.numel() for p in model.parameters())
    removed = 1.0 - after / was.total if was.total else 0.0
    if fraction <= 0.0 or removed >= SHORTFALL * fraction:
        return None
    hf = pretrained_models(model)
    if hf:
        now = hf_sizes(model)
        lines = [what_changed(pm, was.hf[name], now[name]) for name, pm in hf]
    else:
        lines = [_plain_changed(model, was)]
    recurrent = _recurrent_kinds(model)
    if recurrent:
        lines.append(
            f"{'/'.join(recurrent)} layers and what feeds them are not pruned (torch-pruning "
            "has no working pruner for recurrent layers)"
        )
    return (
        f"{what}: structured pruning removed {removed:.1%} of the model's parameters where "
        f"{fraction:.0%} was asked: {'; '.join(lines)}; if that is not what you want, {fix}"
    )


def _own_counts(model: nn.Module) -> dict[str, int]:
    counts = {
        name: sum(p.numel() for p in module.parameters(recurse=False))
        for name, module in model.named_modules()
    }
    return {name: n for name, n in counts.items() if n}


def _recurrent_kinds(model: nn.Module) -> list[str]:
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)})


def _plain_changed(model: nn.Module, was: Before) -> str:
    """'RNNClassifier lost only 16640 parameters of its Linear layers (33283 -> 16643) and
    kept its Embedding (128000 parameters) and LSTM (66560 parameters)'."""
    now = _own_counts(model)
    modules = dict(model.named_modules())
    lost: dict[str, list[int]] = {}
    kept: dict[str, int] = {}
    for name, n in was.own.items():
        kind = type(modules[name]).__name__ if name in modules else "?"
        if name == was.output and now.get(name, 0) == n:
            kind = "output layer"
        if now.get(name, 0) < n:
            pair = lost.setdefault(kind, [0, 0])
            pair[0] += n
            pair[1] += now.get(name, 0)
        else:
            kept[kind] = kept.get(kind, 0) + n
    went = [f"{kind} layers ({b} -> {a})" for kind, (b, a) in sorted(lost.items())]
    stayed = [f"{kind} ({n} parameters)" for kind, n in sorted(kept.items(), key=lambda kv: -kv[1])]
    gone = sum(b - a for b, a in lost.values())
    took = f"only {gone} parameters of its {', '.join(went)}" if went else "nothing"
    return f"{type(model).__name__} lost {took} and kept its {', '.join(stayed) or 'other layers'}"


__all__ = ["SHORTFALL", "Before", "before", "shortfall"]
