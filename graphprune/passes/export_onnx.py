"""Stage ``export``: the pruned module (folded form) to ONNX in the run's (staged) output folder.

:func:`graphprune.runtime.export.export_onnx` does the work (dynamo exporter, TorchScript exporter for
scripted modules, graphsurgeon cleanup, checker, atomic write). The export record (which exporter
ran, and which initializer came from which parameter, matched by value) is left in
``ctx.artifacts["export"]`` for the audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from graphprune.errors import OutputError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["ExportReport", "export_stage"]

ONNX_NAME = "model.onnx"


@dataclass(frozen=True)
class ExportReport:
    path: str
    exporter: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "exporter": self.exporter}


@register_pass("export")
def export_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Export the pruned (folded) module to ONNX and remember where each initializer came from."""
    from graphprune.runtime.export import export_onnx

    if ctx.output is None:
        raise OutputError("stage 'export' needs an output folder")
    path = ctx.output.file(ONNX_NAME)
    rec = export_onnx(module, ctx.example_inputs, path, opset=ctx.config.opset)
    ctx.artifacts["onnx_path"] = path  # the staged file, read by audit and parity
    ctx.artifacts["export"] = rec
    final = str(ctx.output.final(ONNX_NAME))
    ctx.report.outputs["onnx"] = final
    ctx.report.capture["onnx_exporter"] = rec.exporter
    return PassResult(module, modified=False, report=ExportReport(final, rec.exporter))
