"""Step 3 of structured pruning, *choose*: how many units each candidate group keeps and which.

Per-layer scope: each group keeps ``keep_count(units, ratio)`` units (rounded to ``round_to`` channels
where a unit is one channel; whole KV groups for GQA heads). Global scope (``Channels(scope="global")``):
one threshold over the normalized scores of every global candidate. With ``base_units`` (iterative
schedules) the ratio is a fraction of the ORIGINAL unit count. The units with the highest scores are
kept; a group that would keep every unit after rounding is left dense (``too_small``), one that would
keep none raises WeightError.

Fills the groups' records; changes no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from graphprune.analysis.groups import ChannelGroup
from graphprune.config import Channels, Heads, StructuredPattern
from graphprune.errors import WeightError
from graphprune.report import SkipReason
from graphprune.sparsity import structured as S
from graphprune.structured.plan import GroupPlan, group_key
from graphprune.structured.records import group_decision, importance_summary

__all__ = ["choose_units", "keep_units"]


def keep_units(g: ChannelGroup, pat: StructuredPattern, base_units: int | None) -> int:
    """Units a group keeps under a per-layer pattern."""
    units = base_units or g.units
    if isinstance(pat, Heads):
        if g.heads is None:
            raise WeightError(f"group {g.name} is matched to heads but carries no head information")
        per_unit = g.heads.num_heads // g.units
        n = S.heads_keep_units(units * per_unit, per_unit, units, pat.ratio, min_heads=pat.min_heads)
    else:
        per = g.channels // g.units
        n = S.keep_count(units, pat.ratio, round_to=pat.round_to if per == 1 else 1, minimum=1)
    return min(n, g.units)


def _global_counts(
    candidates: Sequence[tuple[ChannelGroup, StructuredPattern]],
    scores: Mapping[int, torch.Tensor],
    ch: Channels,
    base_units: Mapping[str, int] | None,
) -> dict[int, int]:
    gmap = {g.id: g for g, p in candidates if isinstance(p, Channels) and p.scope == "global"}
    ratio = ch.ratio
    if base_units:
        orig = sum(base_units.get(group_key(g), g.units) for g in gmap.values())
        cur = sum(g.units for g in gmap.values())
        ratio = max(0.0, 1.0 - (1.0 - ch.ratio) * orig / max(1, cur))
    rt = {i: (ch.round_to if g.channels == g.units else 1) for i, g in gmap.items()}
    return S.global_keep_counts({i: scores[i] for i in gmap}, ratio, round_to=rt)


def choose_units(
    model: torch.nn.Module,
    plan: GroupPlan,
    scores: Mapping[int, torch.Tensor],
    *,
    base_units: Mapping[str, int] | None = None,
) -> list[tuple[ChannelGroup, torch.Tensor]]:
    """(group, kept unit indices) for every candidate that loses units; records and decisions updated."""
    counts: dict[int, int] = {}
    global_pat: Channels | None = None
    for g, p in plan.candidates:
        if isinstance(p, Channels) and p.scope == "global":
            global_pat = p
        else:
            counts[g.id] = keep_units(g, p, (base_units or {}).get(group_key(g)))
    if global_pat is not None:
        counts.update(_global_counts(plan.candidates, scores, global_pat, base_units))
    for g, _ in plan.candidates:
        if counts[g.id] < 1:
            raise WeightError(
                f"pruning would leave layer {g.name} with zero {'heads' if g.kind == 'heads' else 'channels'} "
                f"(all {g.units} units ranked below the global threshold); lower the ratio or use scope='layer'"
            )
    chosen: list[tuple[ChannelGroup, torch.Tensor]] = []
    for g, p in plan.candidates:
        rec = plan.records[g.id]
        ku = S.select_top(scores[g.id], counts[g.id])
        rec.importance = importance_summary(scores[g.id], ku)
        if ku.numel() >= g.units:
            rec.reason = SkipReason.TOO_SMALL
            rec.message = f"{p} removes nothing from {g.units} units after rounding"
            plan.decisions.append(group_decision(model, g, rec))
            continue
        chosen.append((g, ku))
        rec.pruned = True
        rec.units_after = int(ku.numel())
        rec.channels_after = g.channels // g.units * int(ku.numel())
        rec.removed_units = sorted(set(range(g.units)) - set(ku.tolist()))
    return chosen
