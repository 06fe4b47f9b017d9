"""Module classes graphprune swaps in when a rewrite leaves a torch module whose forward cannot run it.

:class:`SlimMultiheadAttention`: ``nn.MultiheadAttention`` with whole heads removed. Its forward
(``F.multi_head_attention_forward``) derives the head width from ``embed_dim // num_heads`` and
requires the q/k/v projections to be ``embed_dim`` wide, so a module with fewer heads of the same
width cannot run there. The slim class is a subclass (``isinstance`` checks in user code and in
``nn.TransformerEncoderLayer`` still hold) whose forward computes ``num_heads`` heads of
``head_dim`` each from the same parameters, with the same state_dict names and the same call
signature. The swap is done on the instance (``__class__``), so nothing else about the module changes.

Differences from the dense module, all stated in the report:
- returned attention weights average over the kept heads only (per-head weights have the kept
  count of heads);
- a 3-D ``attn_mask`` of ``(batch * original_heads, L, S)`` is accepted: the kept heads' rows are
  taken from it (``kept_heads`` records which);
- ``nn.TransformerEncoderLayer``'s fused inference fast path is turned off for this module
  (``_qkv_same_embed_dim`` is False): that kernel derives the head width from ``embed_dim``.

``CLASSES`` is the allow-list that :func:`graphprune.checkpoint.delta.apply_delta` may install by name;
a delta cannot make the loader import anything else.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SlimMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with ``num_heads`` heads of ``head_dim`` (``num_heads * head_dim`` may
    be less than ``embed_dim``). Built by :func:`slim_multihead_attention`, not directly."""

    kept_heads: list[int]
    original_num_heads: int
    fused_in_proj: bool

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        packed = self.fused_in_proj and query is key and key is value  # self-attention: one in_proj matmul
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        bsz, tgt_len, _ = query.shape
        src_len = key.shape[1]
        h, d = self.num_heads, self.head_dim
        inner = h * d
        if packed:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).split(inner, dim=-1)
        else:
            if self.fused_in_proj:
                w_q, w_k, w_v = self.in_proj_weight.split(inner)
            else:
                w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            b_q, b_k, b_v = self.in_proj_bias.split(inner) if self.in_proj_bias is not None else (None, None, None)
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        q = q.reshape(bsz, tgt_len, h, d).transpose(1, 2)
        k = k.reshape(bsz, src_len, h, d).transpose(1, 2)
        v = v.reshape(bsz, src_len, h, d).transpose(1, 2)

        mask = self._merged_mask(attn_mask, key_padding_mask, bsz, tgt_len, src_len, q.dtype, is_causal)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            if dropout > 0.0:
                weights = F.dropout(weights, p=dropout)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, tgt_len, inner))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights

    def _merged_mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        bsz: int,
        tgt_len: int,
        src_len: int,
        dtype: torch.dtype,
        is_causal: bool,
    ) -> Tensor | None:
        """One additive float mask broadcastable to ``[bsz, heads, tgt_len, src_len]`` (None: no mask)."""
        mask: Tensor | None = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=self.out_proj.weight.device).triu(1)
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # [bsz * original heads, L, S]: keep the rows of the kept heads
                mask = mask.view(bsz, self.original_num_heads, tgt_len, src_len)[:, self.kept_heads]
        if key_padding_mask is not None:
            kpm = _additive(key_padding_mask, dtype).view(bsz, 1, 1, src_len)
            mask = kpm if mask is None else mask + kpm
        return mask


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool mask (True: not allowed to attend) as 0 / -inf; a float mask as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def slim_multihead_attention(module: nn.MultiheadAttention, kept_heads: list[int], *, original_num_heads: int) -> dict[str, Any]:
    """Turn ``module`` (whose q/k/v rows and out_proj columns were already sliced to ``kept_heads``,
    indices into its ``original_num_heads``) into a :class:`SlimMultiheadAttention` in place; return
    the attributes set, for the delta."""
    attrs: dict[str, Any] = {
        "original_num_heads": int(original_num_heads),
        "kept_heads": [int(i) for i in kept_heads],
        "fused_in_proj": module.in_proj_weight is not None,
        "num_heads": len(kept_heads),
        "_qkv_same_embed_dim": False,
    }
    for k, v in attrs.items():
        setattr(module, k, v)
    module.__class__ = SlimMultiheadAttention
    return attrs


def unsupported_reason(module: nn.MultiheadAttention) -> str | None:
    """Why the heads of ``module`` cannot be removed (None: they can)."""
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv=True appends learned key/value rows shared by all heads"
    if module.add_zero_attn:
        return "add_zero_attn=True"
    return None


CLASSES: dict[str, type[nn.Module]] = {
    "graphprune.layers.SlimMultiheadAttention": SlimMultiheadAttention,
    "graphprune.modules.SlimMultiheadAttention": SlimMultiheadAttention,  # deltas written before the rename
}


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


__all__ = ["CLASSES", "SlimMultiheadAttention", "class_name", "slim_multihead_attention", "unsupported_reason"]
