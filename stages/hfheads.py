"""Structured pruning of Hugging Face transformers: whole heads, FFN widths, and the config.

A `transformers.PreTrainedModel` is rebuilt by `from_pretrained` from its `config`: hidden
size, head count (head size = hidden / heads) and FFN (intermediate) width, one value each for
every layer. torch-pruning left alone cuts query/key/value to widths that are not whole heads
(a reshape error later) and never touches `config`. This module makes structured pruning keep
a model `from_pretrained` can build:

- `plan(model, fraction)`: for each Hugging Face model inside `model`, the config it will
  have and the per-layer pruning ratios that reach exactly those shapes. Self-attention with
  separate query/key/value Linears (BERT, RoBERTa, DistilBERT, ViT, ...) loses
  `round(fraction * heads)` whole heads per layer (at least one head kept; torch-pruning's
  `prune_num_heads`, head importance = mean L2 magnitude of the head's weights), and the
  hidden width shrinks to `heads kept * head size` so the config's head size stays exact; the
  FFN keeps `int(width * (1 - fraction))` (at least 1). GPT-2's fused attention (`c_attn`
  -> split -> `c_proj`), whose heads torch-pruning 1.6 cannot map, loses the same whole heads
  through `slice_heads`/`remove_heads` (history entries `<attention>:heads`, replayed by
  `stages.surgery.replay`). Other fused or grouped-query attention keeps its heads and the
  hidden width; only the FFN width is pruned there (Llama's head count comes from its
  config: transformers 5 keeps none on `LlamaAttention`; `stages.shortfall` warns when that removes
  under half the share asked). A gated FFN fused in one Linear (ModernBERT's `mlp.Wi`,
  `fused_ffn`) and a config of per-stage widths (Swin, MobileViT: `per_stage_widths`) are
  refused by `sizes` before any pruning. A model without attention heads
  (ConvNext, ResNet) loses channels: its config's `CHANNEL_KEYS` (`hidden_sizes` per stage,
  `embedding_size`) shrink by `fraction`, set by `set_channels` and recorded as history
  entries `<model>:config.<key>` (a CNN's widths cannot be read back from its weights).
- `sync_config(model)`: after pruning, and after `stages.surgery.replay` on a rebuilt model,
  sets each attention module's head count (`num_attention_heads`/`n_heads`, `all_head_size`,
  `dim`) and a copy of `config` (hidden size, heads, FFN width) from the new weight shapes.
  Derived from shapes only, so a checkpoint needs no recipe entry for it.
- `check_config(model)`: the model `type(model)(model.config)` builds (on the meta device)
  must have exactly the pruned model's parameter shapes, else a SqueezerayError names the
  first layer that differs: what `save_pretrained` -> `from_pretrained` needs.

Source of the head handling: torch-pruning's own Hugging Face examples
(examples/transformers/prune_hf_bert.py, prune_hf_vit.py), which pass `num_heads` per
query/key/value Linear, prune with `prune_num_heads=True, prune_head_dims=False`, then set
`num_attention_heads`/`all_head_size` by hand.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stages.conv1d import linear_form
from stages.errors import SqueezerayError
from stages.layers import is_linear

# (query, key, value) attribute names of self-attention modules with separate projections
SEPARATE_QKV = (
    ("query", "key", "value"),
    ("q_lin", "k_lin", "v_lin"),
    ("q_proj", "k_proj", "v_proj"),
)
# one Linear holding q, k and v (torch-pruning 1.6 cannot map heads through its split)
FUSED_QKV = ("c_attn", "qkv", "query_key_value", "Wqkv")
HEADS_ATTRS = ("num_attention_heads", "n_heads", "num_heads", "n_head")
KV_HEADS_KEY = "num_key_value_heads"  # Llama & co: fewer than the heads = grouped-query
HEAD_SIZE_ATTRS = ("attention_head_size", "head_dim", "head_size")
# config keys of the FFN width, in the order they are looked for
FFN_KEYS = ("intermediate_size", "hidden_dim", "n_inner", "ffn_dim")
# the FFN's first Linear(s) in a layer, by its name's tail (Llama's gate and up: both FFN wide)
FFN_LAYERS = (
    "intermediate.dense",
    "ffn.lin1",
    "mlp.c_fc",
    "mlp.fc1",
    "fc1",
    "mlp.gate_proj",
    "mlp.up_proj",
)
# config keys of a convolutional model's channel widths (ConvNext, ResNet, RegNet, ...)
CHANNEL_KEYS = ("hidden_sizes", "embedding_size")
# layers whose output width the config sets
WIDTH_LAYERS = (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd)
# a pruning-history entry whose module name ends so removes whole heads (`remove_heads`)
HEADS_SUFFIX = ":heads"
# a pruning-history entry "<model name>:config.<key>" sets a CNN's channel widths
# (`set_channels`): [name, False, [widths]]
CONFIG_MARK = ":config."
Widths = int | list[int]  # a config's channel width: one, or one per stage
# The advice of a refusal of structured pruning, by the knob that asked for it (the distill
# stage passes its own, `stages.distill.STUDENT_RATIO_FIX`)
UNSTRUCTURED_FIX = "use an unstructured prune.method (l1_unstructured, global, random)"


def pretrained_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the outermost `transformers.PreTrainedModel`s in `model` ('' for the
    model itself); empty when transformers is not imported or none is there."""
    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None)
    if base is None:
        return []
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{outer}.") or outer == "" for outer, _ in found)
        if isinstance(module, base) and not inside:
            found.append((name, module))
    return found


