"""Stage ``parity``: the exported ONNX, run in onnxruntime (CPU), computes what the pruned module computes.

:func:`graphprune.runtime.ort.check_parity` runs both on the example inputs (and at a second batch size
where the ONNX has a dynamic batch) and compares every output under the one tolerance policy
(:mod:`graphprune.runtime.compare`; a float16/bfloat16 ONNX runs as a float32 copy in onnxruntime CPU,
compared with the dtype's tolerance, and the record says so). A mismatch is a ValidationError
(exit 6). This proves the *export*; how far pruning moved the model from the dense one is the
``fidelity`` stage's figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from graphprune.errors import ValidationError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["ParityReport", "parity_stage"]


@dataclass(frozen=True)
class ParityReport:
    ok: bool
    max_abs: float

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_abs": self.max_abs}


@register_pass("parity")
def parity_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Run the ONNX in onnxruntime and compare it with the pruned module on the example inputs."""
    from graphprune.runtime import ort

    path = ctx.artifacts["onnx_path"]
    stats = ort.check_parity(module, ctx.example_inputs, path, batch_sizes="auto", progress=ctx.progress)
    ctx.report.parity = stats.to_dict()
    if not stats.ok:
        raise ValidationError(f"ONNX {path} does not compute what the pruned model computes: {stats.summary()}")
    return PassResult(module, modified=False, report=ParityReport(stats.ok, float(stats.max_abs)))
