"""Step 4 of structured pruning, *rewrite*: shrink the eager module in place and write the architecture delta.

In order: slice every tensor axis of the chosen groups and resize their modules
(:mod:`~graphprune.structured.remove_channels`); update the head counts that attention forwards read
(:mod:`~graphprune.structured.remove_heads`), swapping in :class:`graphprune.layers.SlimMultiheadAttention`
for an ``nn.MultiheadAttention`` that lost heads; rescale each RMSNorm of a pruned residual stream
(:mod:`~graphprune.structured.rescale_norms`) so the result stays exact; write the new sizes into the HF
config where it can express them. The delta (format :data:`graphprune.serialize.DELTA_FORMAT`) records
the per-module truth, so :func:`graphprune.load` can rebuild the shrunk model from the dense constructor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from graphprune.analysis.groups import ChannelGroup, GroupAnalysis
from graphprune.layers import SlimMultiheadAttention, class_name, slim_multihead_attention
from graphprune.serialize import DELTA_FORMAT
from graphprune.structured.records import GroupRecord
from graphprune.structured.remove_channels import remove_channels
from graphprune.structured.remove_heads import update_attention_attrs, update_hf_config
from graphprune.structured.rescale_norms import rescale_rms_norm

__all__ = ["shrink"]


def shrink(
    model: nn.Module,
    keep: dict[tuple[str, int], torch.Tensor],
    chosen: Sequence[tuple[ChannelGroup, torch.Tensor]],
    analysis: GroupAnalysis,
    records: dict[int, GroupRecord],
    notes: list[str],
) -> dict[str, Any]:
    """Apply ``keep`` to ``model`` IN PLACE and return the architecture delta (notes appended to ``notes``)."""
    rc = remove_channels(model, keep)
    module_attrs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in rc.modules.items()}
    classes: dict[str, str] = {}
    heads_changes = _shrink_heads(model, chosen, records, module_attrs, classes, notes)
    hidden_changes: list[tuple[int, int]] = []
    for g, ku in chosen:
        if g.kind != "hidden":
            continue
        n, n_kept = g.channels, g.channels // g.units * int(ku.numel())
        for fqn in g.norms:
            changed = rescale_rms_norm(model.get_submodule(fqn) if fqn else model, n, n_kept, name=fqn)
            module_attrs.setdefault(fqn, {}).update(changed)
        hidden_changes.append((n, n_kept))
    ffn_changes = [(g.channels, g.channels // g.units * int(ku.numel())) for g, ku in chosen if g.kind == "ffn"]
    n_attn = sum(1 for g in analysis.groups if g.kind == "heads")
    n_ffn = sum(1 for g in analysis.groups if g.kind == "ffn" and g.prunable)
    cfg_changes, cfg_notes = update_hf_config(
        model,
        heads=heads_changes,
        ffn=ffn_changes,
        all_attention_pruned=len(heads_changes) == n_attn,
        all_ffn_pruned=len(ffn_changes) == n_ffn,
        hidden=hidden_changes,
    )
    notes.extend(cfg_notes)
    return {
        "format": DELTA_FORMAT,
        "tensors": rc.tensors,
        "modules": module_attrs,
        "classes": classes,
        "config": cfg_changes,
        "groups": [
            {"id": r.id, "kind": r.kind, "name": r.name, "units_before": r.units_before, "units_after": r.units_after}
            for r in records.values()
            if r.pruned
        ],
    }


def _shrink_heads(
    model: nn.Module,
    chosen: Sequence[tuple[ChannelGroup, torch.Tensor]],
    records: dict[int, GroupRecord],
    module_attrs: dict[str, dict[str, Any]],
    classes: dict[str, str],
    notes: list[str],
) -> list[tuple[int, int, int, int]]:
    changes: list[tuple[int, int, int, int]] = []
    for g, ku in chosen:
        if g.kind != "heads" or g.heads is None:
            continue
        h = g.heads
        new_h = h.num_heads // g.units * int(ku.numel())
        new_kv = h.num_kv_heads // g.units * int(ku.numel())
        try:
            attn = model.get_submodule(h.module) if h.module else model
        except AttributeError:
            notes.append(f"attention module {h.module!r} not found; its head counts were not updated")
            continue
        changed = update_attention_attrs(
            attn, old_heads=h.num_heads, old_kv=h.num_kv_heads, new_heads=new_h, new_kv=new_kv, head_dim=h.head_dim, name=h.module
        )
        if isinstance(attn, nn.MultiheadAttention):  # its stock forward cannot run fewer heads: swap the class
            changed.update(slim_multihead_attention(attn, ku.tolist(), original_num_heads=h.num_heads))
            classes[h.module] = class_name(SlimMultiheadAttention)
            notes.append(
                f"{h.module}: nn.MultiheadAttention became graphprune.layers.SlimMultiheadAttention "
                f"({h.num_heads} -> {new_h} heads); returned attention weights average over the kept heads"
            )
        if changed:
            module_attrs.setdefault(h.module, {}).update(changed)
        changes.append((h.num_heads, h.num_kv_heads, new_h, new_kv))
        records[g.id].heads = {**(records[g.id].heads or {}), "num_heads_after": new_h, "num_kv_heads_after": new_kv}
    return changes
