"""Stage ``structured``: physically remove channels / heads / FFN neurons / hidden size.

Runs :func:`graphprune.structured.prune.prune_structured` with the config's structured patterns and
include/exclude globs on the working copy (in place), and puts the per-group records, the
architecture delta and the notes into the report. The element-wise stages that follow see the
shrunk model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.structured.prune import prune_structured

__all__ = ["ShrinkReport", "shrink_stage"]


@dataclass(frozen=True)
class ShrinkReport:
    groups_pruned: int
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        return {"groups_pruned": self.groups_pruned, "params_before": self.params_before, "params_after": self.params_after}


@register_pass("structured", mutates=("structure",))
def shrink_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Shrink the copy by the config's structured patterns; records, delta and notes go to the report."""
    cfg = ctx.config
    res = prune_structured(
        module, ctx.example_inputs, cfg.structured_patterns, include=cfg.include, exclude=cfg.exclude, progress=ctx.progress
    )
    ctx.report.structured = [g.to_dict() for g in res.groups]
    ctx.report.notes.append(f"structured: {res.summary()}")
    ctx.report.notes.extend(f"structured: {n}" for n in res.notes)
    ctx.report.decisions.extend(res.decisions)
    ctx.artifacts["structured_delta"] = res.delta
    ctx.artifacts["shrunk_from"] = {
        t: tuple(shape) for t, shape in res.original_shapes.items() if list(shape) != res.delta["tensors"].get(t, shape)
    }
    pruned = sum(g.pruned for g in res.groups)
    return PassResult(res.model, modified=pruned > 0, report=ShrinkReport(pruned, res.params_before, res.params_after))
