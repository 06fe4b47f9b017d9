"""Stage ``export``: the pruned module (folded form) to ONNX in ``ctx.output_dir``.

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

    if ctx.output_dir is None:
        raise OutputError("stage 'export' needs an output directory")
    path = ctx.output_dir / ONNX_NAME
    rec = export_onnx(module, ctx.example_inputs, path, opset=ctx.config.opset)
    ctx.artifacts["onnx_path"] = path
    ctx.artifacts["export"] = rec
    ctx.report.outputs["onnx"] = str(path)
    ctx.report.capture["onnx_exporter"] = rec.exporter
    return PassResult(module, modified=False, report=ExportReport(str(path), rec.exporter))
