"""Step 1 of structured pruning, *plan*: which pattern each coupled group gets, which groups are
candidates, and (once units are chosen) the kept indices of every tensor axis.

Pattern matching: ``Heads`` -> attention-head groups; ``FFN`` (else ``Channels``) -> FFN groups;
``Hidden`` -> residual streams (only when asked for by name); ``Channels`` -> every other group.
A group with a pattern is a candidate unless the analysis found a blocker (it cannot be sliced) or the
include/exclude globs leave it out; each non-candidate gets a record with the reason and, where it had
a pattern, a Decision.

Pure functions of the group analysis and the patterns; :func:`build_keep` reads tensor lengths.
Nothing here modifies the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from graphprune._module_tensors import get_tensor
from graphprune.analysis.groups import ChannelGroup, GroupAnalysis
from graphprune.config import FFN, STRUCTURED_TYPES, Channels, Heads, Hidden, StructuredPattern
from graphprune.errors import ConfigError
from graphprune.report import Decision, SkipReason
from graphprune.selector import Selector
from graphprune.sparsity import structured as S
from graphprune.structured.records import GroupRecord, blocked_message, group_decision, new_record

__all__ = ["GROUP_WORDS", "GroupPlan", "build_keep", "group_key", "keep_json", "pattern_for", "patterns_by_type", "plan_groups"]

GROUP_WORDS: dict[type, str] = {
    Heads: "attention-head",
    FFN: "FFN or Linear-channel",
    Hidden: "residual-stream (hidden size)",
    Channels: "channel",
}


def patterns_by_type(patterns: StructuredPattern | Sequence[StructuredPattern]) -> dict[type, StructuredPattern]:
    """{pattern class: pattern}: structured pattern objects only, no class twice. The values are checked by
    the pattern dataclass's own validation (run again here: a frozen dataclass can still be edited
    with ``object.__setattr__``), the one place that rule is written."""
    if isinstance(patterns, STRUCTURED_TYPES):
        patterns = (patterns,)
    found: dict[type, StructuredPattern] = {}
    for p in patterns:
        if not isinstance(p, STRUCTURED_TYPES):
            raise ConfigError(f"structured patterns must be Channels, Heads, FFN or Hidden objects, got {p!r}")
        p.__post_init__()
        if type(p) in found:
            raise ConfigError(f"structured patterns name {type(p).__name__} twice")
        found[type(p)] = p
    return found


def pattern_for(g: ChannelGroup, pats: dict[type, StructuredPattern]) -> StructuredPattern | None:
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


def _names(g: ChannelGroup) -> set[str]:
    names = {g.name} | {p.module for p in g.producers if p.module}
    return names | {m.target.rpartition(".")[0] for m in g.producer_members}


@dataclass
class GroupPlan:
    """Records of every group, the Decisions of groups left dense, and the candidates with their pattern."""

    records: dict[int, GroupRecord] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    candidates: list[tuple[ChannelGroup, StructuredPattern]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_groups(
    model: nn.Module, analysis: GroupAnalysis, pats: dict[type, StructuredPattern], selector: Selector
) -> GroupPlan:
    """Match every group of ``analysis`` to a pattern and say which are candidates (see the module docstring)."""
    plan = GroupPlan()
    for g in analysis.groups:
        pat = pattern_for(g, pats)
        rec = new_record(g, str(pat) if pat is not None else None)
        plan.records[g.id] = rec
        if pat is None:
            rec.message = "no pattern for this kind of group"
            if g.kind == "hidden":
                rec.message = "a residual stream (the hidden size): only the hidden:R pattern prunes it"
                if g.blockers:
                    rec.message += f", and it cannot: {g.blockers[0].reason} (node {g.blockers[0].node})"
            continue
        if g.blockers:
            b = g.blockers[0]
            rec.reason, rec.node, rec.source = SkipReason.UNSLICEABLE_GROUP, b.node, b.source
            rec.message = blocked_message(g)
            plan.decisions.append(group_decision(model, g, rec))
        elif not selector.selects(*_names(g)):
            rec.reason, rec.message = SkipReason.EXCLUDED_BY_FILTER, "excluded by the include/exclude globs"
            plan.decisions.append(group_decision(model, g, rec))
        else:
            plan.candidates.append((g, pat))
    for cls, pat in pats.items():  # a pattern that matches no group at all is said, not silently ignored
        if not any(pattern_for(g, pats) is pat for g in analysis.groups):
            plan.notes.append(f"{pat}: {type(model).__name__} has no {GROUP_WORDS[cls]} group, so this pattern removes nothing")
    return plan


def build_keep(model: nn.Module, chosen: Sequence[tuple[ChannelGroup, torch.Tensor]]) -> dict[tuple[str, int], torch.Tensor]:
    """Per (tensor, axis): the kept indices, merging every chosen group's range of that axis."""
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


def keep_json(keep: dict[tuple[str, int], torch.Tensor]) -> dict[str, dict[int, list[int]]]:
    out: dict[str, dict[int, list[int]]] = {}
    for (t, a), idx in keep.items():
        out.setdefault(t, {})[a] = idx.tolist()
    return out