@dataclass(frozen=True)
class Attention:
    """One self-attention module of a Hugging Face model."""

    name: str  # relative to the PreTrainedModel
    module: nn.Module
    projections: tuple[nn.Linear, ...]  # (q, k, v), or (fused,) when `fused`
    heads: int
    head_size: int
    fused: bool  # torch-pruning cannot prune its heads (fused qkv, q/k/v of different widths)
    sliced: bool = False  # fused like GPT-2 (c_attn -> split -> c_proj): `remove_heads` does it


def attentions(pm: nn.Module) -> list[Attention]:
    """The self-attention modules of `pm` (in the form `Task.build` gives: Linears)."""
    found = []
    for name, module in pm.named_modules():
        projections = _projections(module)
        if projections is None:
            continue
        heads = _module_heads(module)
        if not isinstance(heads, int) or heads < 1:
            continue
        q = projections[0]
        fused = len(projections) == 1 or len({p.out_features for p in projections}) > 1
        size = next((getattr(module, a) for a in HEAD_SIZE_ATTRS if hasattr(module, a)), None)
        if not isinstance(size, int):
            size = q.out_features // (3 * heads if len(projections) == 1 else heads)
        if not fused and (size < 1 or q.out_features % size):
            fused = True  # not laid out as heads x head size: leave its heads alone
        if not fused:  # the weights' head count (the attribute may predate a pruning)
            heads = q.out_features // size
        sliced = fused and _sliceable(module, q, size)
        if sliced:
            heads = q.out_features // (3 * size)
        found.append(Attention(name, module, projections, heads, size, fused, sliced))
    return found


def _module_heads(module: nn.Module) -> Any:
    """An attention module's head count: its own attribute, or (Llama, Mistral, Qwen2 in
    transformers 5, which keep only `head_dim`) its config's `num_attention_heads`."""
    own = next((getattr(module, a) for a in HEADS_ATTRS if hasattr(module, a)), None)
    if own is not None:
        return own
    return getattr(getattr(module, "config", None), "num_attention_heads", None)


def _sliceable(module: nn.Module, fused: nn.Linear, size: int) -> bool:
    """GPT-2's layout: `c_attn` (E -> 3 x heads x size, q|k|v), split at `split_size`, then
    `c_proj` (heads x size -> E)."""
    proj = getattr(module, "c_proj", None)
    width = fused.out_features // 3
    return (
        getattr(module, "c_attn", None) is fused
        and is_linear(proj)
        and size > 0
        and fused.out_features % (3 * size) == 0
        and getattr(module, "split_size", None) in (width, fused.in_features)
        and proj.in_features == width
    )


