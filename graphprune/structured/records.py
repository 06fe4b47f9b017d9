"""What structured pruning records: one :class:`GroupRecord` per coupled group, the
:class:`StructuredResult` of a run, and the :class:`~graphprune.report.Decision` of a group left dense.

Nothing here changes a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graphprune._module_tensors import get_tensor
from graphprune.analysis.groups import ChannelGroup
from graphprune.report import Decision, SkipReason

__all__ = ["GroupRecord", "StructuredResult", "blocked_message", "group_decision", "new_record"]


@dataclass
class GroupRecord:
    """What happened to one coupled group."""

    id: int
    kind: str  # channels | ffn | heads | hidden
    name: str  # the layer (module of the first producer, or the attention module)
    members: list[str]  # "param_fqn:axis[offset:offset+size]"
    pattern: str | None
    pruned: bool
    units_before: int
    units_after: int
    channels_before: int
    channels_after: int
    removed_units: list[int] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)
    reason: SkipReason | None = None
    message: str = ""
    node: str | None = None
    source: str | None = None
    heads: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["reason"] = self.reason.value if self.reason else None
        return d


@dataclass
class StructuredResult:
    """The outcome of :func:`graphprune.structured.prune_structured`.

    ``delta``: the architecture delta (:mod:`graphprune.serialize` saves and reloads it); ``keep``:
    tensor fqn -> axis -> kept indices of the original axis; ``parity``: the shrunk model against the
    masked-equivalent dense model (None when not verified or nothing was removed).
    """

    model: nn.Module
    groups: list[GroupRecord]
    decisions: list[Decision]
    delta: dict[str, Any]
    keep: dict[str, dict[int, list[int]]]
    original_shapes: dict[str, list[int]]
    params_before: int
    params_after: int
    notes: list[str] = field(default_factory=list)
    parity: dict[str, Any] | None = None

    def masked_equivalent(self, original: nn.Module) -> nn.Module:
        """A copy of the dense ``original`` with the removed channels' weights zeroed."""
        from graphprune.structured.verify import make_masked_equivalent

        return make_masked_equivalent(original, self.keep)

    def summary(self) -> str:
        pruned = [g for g in self.groups if g.pruned]
        dense = [g for g in self.groups if not g.pruned and g.pattern]
        return (
            f"{len(pruned)} groups shrunk, {len(dense)} left dense; params {self.params_before:,} -> "
            f"{self.params_after:,} ({self.params_after / max(1, self.params_before):.1%})"
        )


def new_record(g: ChannelGroup, pattern: str | None) -> GroupRecord:
    """The record of a group before anything is decided about it."""
    heads = None
    if g.heads is not None:
        heads = {"num_heads": g.heads.num_heads, "num_kv_heads": g.heads.num_kv_heads, "head_dim": g.heads.head_dim}
    return GroupRecord(
        id=g.id,
        kind=g.kind,
        name=g.name,
        members=[f"{m.target}:{m.axis}[{m.offset}:{m.offset + m.size}]" for m in g.members],
        pattern=pattern,
        pruned=False,
        units_before=g.units,
        units_after=g.units,
        channels_before=g.channels,
        channels_after=g.channels,
        heads=heads,
    )


def importance_summary(s: torch.Tensor, kept: torch.Tensor) -> dict[str, float]:
    s = s.float()
    total = float(s.sum()) or 1.0
    return {
        "min": float(s.min()),
        "mean": float(s.mean()),
        "max": float(s.max()),
        "kept_share": float(s[kept].sum()) / total if kept.numel() else 0.0,
    }


def blocked_message(g: ChannelGroup) -> str:
    parts = [f"{b.reason} (node {b.node}{', ' + b.source if b.source else ''})" for b in g.blockers[:3]]
    more = f" and {len(g.blockers) - 3} more" if len(g.blockers) > 3 else ""
    return f"group {g.name} left dense: " + "; ".join(parts) + more


def group_decision(model: nn.Module, g: ChannelGroup, rec: GroupRecord) -> Decision:
    """The Decision of a group left dense (reported beside the element-wise decisions)."""
    first = g.producer_members[0] if g.producer_members else g.members[0]
    try:
        shape = tuple(get_tensor(model, first.target).shape)
    except KeyError:
        shape = ()
    return Decision(
        param=first.target,
        module=first.target.rpartition(".")[0],
        op=f"structured_{g.kind}",
        shape=shape,
        k_axis=first.axis,
        pruned=False,
        pattern=rec.pattern,
        reason=rec.reason,
        message=rec.message,
        source=rec.source,
    )
