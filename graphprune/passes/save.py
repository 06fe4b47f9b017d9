"""Stage ``save``: the pruned module as ``pruned.pt2`` (``torch.export.save``) in ``ctx.output_dir``.

A module torch.export cannot re-export (TorchScript, or a forward it refuses) is not saved; the report
says so in a note rather than failing the run (the ONNX is the deployable output).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphprune._io import atomic_write
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["SaveReport", "save_stage"]

log = logging.getLogger(__name__)

PT2_NAME = "pruned.pt2"


@dataclass(frozen=True)
class SaveReport:
    pt2: str | None
    why_not: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"pt2": self.pt2, "why_not": self.why_not}


@register_pass("save")
def save_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Write the pruned module as pruned.pt2 (torch.export), or say in a note why it could not be."""
    if ctx.output_dir is None:
        return PassResult(module, modified=False, report=SaveReport(None, "no output directory"))
    path = ctx.output_dir / PT2_NAME
    why = ""
    if isinstance(module, torch.jit.ScriptModule):
        why = "a TorchScript module cannot be re-exported with torch.export"
    else:
        try:
            ep = torch.export.export(module, ctx.example_inputs, strict=False)
        except Exception as e:
            why = f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if why:
        log.warning("pruned.pt2 not written: %s", why)
        ctx.report.notes.append(f"pruned.pt2 not written: {why[:300]}")
        return PassResult(module, modified=False, report=SaveReport(None, why))
    atomic_write(path, lambda p: torch.export.save(ep, str(p)))
    ctx.report.outputs["pt2"] = str(path)
    return PassResult(module, modified=False, report=SaveReport(str(path)))
