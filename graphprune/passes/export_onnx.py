"""Stage ``export``: the pruned module (folded form) to ONNX in the run's (staged) output folder.

:func:`graphprune.runtime.export.export_onnx` does the work: the dynamo exporter, then the dynamo exporter
with decompositions relaxed, then the TorchScript exporter, each attempt recorded; dynamic batch (and the
config's dynamic axes) where the model allows; inputs and outputs named after the model's own; weights
beyond 512 MiB written tensor by tensor to ``model.onnx.data``. The export record (which exporter
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
    from graphprune.runtime.export import ExportOptions, export_onnx

    if ctx.output is None:
        raise OutputError("stage 'export' needs an output folder")
    opts = ExportOptions.from_config(ctx.config)
    path = ctx.output.file(ONNX_NAME)
    rec = export_onnx(
        module, ctx.example_inputs, path, opset=ctx.config.opset, input_names=ctx.artifacts.get("input_names") or None,
        dynamic=opts.dynamic_batch, dynamic_axes=opts.dynamic_axes, exporters=opts.exporters, progress=ctx.progress,
    )
    ctx.artifacts["onnx_path"] = path  # the staged file, read by audit and parity
    ctx.artifacts["export"] = rec
    final = str(ctx.output.final(ONNX_NAME))
    ctx.report.outputs["onnx"] = final
    ctx.report.capture["onnx_exporter"] = rec.exporter
    ctx.report.capture["onnx_export"] = rec.attempts
    ctx.report.capture["onnx_dynamic_axes"] = {k: {str(a): v for a, v in d.items()} for k, d in rec.dynamic_axes.items()}
    ctx.report.notes.extend(rec.notes)
    for data_file in rec.external_data:
        ctx.report.outputs["onnx_data"] = str(ctx.output.final(data_file))
    return PassResult(module, modified=False, report=ExportReport(final, rec.exporter))