@torch.no_grad()
def remove_heads(attention: nn.Module, heads: list[int]) -> None:
    """Remove whole heads from a GPT-2-style fused attention (in place): their query, key and
    value rows of `c_attn` and their input columns of `c_proj`; `split_size` and the head count
    follow. Heads are numbered 0..n-1 in the current layout."""
    c_attn, c_proj = attention.c_attn, attention.c_proj
    assert is_linear(c_attn) and is_linear(c_proj)
    size = int(next(getattr(attention, a) for a in HEAD_SIZE_ATTRS if hasattr(attention, a)))
    width = c_attn.out_features // 3
    gone = set(heads)
    cols = [h * size + j for h in range(width // size) if h not in gone for j in range(size)]
    rows = [part * width + c for part in range(3) for c in cols]
    _keep_rows(c_attn, rows)
    c_proj.weight = nn.Parameter(
        c_proj.weight[:, cols].clone(), requires_grad=c_proj.weight.requires_grad
    )
    c_proj.in_features = len(cols)
    setattr(attention, "split_size", len(cols))  # noqa: B010
    for attr in HEADS_ATTRS:
        if hasattr(attention, attr):
            setattr(attention, attr, len(cols) // size)


def _keep_rows(layer: nn.Linear, rows: list[int]) -> None:
    weight = layer.weight
    layer.weight = nn.Parameter(weight[rows].clone(), requires_grad=weight.requires_grad)
    if layer.bias is not None:
        bias = layer.bias
        layer.bias = nn.Parameter(bias[rows].clone(), requires_grad=bias.requires_grad)
    layer.out_features = len(rows)


def _head_scores(a: Attention) -> list[float]:
    """Per head: squared L2 norm of its q, k and v rows of c_attn and its c_proj columns."""
    c_attn, c_proj = a.projections[0], a.module.c_proj
    assert is_linear(c_proj)
    width, size = c_attn.out_features // 3, a.head_size
    w, p = c_attn.weight.detach(), c_proj.weight.detach()
    return [
        sum(
            float(w[k * width + h * size : k * width + (h + 1) * size].pow(2).sum())
            for k in range(3)
        )
        + float(p[:, h * size : (h + 1) * size].pow(2).sum())
        for h in range(a.heads)
    ]


def slice_heads(model: nn.Module, keep: dict[str, int]) -> list[list[Any]]:
    """Remove the least important heads of every GPT-2-style fused attention of `model` so
    that `keep[Hugging Face model name]` heads remain in each (in place).

    Returns pruning-history entries `[attention name + HEADS_SUFFIX, False, [head indices]]`,
    which `stages.surgery.replay` applies with `remove_heads`. Importance: the squared L2 norm
    of a head's q, k and v rows and its c_proj columns (torch-pruning's group magnitude, per
    head); torch-pruning 1.6 itself maps c_proj's inputs to c_attn's query rows, not its value
    rows, so it cannot do this.
    """
    entries: list[list[Any]] = []
    for prefix, pm in pretrained_models(model):
        for a in attentions(pm):
            if not a.sliced or prefix not in keep or a.heads <= keep[prefix]:
                continue
            score = _head_scores(a)
            gone = sorted(sorted(range(a.heads), key=lambda h: score[h])[: a.heads - keep[prefix]])
            remove_heads(a.module, gone)
            name = ".".join(n for n in (prefix, a.name) if n)
            entries.append([name + HEADS_SUFFIX, False, gone])
    return entries


def _projections(module: nn.Module) -> tuple[nn.Linear, ...] | None:
    for names in SEPARATE_QKV:
        layers = [getattr(module, n, None) for n in names]
        if all(is_linear(m) for m in layers):
            return tuple(layers)  # type: ignore[arg-type]
    for name in FUSED_QKV:
        layer = getattr(module, name, None)
        if is_linear(layer):
            return (layer,)
    return None


def config_of(pm: nn.Module) -> Any:
    """A Hugging Face model's `config` (a `PretrainedConfig`), typed for attribute access."""
    return pm.config


def _config_get(config: Any, key: str) -> Any:
    return getattr(config, key, None)


def ffn_key(config: Any) -> str | None:
    """The config key holding the FFN width (`intermediate_size`, DistilBERT `hidden_dim`,
    GPT-2 `n_inner`), or None."""
    keys = set(config.to_dict())
    return next((k for k in FFN_KEYS if k in keys), None)


def _ffn_width(config: Any) -> int | None:
    key = ffn_key(config)
    value = _config_get(config, key) if key else None
    if value is None and key == "n_inner":  # GPT-2: None means 4 * hidden
        return 4 * int(config.hidden_size)
    return int(value) if isinstance(value, int) else None


@dataclass(frozen=True)
class Plan:
    """How one structured pruning step treats the Hugging Face models of a model."""

    ratios: dict[nn.Module, float]  # per Linear/Conv: MetaPruner pruning_ratio_dict entries
    num_heads: dict[nn.Module, int]  # q/k/v Linear -> its attention's current head count
    head_ratios: dict[nn.Module, float]  # q/k/v Linear -> fraction of current heads to remove
    ignored: list[nn.Module]  # fused/GQA projections: torch-pruning leaves their outputs
    keep_heads: dict[str, int]  # Hugging Face model name -> heads each attention keeps
    channels: dict[str, dict[str, Widths]]  # name -> a CNN's new channel widths (`set_channels`)


def plan(
    model: nn.Module,
    fraction: float,
    *,
    original: dict[str, dict[str, int]],
    fix: str = UNSTRUCTURED_FIX,
) -> Plan:
    """Ratios that prune each Hugging Face model in `model` to the config of `fraction`.

    `original`: `sizes(model)` taken before the first step (targets are relative to it, so
    gradual steps end exactly where one step would). Layers outside the Hugging Face models
    get no entry (the caller's defaults apply). A model whose config names no width this
    module can set (no attention heads, FFN width or `CHANNEL_KEYS`) is a SqueezerayError
    with `fix`: its pruned weights could not be saved with `save_pretrained`.
    """
    ratios: dict[nn.Module, float] = {}
    num_heads: dict[nn.Module, int] = {}
    head_ratios: dict[nn.Module, float] = {}
    ignored: list[nn.Module] = []
    keep_heads: dict[str, int] = {}
    channels: dict[str, dict[str, Widths]] = {}
    for name, pm in pretrained_models(model):
        target = _target_config(pm, fraction, original[name])
        if not original[name]["heads"]:
            channels[name] = _channel_widths(target)
            if not channels[name] and not original[name]["ffn"]:
                raise SqueezerayError(_no_widths(pm, fix))
        keep_heads[name] = int(_config_get(target, "num_attention_heads") or 0)
        with torch.device("meta"):
            shaped = type(pm)(target)
        linear_form(shaped)
        attn = attentions(pm)
        qkv = {id(p) for a in attn for p in a.projections}
        for a in attn:
            if a.fused:
                ignored.extend(a.projections)
                continue
            keep = keep_heads[name]
            remove = a.heads - keep
            for p in a.projections:
                num_heads[p] = a.heads
                head_ratios[p] = (remove - 0.5) / a.heads if remove > 0 else 0.0
                ratios[p] = 0.5 if remove > 0 else 0.0  # > 0 so that the heads are pruned
        for layer_name, layer in pm.named_modules():
            if id(layer) in qkv or not isinstance(layer, WIDTH_LAYERS):
                continue
            try:
                shaped_layer = shaped.get_submodule(layer_name)
            except AttributeError:
                continue
            now, want = _out_width(layer), _out_width(shaped_layer)
            # n * (1 - r) = want + 0.5: MetaPruner keeps int(n * (1 - r)) = want exactly
            ratios[layer] = (now - want - 0.5) / now if want < now else 0.0
    return Plan(ratios, num_heads, head_ratios, ignored, keep_heads, channels)


def _no_widths(pm: nn.Module, fix: str) -> str:
    config = config_of(pm)
    return (
        f"structured pruning of {type(pm).__name__} (model_type "
        f"{getattr(config, 'model_type', '?')!r}): its config has no attention heads "
        f"({HEADS_ATTRS[0]}), FFN width ({', '.join(FFN_KEYS)}) or channel widths "
        f"({', '.join(CHANNEL_KEYS)}) that squeezeray can shrink, so a pruned model could not "
        f"be saved with save_pretrained and loaded back; {fix}"
    )


def _out_width(layer: nn.Module) -> int:
    if isinstance(layer, nn.Embedding):
        return int(layer.embedding_dim)
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


def sizes(model: nn.Module, *, fix: str = UNSTRUCTURED_FIX) -> dict[str, dict[str, int]]:
    """{Hugging Face model name: {"hidden": ..., "heads": ..., "head_size": ..., "ffn": ...}}
    as its config says now; "prunable_heads" is 1 when every attention has separate q/k/v;
    a CNN's channel widths as "width:<key>[i]" (`_width_sizes`).

    A transformer whose config holds per-stage widths (`per_stage_widths`: Swin's `num_heads`,
    MobileViT's `hidden_sizes`) or whose FFN is fused (`fused_ffn`: ModernBERT's `mlp.Wi`) is
    a SqueezerayError with `fix`, before any pruning."""
    out: dict[str, dict[str, int]] = {}
    for name, pm in pretrained_models(model):
        config = config_of(pm)
        attn = attentions(pm)
        staged = per_stage_widths(pm, attn)
        if staged is not None:
            raise SqueezerayError(_per_stage_refusal(pm, *staged, fix))
        heads = int(_config_get(config, "num_attention_heads") or 0)
        hidden = int(_config_get(config, "hidden_size") or 0)
        head_size = attn[0].head_size if attn else 0
        prunable = (
            bool(attn)
            and all(a.sliced or not a.fused for a in attn)
            and hidden == heads * head_size
        )
        fused = fused_ffn(pm, hidden, _ffn_width(config) or 0)
        if fused is not None:
            raise SqueezerayError(_fused_ffn_refusal(pm, fused, fix))
        out[name] = {
            "hidden": hidden,
            "heads": heads,
            "head_size": head_size,
            "ffn": _ffn_width(config) or 0,
            "prunable_heads": int(prunable),
            **_width_sizes(config),
        }
    return out


def fused_ffn(pm: nn.Module, hidden: int, ffn: int) -> tuple[str, nn.Linear] | None:
    """(name, layer) of a gated FFN's gate and up projections fused in one Linear (hidden ->
    2 x the config's FFN width, and no Linear hidden -> FFN width: ModernBERT's `mlp.Wi`,
    Phi-3's `gate_up_proj`), or None. torch-pruning cuts such a layer as one FFN, not as two
    halves of the same neurons, so its config cannot follow."""
    if not hidden or not ffn:
        return None
    linears = [(n, m) for n, m in pm.named_modules() if is_linear(m)]
    if any((m.in_features, m.out_features) == (hidden, ffn) for _, m in linears):
        return None
    return next(
        ((n, m) for n, m in linears if (m.in_features, m.out_features) == (hidden, 2 * ffn)), None
    )


def _fused_ffn_refusal(pm: nn.Module, fused: tuple[str, nn.Linear], fix: str) -> str:
    config = config_of(pm)
    name, layer = fused
    key = ffn_key(config)
    fused_qkv = [
        f"{a.name}.{child}"
        for a in attentions(pm)
        if a.fused and not a.sliced
        for child, module in a.module.named_children()
        if module is a.projections[0] and len(a.projections) == 1
    ]
    also = (
        f" and the attention's query, key and value in one Linear ({fused_qkv[0]}, ...)"
        if fused_qkv
        else ""
    )
    return (
        f"structured pruning of {type(pm).__name__} (model_type "
        f"{getattr(config, 'model_type', '?')!r}) is not supported: it fuses the FFN's gate "
        f"and up projections in one Linear ({name}: {layer.in_features} -> "
        f"{layer.out_features} = 2 x {key} {layer.out_features // 2}){also}; torch-pruning "
        f"cannot cut such a layer as the same neurons of each part, so a pruned model could "
        f"not be saved with save_pretrained and loaded back; {fix}"
    )


# config keys whose per-stage list (one value per stage of a hierarchical transformer: Swin's
# `num_heads`, MobileViT's and SegFormer's `hidden_sizes`) squeezeray cannot shrink
STAGED_KEYS = (*HEADS_ATTRS, "hidden_size", *FFN_KEYS, *CHANNEL_KEYS)


def per_stage_widths(pm: nn.Module, attn: list[Attention] | None = None) -> tuple[str, Any] | None:
    """(config key, value) of the first per-stage width list in a transformer's config, or
    None. A list of head counts is one in any model; a list of channel widths
    (`CHANNEL_KEYS`) only beside attention (ConvNext's and ResNet's are pruned). squeezeray
    prunes a transformer to one head count, hidden size and FFN width for every layer (the
    keys `_target_config` sets): a config of per-stage values cannot follow."""
    data = config_of(pm).to_dict()
    attn = attentions(pm) if attn is None else attn
    for key in STAGED_KEYS:
        value = data.get(key)
        if isinstance(value, (list, tuple)) and (attn or key not in CHANNEL_KEYS):
            return key, value
    return None


def _per_stage_refusal(pm: nn.Module, key: str, value: Any, fix: str) -> str:
    config = config_of(pm)
    return (
        f"structured pruning of {type(pm).__name__} (model_type "
        f"{getattr(config, 'model_type', '?')!r}): its config holds per-stage widths "
        f"({key}={list(value)}, one value per stage of the architecture) that squeezeray "
        f"cannot shrink: it prunes transformers whose config holds one head count "
        f"({HEADS_ATTRS[0]}), hidden size and FFN width for every layer, so a pruned model "
        f"could not be saved with save_pretrained and loaded back; {fix}"
    )


def what_changed(pm: nn.Module, before: dict[str, int], now: dict[str, int]) -> str:
    """What structured pruning took from the Hugging Face model `pm` (`before`/`now`: its
    `sizes` entries) and what it kept, with why heads stayed (for `stages.shortfall`)."""
    config = config_of(pm)
    parts = [
        ("FFN width", ffn_key(config) or "ffn", "ffn"),
        ("hidden width", "hidden_size", "hidden"),
    ]
    parts += [(f"channels {k[6:]}", k[6:], k) for k in before if k.startswith("width:")]
    pruned = [f"{label} ({key} {before[k]} -> {now[k]})" for label, key, k in parts
              if before.get(k) and now.get(k) != before[k]]  # fmt: skip
    kept = [
        f"{label} {before[k]}" for label, _, k in parts if before.get(k) and now.get(k) == before[k]
    ]
    why = ""
    if before["heads"] and now["heads"] == before["heads"]:
        kept.insert(0, f"{before['heads']} attention heads")
        kinds = sorted({type(m).__name__ for m in pm.modules() if _unpruned_heads(m, pm)})
        why = (
            " (squeezeray removes whole heads only from the attention layouts "
            f"docs/huggingface-pruning.md lists; {', '.join(kinds) or 'its attention'} is not one)"
        )
    return (
        f"{type(pm).__name__} lost only its {' and '.join(pruned) or 'nothing'} and kept its "
        f"{' and '.join(kept) or 'other widths'}{why}"
    )


def _unpruned_heads(module: nn.Module, pm: nn.Module) -> bool:
    """An attention module whose heads structured pruning leaves (its own head count, q/k/v
    not recognised, or fused/grouped-query)."""
    found = [a for a in attentions(pm) if a.module is module]
    if found:
        return found[0].fused and not found[0].sliced
    own = any(isinstance(getattr(module, a, None), int) for a in HEADS_ATTRS)
    return own and any(is_linear(c) for c in module.children())


def _width_sizes(config: Any) -> dict[str, int]:
    """A CNN config's channel widths as `sizes` entries: "width:hidden_sizes[0]": 8, ...,
    "width:embedding_size": 8 (gradual steps scale the widths before the first step)."""
    out: dict[str, int] = {}
    for key, value in _channel_widths(config).items():
        if isinstance(value, list):
            out.update({f"width:{key}[{i}]": int(v) for i, v in enumerate(value)})
        else:
            out[f"width:{key}"] = int(value)
    return out


def _target_config(pm: nn.Module, fraction: float, size: dict[str, int]) -> Any:
    """A copy of `pm.config` with the head count, hidden and FFN widths of `fraction`."""
    config = copy.deepcopy(config_of(pm))
    if size["prunable_heads"]:
        heads = size["heads"] - min(size["heads"] - 1, round(fraction * size["heads"]))
        config.num_attention_heads = heads
        config.hidden_size = heads * size["head_size"]
        if _config_get(config, KV_HEADS_KEY) is not None:  # Llama without GQA: kv heads = heads
            setattr(config, KV_HEADS_KEY, heads)
    key = ffn_key(config)
    if key and size["ffn"]:
        setattr(config, key, max(1, int(size["ffn"] * (1.0 - fraction))))
    if not size["heads"]:  # a CNN (ConvNext, ResNet): every stage's channels, as before step 1
        for key, value in _channel_widths(config).items():
            before: Widths = (
                [size[f"width:{key}[{i}]"] for i in range(len(value))]
                if isinstance(value, list)
                else size[f"width:{key}"]
            )
            setattr(config, key, _scaled(before, fraction))
    return config


def _channel_widths(config: Any) -> dict[str, Widths]:
    """The channel widths a convolutional model's config holds (`CHANNEL_KEYS`)."""
    found = {k: _config_get(config, k) for k in CHANNEL_KEYS}
    return {k: v for k, v in found.items() if isinstance(v, (int, list))}


def _scaled(value: Widths, fraction: float) -> Widths:
    if isinstance(value, list):
        return [max(1, int(v * (1.0 - fraction))) for v in value]
    return max(1, int(value * (1.0 - fraction)))


def sync_config(model: nn.Module, *, fix: str = UNSTRUCTURED_FIX) -> None:
    """Set every Hugging Face model's head counts and config from its weight shapes (in place).

    Each attention module gets its head count (and `all_head_size`, DistilBERT's `dim`); each
    model gets a copy of its config (never the factory's object: a config shared between
    factory calls must not change) with hidden size, heads and FFN width as the weights have
    them. Unpruned models are left as they are. Raises SqueezerayError when layers differ in
    head count or FFN width (a config has one value for all).
    """
    for _, pm in pretrained_models(model):
        changes: dict[str, int] = {}
        attn = [a for a in attentions(pm) if a.sliced or not a.fused]
        for a in attn:
            q, heads = a.projections[0], a.heads
            if a.sliced:  # GPT-2: q's width is 3 x heads x size
                setattr(a.module, "split_size", q.out_features // 3)  # noqa: B010
                setattr(a.module, "embed_dim", q.in_features)  # noqa: B010
            for attr in HEADS_ATTRS:
                if hasattr(a.module, attr):
                    setattr(a.module, attr, heads)
            if hasattr(a.module, "all_head_size"):
                setattr(a.module, "all_head_size", q.out_features)  # noqa: B010
            if isinstance(getattr(a.module, "dim", None), int):  # DistilBERT: the hidden size
                setattr(a.module, "dim", q.in_features)  # noqa: B010
            _agree(changes, "num_attention_heads", heads, pm, a.name, fix)
            if _config_get(config_of(pm), KV_HEADS_KEY) is not None:  # q, k, v alike: no GQA
                _agree(changes, KV_HEADS_KEY, heads, pm, a.name, fix)
            _agree(changes, "hidden_size", q.in_features, pm, a.name, fix)
        key = ffn_key(config_of(pm))
        for name, layer in _ffn_layers(pm):
            if key:
                _agree(changes, key, layer.out_features, pm, name, fix)
        _set_config(pm, changes)


def _agree(
    changes: dict[str, int], key: str, value: int, pm: nn.Module, where: str, fix: str
) -> None:
    if changes.setdefault(key, value) != value:
        raise SqueezerayError(
            f"structured pruning left {type(pm).__name__} layer {where!r} with {key}={value} "
            f"while an earlier layer has {changes[key]}; its config holds one {key} for every "
            f"layer, so this model could not be saved with save_pretrained; {fix}"
        )


def _ffn_layers(pm: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    for name, layer in pm.named_modules():
        if is_linear(layer) and any(
            name == tail or name.endswith(f".{tail}") for tail in FFN_LAYERS
        ):
            yield name, layer


def _set_config(pm: nn.Module, changes: Mapping[str, Widths]) -> None:
    old = config_of(pm)
    if all(_current(old, k) == v for k, v in changes.items()):
        return
    new = copy.deepcopy(old)
    for key, value in changes.items():
        setattr(new, key, value)
    for module in pm.modules():  # every submodule that holds the same config object
        if getattr(module, "config", None) is old:
            module.config = new


def _current(config: Any, key: str) -> Widths | None:
    if key == "n_inner" and _config_get(config, key) is None:
        return 4 * int(config.hidden_size)
    value = _config_get(config, key)
    if isinstance(value, list):
        return value
    return int(value) if isinstance(value, int) else None


def set_channels(model: nn.Module, channels: dict[str, dict[str, Widths]]) -> list[list[Any]]:
    """Give each convolutional Hugging Face model in `model` the channel widths `channels`
    holds for it (a copy of its config, as `sync_config`), after torch-pruning cut the
    weights to them. A CNN's widths cannot be read back from its weights alone (ConvNext's
    `hidden_sizes` of every stage, ResNet's `embedding_size`), so the change is also returned
    as pruning-history entries `["<model name>:config.<key>", False, [widths]]`, which
    `stages.surgery.replay` applies with `set_config_entry`."""
    entries: list[list[Any]] = []
    for prefix, _ in pretrained_models(model):
        for key, value in channels.get(prefix, {}).items():
            name, widths = f"{prefix}{CONFIG_MARK}{key}", _as_list(value)
            set_config_entry(model, name, widths)
            entries.append([name, False, widths])
    return entries


def _as_list(value: Widths) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def set_config_entry(model: nn.Module, name: str, widths: list[int]) -> None:
    """Apply one `set_channels` history entry (`name` = "<model name>:config.<key>")."""
    prefix, _, key = name.rpartition(CONFIG_MARK)
    pm = model.get_submodule(prefix) if prefix else model
    current = _config_get(config_of(pm), key)
    if not isinstance(current, (int, list)) or len(widths) != len(_as_list(current)):
        raise SqueezerayError(
            f"pruning history entry {name!r} sets {key}={widths} but the model's config has "
            f"{key}={current!r}; the model factory builds another structure than the one "
            "that was pruned"
        )
    _set_config(pm, {key: list(widths) if isinstance(current, list) else widths[0]})


@contextlib.contextmanager
def no_cache(model: nn.Module) -> Iterator[None]:
    """`config.use_cache = False` on every Hugging Face model in `model` while tracing.

    With the cache on, GPT-2 builds a key/value cache in every forward pass, and its
    `torch.cat` made torch-pruning's dependency graph fail (`unsupported operand type(s) for
    +: 'int' and 'NoneType'`); the logits do not depend on it.
    """
    saved = [
        (pm, config_of(pm).use_cache)
        for _, pm in pretrained_models(model)
        if hasattr(config_of(pm), "use_cache")
    ]
    try:
        for pm, _ in saved:
            config_of(pm).use_cache = False
        yield
    finally:
        for pm, value in saved:  # its config object may have been replaced (sync_config)
            config_of(pm).use_cache = value


def check_config(model: nn.Module, *, fix: str = UNSTRUCTURED_FIX) -> None:
    """Every Hugging Face model in `model` has the parameter shapes its config builds.

    Raises SqueezerayError naming the first layer whose shape differs (what
    `from_pretrained` on a `save_pretrained` directory of this model would fail on).
    """
    for prefix, pm in pretrained_models(model):
        with torch.device("meta"):
            fresh = type(pm)(copy.deepcopy(config_of(pm)))
        linear_form(fresh)
        want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
        for key, value in pm.state_dict().items():
            if key in want and tuple(value.shape) != want[key]:
                where = f"{prefix}.{key}" if prefix else key
                raise SqueezerayError(
                    f"structured pruning left {where} with shape {tuple(value.shape)} but "
                    f"{type(pm).__name__}'s updated config builds {want[key]}; the result "
                    f"could not be saved with save_pretrained and loaded back; {fix}"
                )


__all__ = [
    "CONFIG_MARK",
    "HEADS_SUFFIX",
    "UNSTRUCTURED_FIX",
    "Attention",
    "Plan",
    "attentions",
    "check_config",
    "config_of",
    "ffn_key",
    "fused_ffn",
    "no_cache",
    "per_stage_widths",
    "plan",
    "pretrained_models",
    "remove_heads",
    "set_channels",
    "set_config_entry",
    "sizes",
    "slice_heads",
    "sync_config",
    "what_changed",
]
