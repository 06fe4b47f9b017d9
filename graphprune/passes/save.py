"""Stage ``save``: the pruned module as ``pruned.pt2`` (``torch.export.save``) in ``ctx.output_dir``, and,
after structured pruning, as ``delta.json`` + ``model.safetensors`` (:func:`graphprune.serialize.save_pruned`:
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

from graphprune._io import atomic_write
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
    if ctx.output_dir is None:
        return PassResult(module, modified=False, report=SaveReport(None, "no output directory"))
    path = ctx.output_dir / PT2_NAME
    delta_path = None
    delta = ctx.artifacts.get("structured_delta")
    if delta is not None and not isinstance(module, torch.jit.ScriptModule):
        from graphprune.serialize import DELTA_FILE, WEIGHTS_FILE, save_pruned

        save_pruned(module, ctx.output_dir, delta)
        delta_path = str(ctx.output_dir / DELTA_FILE)
        ctx.report.outputs["delta"] = delta_path
        ctx.report.outputs["weights"] = str(ctx.output_dir / WEIGHTS_FILE)
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
        return PassResult(module, modified=False, report=SaveReport(None, why, delta_path))
    atomic_write(path, lambda p: torch.export.save(ep, str(p)))
    ctx.report.outputs["pt2"] = str(path)
    return PassResult(module, modified=False, report=SaveReport(str(path), delta=delta_path))
