"""Stage ``audit``: every pruned site is found in the exported ONNX with its own pattern intact.

Initializers are mapped back to parameters through the export record (``initializer_sources``: the
exporter renames transposed weights, e.g. ``val_9``, found by comparing values); each distinct N:M
pattern is audited on its own initializers along TensorRT's axis (:func:`graphprune.runtime.audit.audit_onnx`);
unstructured sites must carry at least their zeros. A violation or a pruned layer missing from the
ONNX is a ValidationError (exit 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from graphprune.config import SemiStructured
from graphprune.errors import ValidationError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["AuditStageReport", "audit_compiled", "audit_stage"]


@dataclass(frozen=True)
class AuditStageReport:
    ok: bool
    matched: int
    violations: int
    not_found: int

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "matched": self.matched, "violations": self.violations, "not_found": self.not_found}


def audit_compiled(onnx_path: Path, ctx: PassContext, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The audit record of ``onnx_path`` against the pruned sites of ``ctx`` (see the module docstring)."""
    from graphprune.runtime.audit import audit_onnx

    param_to_init: dict[str, str] = {}
    for init, info in sources.items():
        if info.get("param"):
            param_to_init.setdefault(info["param"], init)
    for name in ctx.patterns:
        param_to_init.setdefault(name, name)  # initializers that keep the parameter's name
    by_pattern: dict[tuple[int, int] | None, list[str]] = {}
    for name, pat in ctx.patterns.items():
        key = (pat.n, pat.m) if isinstance(pat, SemiStructured) else None
        by_pattern.setdefault(key, []).append(name)
    base = audit_onnx(onnx_path)
    layers = {layer.initializer: layer for layer in base.layers}
    not_found = sorted(n for n in ctx.patterns if param_to_init[n] not in layers)
    violations: list[str] = []
    checked = 0
    for key, names in by_pattern.items():
        present = [n for n in names if param_to_init[n] in layers]
        if key is None:
            for n in present:
                checked += 1
                if layers[param_to_init[n]].zeros < ctx.decisions[n].zeros:
                    violations.append(n)
            continue
        rep = audit_onnx(onnx_path, n=key[0], m=key[1], expect=[param_to_init[n] for n in present])
        nm_ok = {layer.initializer: layer.nm_ok for layer in rep.layers}
        for n in present:
            checked += 1
            if not nm_ok.get(param_to_init[n], False):
                violations.append(n)
    ok = not violations and not not_found
    pats = ", ".join(sorted({str(p) for p in ctx.patterns.values()})) or "none"
    summary = (
        f"{len(layers)} weights in the ONNX; {checked}/{len(ctx.patterns)} pruned layers found; "
        f"pattern ({pats}) holds on the TensorRT axis for {checked - len(violations)}/{checked}"
        + (f"; violations in {violations[:5]}" if violations else "")
        + (f"; not found: {not_found[:5]}" if not_found else "")
    )
    return {
        "ok": ok,
        "summary": summary,
        "matched": checked,
        "violations": violations,
        "not_found": not_found,
        "initializer_of": param_to_init,
        "layers": [layer.to_dict() for layer in base.layers],
    }


@register_pass("audit")
def audit_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Check every pruned site's pattern in the exported ONNX's initializers, along TensorRT's axis."""
    path = ctx.artifacts["onnx_path"]
    rec = ctx.artifacts["export"]
    aud = audit_compiled(path, ctx, rec.initializer_sources)
    ctx.report.audit = aud
    if not aud["ok"]:
        raise ValidationError(f"ONNX audit failed for {path}: {aud['summary']}")
    return PassResult(
        module, modified=False, report=AuditStageReport(aud["ok"], aud["matched"], len(aud["violations"]), len(aud["not_found"]))
    )
