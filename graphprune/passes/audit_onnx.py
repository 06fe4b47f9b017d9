"""Stage ``audit``: every pruned site is found in the exported ONNX with its own pattern intact.

Initializers are mapped back to parameters through the export record (``initializer_sources``: by
identity, view or provenance, through renaming, transposes and BatchNorm folding; never by name);
each distinct N:M pattern is audited on its own initializers along TensorRT's axis, unstructured
sites must carry at least their zeros (:func:`graphprune.runtime.audit.audit_compiled`, weights read
from disk one at a time). A violation or a pruned layer missing from the
ONNX is a ValidationError (exit 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from graphprune.errors import ValidationError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["AuditStageReport", "audit_stage"]


@dataclass(frozen=True)
class AuditStageReport:
    ok: bool
    matched: int
    violations: int
    not_found: int

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "matched": self.matched, "violations": self.violations, "not_found": self.not_found}


@register_pass("audit")
def audit_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Check every pruned site's pattern in the exported ONNX's initializers, along TensorRT's axis."""
    from graphprune.runtime.audit import audit_compiled

    path = ctx.artifacts["onnx_path"]
    rec = ctx.artifacts["export"]
    zeros = {n: ctx.decisions[n].zeros for n in ctx.patterns}
    aud = audit_compiled(path, ctx.patterns, zeros, rec.initializer_sources, progress=ctx.progress)
    ctx.report.audit = aud
    if not aud["ok"]:
        raise ValidationError(f"ONNX audit failed for {path}: {aud['summary']}")
    return PassResult(
        module, modified=False, report=AuditStageReport(aud["ok"], aud["matched"], len(aud["violations"]), len(aud["not_found"]))
    )
