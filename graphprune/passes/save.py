"""Stage ``save``: the pruned module as ``pruned.pt2`` (``torch.export.save``) in the run's (staged) output folder, and,
after structured pruning, as ``delta.json`` + ``model.safetensors`` (:func:`graphprune.checkpoint.delta.save_pruned`:
the architecture delta and the weights, no pickle), so ``graphprune.load(folder, constructor)`` rebuilds
the shrunk model from the dense constructor for further editing or training.

A module torch.export cannot re-export (TorchScript, or a forward it refuses) gets no ``pruned.pt2``;
the report says so in a note rather than failing the run (the ONNX is the deployable output).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphprune.io.pt2 import write_pt2
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["SaveReport", "save_stage"]

log = logging.getLogger(__name__)

PT2_NAME = "pruned.pt2"


@dataclass(frozen=True)
class SaveReport:
    pt2: str | None
    why_not: str = ""
    delta: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"pt2": self.pt2, "why_not": self.why_not, "delta": self.delta}


@register_pass("save")
def save_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Write the pruned module as pruned.pt2 (torch.export), or say in a note why it could not be."""
    out = ctx.output
    if out is None:
        return PassResult(module, modified=False, report=SaveReport(None, "no output folder"))
    delta_path = None
    delta = ctx.artifacts.get("structured_delta")
    if delta is not None and not isinstance(module, torch.jit.ScriptModule):
        from graphprune.checkpoint.delta import DELTA_FILE, WEIGHTS_FILE, save_pruned

        save_pruned(module, out.path, delta)  # both names are output names, staged like the rest
        delta_path = str(out.final(DELTA_FILE))
        ctx.report.outputs["delta"] = delta_path
        ctx.report.outputs["weights"] = str(out.final(WEIGHTS_FILE))
    why = ""
    rec = ctx.artifacts.get("export")
    ep = getattr(rec, "exported_program", None)  # the export stage's program of this very (folded) model, dynamic batch
    if isinstance(module, torch.jit.ScriptModule):
        why = "a TorchScript module cannot be re-exported with torch.export"
    elif ep is None:
        try:
            ep = torch.export.export(module, ctx.example_inputs, strict=False)
        except Exception as e:
            why = f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if why or ep is None:
        why = why or "no program to save"
        log.warning("pruned.pt2 not written: %s", why)
        ctx.report.notes.append(f"pruned.pt2 not written: {why[:300]}")
        return PassResult(module, modified=False, report=SaveReport(None, why, delta_path))
    write_pt2(out.file(PT2_NAME), ep)  # a full disk is an OutputError, not a C++ abort
    final = str(out.final(PT2_NAME))
    ctx.report.outputs["pt2"] = final
    return PassResult(module, modified=False, report=SaveReport(final, delta=delta_path))
