"""The read-only stages that decide what to prune: ``capture`` -> ``find`` -> ``decide``.

None of them changes the module; they fill ``ctx`` and the report.

- ``capture``: run the model once on the example inputs (a model that fails here gets a one-line
  UnsupportedModelError saying to pass inputs of the right shapes), then capture it as a graph
  (:func:`graphprune.capture.capture`: torch.export, then torch.fx, then a module walk);
- ``find``: every prunable weight of the capture (:func:`graphprune.analysis.find_sites.find_sites`),
  with whether it is floating point; ops no rule knows are kept as ``ctx.unsupported``;
- ``decide``: every site gets one Decision (:func:`graphprune.analysis.decide.decide`): pruned with a
  pattern or skipped with a reason, and unknown ops get ``unsupported_op``.

``graphprune inspect`` is the compile pipeline stopped after ``decide``, so both decide alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphprune._module_tensors import get_tensor
from graphprune.analysis.decide import decide, unsupported_decision
from graphprune.analysis.find_sites import find_sites
from graphprune.capture import capture
from graphprune.errors import UnsupportedModelError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["CaptureStageReport", "DecideReport", "FindReport", "capture_stage", "decide_stage", "find_stage"]


@dataclass(frozen=True)
class CaptureStageReport:
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}


@register_pass("capture")
def capture_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Run the model on the example inputs, then capture it as a graph (export, fx, or a module walk)."""
    name = ctx.report.model or type(module).__name__
    try:
        with torch.no_grad():
            module(*ctx.example_inputs)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise UnsupportedModelError(
            f"{name} fails on the given example inputs ({type(e).__name__}: {first}); "
            "pass inputs of the shapes and dtypes its forward expects (CLI: --input-shape)"
        ) from e
    cap = capture(module, ctx.example_inputs, progress=ctx.progress)
    ctx.capture = cap
    ctx.report.capture.update(cap.record())
    if cap.method == "walk" and ctx.config.structured_patterns:
        ctx.report.notes.append("structured pruning needs a graph; the module walk found none")
    return PassResult(module, modified=False, report=CaptureStageReport(cap.method))


@dataclass(frozen=True)
class FindReport:
    sites: int
    unsupported: int

    def to_dict(self) -> dict[str, Any]:
        return {"sites": self.sites, "unsupported": self.unsupported}


@register_pass("find")
def find_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Find every prunable weight in the capture, with its op, reduction axis K and FLOPs."""
    if ctx.capture is None:
        raise UnsupportedModelError("stage 'find' needs the 'capture' stage to run first")
    scan = find_sites(ctx.capture)
    for site in scan.sites:
        site.extra.setdefault("not_floating", not get_tensor(module, site.param).is_floating_point())
        ctx.sites[site.param] = site
    ctx.unsupported = list(scan.unsupported)
    if not scan.sites and ctx.capture.method == "walk":
        tried = "; ".join(f"{t['method']}: {t['error']}" for t in ctx.capture.tried if not t["ok"])
        raise UnsupportedModelError(
            f"no capture method could find prunable layers in {ctx.report.model or type(module).__name__}: {tried}; "
            "the module walk knows only torch.nn Linear/Conv/MultiheadAttention and transformers Conv1D"
        )
    return PassResult(module, modified=False, report=FindReport(len(scan.sites), len(scan.unsupported)))


@dataclass(frozen=True)
class DecideReport:
    pruned: int
    skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "skipped": self.skipped}


@register_pass("decide")
def decide_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Give every site one Decision: pruned with a pattern, or skipped with a reason."""
    shrunk = ctx.artifacts.get("shrunk_from", {})
    for name, site in ctx.sites.items():
        decision, pattern = decide(site, ctx.config)
        decision.shrunk_from = shrunk.get(name)
        ctx.decisions[name] = decision
        if pattern is not None:
            ctx.patterns[name] = pattern
    ctx.report.decisions += list(ctx.decisions.values()) + [
        unsupported_decision(name, tuple(get_tensor(module, name).shape), why) for name, why in ctx.unsupported
    ]
    return PassResult(module, modified=False, report=DecideReport(len(ctx.patterns), len(ctx.decisions) - len(ctx.patterns)))
