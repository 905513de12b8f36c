"""Multi-head attention whose projections are Linear modules, so torch int8 can reach them.

`nn.MultiheadAttention` keeps its input projection as a bare parameter (`in_proj_weight`) and
its forward reads `out_proj.weight` directly, so neither `quantize_dynamic` nor eager/FX static
quantization can swap them for int8 Linears: on a Transformer, the attention (4·E² weights per
layer) stayed float. `LinearAttention` computes the same function with `in_proj: Linear(E, 3E)`
and `out_proj: Linear(E, E)` called as modules (attention itself through
`F.scaled_dot_product_attention`), so the quantize stage converts each supported
`nn.MultiheadAttention` to it before quantizing (and does the same when it rebuilds the
checkpoint). Supported: packed q/k/v of the same size (`kdim == vdim == embed_dim`), with or
without bias, no `add_bias_kv`/`add_zero_attn`; others are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class LinearAttention(nn.Module):
    """nn.MultiheadAttention's forward with Linear projections.

    query (L, N, E) or, with batch_first, (N, L, E); key/value likewise with S; returns
    (output of the query's layout, attention weights (N, L, S) / (N, H, L, S) or None).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # Read by nn.TransformerEncoderLayer's fast-path checks before they look at anything
        # else; `in_proj_bias = None` makes those checks pick the regular path.
        self.in_proj_bias = None
        self._qkv_same_embed_dim = True

    @classmethod
    def supports(cls, mha: nn.Module) -> bool:
        return (
            type(mha) is nn.MultiheadAttention
            and mha._qkv_same_embed_dim
            and mha.bias_k is None
            and not mha.add_zero_attn
        )

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> LinearAttention:
        """The same function as `mha` (weights copied), on its device and dtype."""
        weight = mha.in_proj_weight
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            batch_first=mha.batch_first,
        ).to(device=weight.device, dtype=weight.dtype)
        new.in_proj.weight.copy_(weight)
        new.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.in_proj_bias is not None:
            new.in_proj.bias.copy_(mha.in_proj_bias)
            new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape  # (N, L, E) -> (N, H, L, E/H)
        return x.reshape(n, length, self.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self_attention = query is key and key is value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, embed = query.shape
        source = key.shape[1]
        if self_attention:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:  # cross-attention: each input through its third of the projection
            q = self.in_proj(query)[..., :embed]
            k = self.in_proj(key)[..., embed : 2 * embed]
            v = self.in_proj(value)[..., 2 * embed :]
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        mask = _float_mask(attn_mask, key_padding_mask, n, self.num_heads, length, source, q.dtype)
        causal = is_causal and mask is None
        dropout = self.dropout if self.training else 0.0
        weights: torch.Tensor | None = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5)  # (N, H, L, S)
            if causal:
                mask = torch.full((length, source), float("-inf"), device=q.device).triu(1)
            if mask is not None:
                scores = scores + mask
            weights = F.softmax(scores, dim=-1)
            out = F.dropout(weights, p=dropout, training=self.training) @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, embed))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _float_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    n: int,
    heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """One additive mask broadcastable to (N, H, L, S); bool masks mean True = not allowed."""

    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        return mask.to(dtype)

    total: torch.Tensor | None = None
    if attn_mask is not None:
        m = additive(attn_mask)
        m = m.reshape(1, 1, length, source) if m.dim() == 2 else m.reshape(n, heads, length, source)
        total = m
    if key_padding_mask is not None:
        m = additive(key_padding_mask).reshape(n, 1, 1, source)
        total = m if total is None else total + m
    return total


def convert_attention(
    model: nn.Module, *, inside: Callable[[nn.Module], bool] | None = None
) -> int:
    """Replace every supported nn.MultiheadAttention by a LinearAttention (in place).

    inside: convert only attention layers with an ancestor (below the root) for which it is
    true, e.g. the built-in modules FX graph mode does not trace into. Returns the count.
    """

    def wanted(name: str) -> bool:
        if inside is None:
            return True
        parts = name.split(".")
        return any(inside(model.get_submodule(".".join(parts[:i]))) for i in range(1, len(parts)))

    names = [
        name
        for name, module in model.named_modules()
        if LinearAttention.supports(module) and wanted(name)
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LinearAttention.from_mha(getattr(parent, child)))
    return len(names)


__all__ = ["LinearAttention", "convert_attention"]
