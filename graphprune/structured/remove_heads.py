"""remove_heads: after ``remove_channels`` sliced q/k/v rows and o columns, update what forward reads.

IR: the eager ``nn.Module``. Mutates in place.

Attention modules keep their head counts in plain Python attributes (``num_heads``,
``num_attention_heads``, ``num_key_value_heads``, ``all_head_size``, GPT-2's ``split_size``, ...).
A graph captured with ``torch.export`` has these folded into ``view`` shapes, so the eager module is
what gets updated, and the parity check afterwards proves the forward really reads them. The head
width (``head_dim`` / ``attention_head_size``) never changes: whole heads go.

GQA: a unit is one KV head with its ``num_key_value_groups`` query heads, so the ratio
``num_heads / num_key_value_heads`` (and ``num_key_value_groups``) is unchanged.

HF configs: :func:`update_hf_config` writes ``num_attention_heads`` / ``num_key_value_heads`` (only
where the config states ``head_dim`` explicitly, as Llama's does: BERT, GPT-2 and ViT derive the head
width from ``hidden_size / num_attention_heads``, so their config cannot express pruned heads) and
the FFN width (``intermediate_size``, GPT-2 ``n_inner``, DistilBERT ``hidden_dim``) when every layer
has the same size; the architecture delta always records the per-module truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from graphprune.errors import WeightError

HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_attn_heads")
KV_COUNT_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")
FFN_CONFIG_ATTRS = ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim")


def update_attention_attrs(
    module: nn.Module, *, old_heads: int, old_kv: int, new_heads: int, new_kv: int, head_dim: int, name: str = ""
) -> dict[str, Any]:
    """Set the head-count attributes of one attention module; return those changed."""
    if new_heads < 1 or new_kv < 1:
        raise WeightError(f"pruning would leave attention module {name or type(module).__name__} with zero heads")
    if new_heads % new_kv:
        raise WeightError(
            f"attention module {name}: {new_heads} query heads do not divide into {new_kv} KV heads after pruning"
        )
    changed: dict[str, Any] = {}

    def put(attr: str, value: int) -> None:
        if getattr(module, attr) != value:
            setattr(module, attr, value)
            changed[attr] = value

    for attr in HEAD_COUNT_ATTRS:
        if isinstance(getattr(module, attr, None), int) and getattr(module, attr) == old_heads:
            put(attr, new_heads)
    for attr in KV_COUNT_ATTRS:
        if isinstance(getattr(module, attr, None), int) and getattr(module, attr) == old_kv:
            put(attr, new_kv)
    for attr in WIDTH_ATTRS:
        if isinstance(getattr(module, attr, None), int) and getattr(module, attr) == old_heads * head_dim:
            put(attr, new_heads * head_dim)
    if isinstance(getattr(module, "num_key_value_groups", None), int):
        put("num_key_value_groups", new_heads // new_kv)
    return changed


def _config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    return cfg if cfg is not None and hasattr(cfg, "to_dict") else None


def update_hf_config(
    model: nn.Module,
    *,
    heads: Sequence[tuple[int, int, int, int]] = (),
    ffn: Sequence[tuple[int, int]] = (),
    all_attention_pruned: bool = True,
    all_ffn_pruned: bool = True,
    hidden: Sequence[tuple[int, int]] = (),
) -> tuple[dict[str, Any], list[str]]:
    """Update a transformers config where it can express the new sizes.

    ``heads``: (old_heads, old_kv, new_heads, new_kv) per attention module; ``ffn``: (old, new) per
    FFN; ``hidden``: (old, new) per pruned residual stream (``hidden_size``, and ``rms_norm_eps``
    scaled by old / new as the norms were). Returns the fields set and notes on what the config
    could not express.
    """
    cfg = _config(model)
    notes: list[str] = []
    changed: dict[str, Any] = {}
    if cfg is None:
        return changed, notes
    if heads:
        new_set = {(h[2], h[3]) for h in heads}
        old_heads = getattr(cfg, "num_attention_heads", None)
        if len(new_set) != 1 or not all_attention_pruned:
            notes.append("attention layers have different head counts: the HF config cannot express them (use graphprune.load)")
        elif getattr(cfg, "head_dim", None) is None or old_heads is None:
            notes.append(
                f"{type(cfg).__name__} derives the head width from hidden_size / num_attention_heads, so it cannot "
                "express pruned heads: from_pretrained will not rebuild this model (use graphprune.load)"
            )
        else:
            nh, nkv = next(iter(new_set))
            if old_heads == heads[0][0]:
                changed["num_attention_heads"] = nh
            if getattr(cfg, "num_key_value_heads", None) == heads[0][1]:
                changed["num_key_value_heads"] = nkv
    if ffn:
        news = {n for _, n in ffn}
        olds = {o for o, _ in ffn}
        if len(news) != 1 or not all_ffn_pruned:
            notes.append("FFN layers have different widths: the HF config cannot express them (use graphprune.load)")
        else:
            for attr in FFN_CONFIG_ATTRS:
                if getattr(cfg, attr, None) in olds:
                    changed[attr] = next(iter(news))
                    break
            else:
                if hasattr(cfg, "n_inner") and getattr(cfg, "n_inner", 0) is None and getattr(cfg, "n_embd", 0) * 4 in olds:
                    changed["n_inner"] = next(iter(news))
                else:
                    notes.append(f"{type(cfg).__name__} has no field for the FFN width: from_pretrained keeps the dense width")
    if hidden:
        if len(hidden) != 1 or getattr(cfg, "hidden_size", None) != hidden[0][0]:
            notes.append("the pruned hidden size is not the config's single hidden_size: from_pretrained cannot rebuild it (use graphprune.load)")
        elif getattr(cfg, "head_dim", None) is None and getattr(cfg, "num_attention_heads", None):
            notes.append(f"{type(cfg).__name__} derives the head width from hidden_size: from_pretrained cannot rebuild it (use graphprune.load)")
        else:
            old, new = hidden[0]
            changed["hidden_size"] = new
            if isinstance(getattr(cfg, "rms_norm_eps", None), float):
                changed["rms_norm_eps"] = cfg.rms_norm_eps * old / new
    for k, v in changed.items():
        setattr(cfg, k, v)
    return changed, notes


__all__ = ["update_attention_attrs", "update_hf_config"]
