"""Planning for :func:`graphprune.structured.prune_structured`: pattern checks, which pattern a
group gets, how many units it keeps, and the kept indices of every tensor axis.

Pure functions of the group analysis and the patterns; the only one that reads the model is
:func:`_build_keep` (tensor lengths). Nothing here modifies the model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graphprune.analysis.groups import ChannelGroup
from graphprune.config import FFN, STRUCTURED_TYPES, Channels, Heads, Hidden
from graphprune.errors import ConfigError
from graphprune.passes.fx.remove_channels import get_tensor
from graphprune.sparsity import structured as S

if TYPE_CHECKING:
    from graphprune.structured import StructuredPattern


def _validate_patterns(patterns: Sequence[Any]) -> dict[type, Any]:
    """{pattern class: pattern} after the checks."""
    if isinstance(patterns, STRUCTURED_TYPES):
        patterns = (patterns,)
    found: dict[type, Any] = {}
    for p in patterns:
        if not isinstance(p, STRUCTURED_TYPES):
            raise ConfigError(f"structured patterns must be Channels, Heads, FFN or Hidden objects, got {p!r}")
        ratio = p.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 <= ratio < 1:
            raise ConfigError(f"{type(p).__name__}.ratio must be in [0, 1) (the fraction removed), got {ratio!r}")
        if type(p) in found:
            raise ConfigError(f"structured patterns name {type(p).__name__} twice")
        found[type(p)] = p
    return found



def _matches(name: str, globs: Sequence[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, g) for g in globs)



def _selected(group: ChannelGroup, include: Sequence[str], exclude: Sequence[str]) -> bool:
    names = {group.name} | {p.module for p in group.producers if p.module}
    names |= {m.target.rpartition(".")[0] for m in group.producer_members}
    if include and not any(_matches(n, include) for n in names):
        return False
    return not any(_matches(n, exclude) for n in names)



def _pattern_for(g: ChannelGroup, pats: dict[type, Any]) -> StructuredPattern | None:
    """Heads -> attention groups; FFN (else Channels) -> FFN groups; Hidden -> RMSNorm residual streams
    (only when asked for by name); Channels -> every other group."""
    if g.kind == "heads":
        return pats.get(Heads)
    if g.kind == "hidden":
        return pats.get(Hidden)
    if g.kind == "ffn":
        return pats.get(FFN, pats.get(Channels))
    return pats.get(Channels)



def group_key(g: ChannelGroup) -> str:
    """A name for a group that survives pruning (used by iterative schedules)."""
    first = g.producer_members[0].target if g.producer_members else g.members[0].target
    return f"{g.kind}:{g.name}:{first}"



def _keep_units(g: ChannelGroup, pat: StructuredPattern, base_units: int | None) -> int:
    units = base_units or g.units
    if isinstance(pat, Heads):
        assert g.heads is not None
        per_unit = g.heads.num_heads // g.units
        n = S.heads_keep_units(units * per_unit, per_unit, units, pat.ratio, min_heads=pat.min_heads)
    else:
        per = g.channels // g.units
        n = S.keep_count(units, pat.ratio, round_to=pat.round_to if per == 1 else 1, minimum=1)
    return min(n, g.units)



def _build_keep(model: nn.Module, chosen: list[tuple[ChannelGroup, torch.Tensor]]) -> dict[tuple[str, int], torch.Tensor]:
    """Per (tensor, axis): the kept indices, merging every group's range of that axis."""
    pieces: dict[tuple[str, int], dict[int, tuple[int, torch.Tensor]]] = defaultdict(dict)
    for g, ku in chosen:
        for m in g.members:
            idx = S.unit_indices(ku, g.units, m.size) + m.offset
            pieces[(m.target, m.axis)][m.offset] = (m.size, idx)
    keep: dict[tuple[str, int], torch.Tensor] = {}
    for (target, axis), ranges in pieces.items():
        length = get_tensor(model, target).shape[axis]
        parts: list[torch.Tensor] = []
        pos = 0
        for off in sorted(ranges):
            size, idx = ranges[off]
            if off > pos:
                parts.append(torch.arange(pos, off))
            parts.append(idx)
            pos = off + size
        if pos < length:
            parts.append(torch.arange(pos, length))
        keep[(target, axis)] = torch.cat(parts).to(torch.long)
    return keep
