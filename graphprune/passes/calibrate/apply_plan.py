"""Pass ``apply-plan``: a saved training-side :class:`~graphprune.plan.Plan` instead of computed masks.

IR: the working ``nn.Module``. Pre: ``ctx.sites`` / ``ctx.decisions`` / ``ctx.patterns`` from compile's
decide step and a plan (``Plan.load(folder)``: ASP, movement, one-shot). The plan is checked against
the model first — a layer the model lacks, a mask of another shape, or a mask computed along another
K axis than compile's is an :class:`~graphprune.errors.InputError` naming the layer — before any
weight is touched. Post: for every plan site ``ctx.masks[param]`` is its mask, its ``values``
(SparseGPT plans) are written into the weight, ``ctx.patterns[param]`` is the pattern the mask
actually has (N:M when the mask is N:M along K in the model's layout — what the audit then checks —,
else unstructured at the mask's sparsity) and its decision says pruned "from plan". Sites compile
would prune but the plan does not name stay dense (their decision says so).

A plan site carrying a K permutation (``prune_oneshot(permutation=True)``) is N:M only in permuted
order; compile does not fold per-layer permutations, so such a site is audited as unstructured
and the report notes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphprune import sparsity
from graphprune._module_tensors import get_tensor
from graphprune.config import ElementPattern, SemiStructured, Unstructured
from graphprune.errors import InputError
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.plan import Plan
from graphprune.report import Decision, SkipReason

__all__ = ["NOT_IN_PLAN", "PlanOptions", "PlanReport", "apply_plan", "check_plan", "skip_reason"]

NOT_IN_PLAN = SkipReason.NOT_IN_PLAN.value  # the skip reason of sites compile would prune that the plan does not name


def skip_reason(value: str) -> SkipReason:
    """``SkipReason(value)``."""
    return SkipReason(value)


@dataclass(frozen=True)
class PlanOptions:
    """Options of the ``apply-plan`` pass: the plan (``Plan.load(folder)``; CLI ``--plan FOLDER``)."""

    plan: Plan


@dataclass(frozen=True)
class PlanReport:
    sites: int
    with_values: int
    meta: dict[str, Any]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"sites": self.sites, "with_values": self.with_values, "meta": self.meta, "notes": list(self.notes)}


def check_plan(plan: Plan, module: nn.Module, ctx: PassContext | None = None) -> None:
    """InputError unless every plan site names a weight of ``module`` with the mask's shape (and, with
    ``ctx``, compile's K axis for it); the message names the layers."""
    if not isinstance(plan, Plan):
        raise InputError(f"plan must be a graphprune.plan.Plan (Plan.load(folder)), got {type(plan).__name__}")
    if not plan.sites:
        raise InputError("the plan has no sites: nothing to apply")
    plan.check(module)
    if ctx is not None:
        bad = [
            f"{s.param} (plan K axis {s.k_axis}, compile's {ctx.sites[s.param].k_axis})"
            for s in plan.sites.values()
            if s.param in ctx.sites and ctx.sites[s.param].k_axis != s.k_axis
        ]
        if bad:
            raise InputError(f"the plan computed masks along another reduction axis than compile uses: {', '.join(bad)}")
    for s in plan.sites.values():
        if s.values is not None and not bool(torch.isfinite(s.values.float()).all()):
            raise InputError(f"the plan's values for {s.param} contain NaN/Inf")


def _pattern_of(mask: torch.Tensor, k_axis: int, wanted: ElementPattern | None) -> ElementPattern:
    cands = [wanted] if isinstance(wanted, SemiStructured) else []
    cands += [SemiStructured(n=2, m=4), SemiStructured(n=4, m=8)]
    for p in cands:
        if isinstance(p, SemiStructured) and mask.shape[k_axis] % p.m == 0:
            if sparsity.check_nm(mask, p.n, p.m, axis=k_axis).ok and float(mask.float().mean()) == p.n / p.m:
                return p
    return Unstructured(sparsity=min(1.0 - float(mask.float().mean()), 0.999999))


@register_pass("apply-plan", mutates=("weights",), options=PlanOptions)
def apply_plan(module: nn.Module, options: PlanOptions, ctx: PassContext) -> PassResult:
    """Apply a saved training-side plan (masks and SparseGPT values) instead of computing masks."""
    plan = options.plan
    check_plan(plan, module, ctx)
    notes: list[str] = []
    planned = set(plan.sites)
    for name in list(ctx.patterns):
        if name not in planned:
            del ctx.patterns[name]
            d = ctx.decisions[name]
            d.pruned, d.pattern = False, None
            d.reason = skip_reason(NOT_IN_PLAN)
            d.message = f"layer {d.module} ({name}) is not in the plan: left dense"
    with torch.no_grad():
        for s in plan.sites.values():
            w = get_tensor(module, s.param)
            dense_abs = float(w.detach().abs().sum(dtype=torch.float64))
            kept = float((w.detach().abs() * s.mask.to(w.device)).sum(dtype=torch.float64))
            if s.values is not None:
                w.copy_(s.values.to(device=w.device, dtype=w.dtype))
            mask = s.mask.to(w.device)
            w.mul_(mask.to(w.dtype))
            ctx.masks[s.param] = mask
            pattern = _pattern_of(s.mask, s.k_axis, ctx.patterns.get(s.param) or ctx.config.element_pattern)
            if s.perm is not None:
                notes.append(f"{s.param}: the plan's N:M holds in a permuted K order compile does not fold; audited as unstructured")
                pattern = Unstructured(sparsity=min(s.sparsity, 0.999999))
            ctx.patterns[s.param] = pattern
            found = ctx.decisions.get(s.param)
            if found is not None:
                d = found
            else:
                site = ctx.sites.get(s.param)
                d = Decision(
                    param=s.param,
                    module=s.module,
                    op=site.op if site else "unknown",
                    shape=tuple(w.shape),
                    k_axis=s.k_axis,
                    pruned=True,
                    flops=site.flops if site else 0,
                    numel=w.numel(),
                )
                ctx.decisions[s.param] = d
                ctx.report.decisions.append(d)
            d.pruned, d.reason = True, None
            d.pattern = str(pattern)
            d.message = f"from plan ({s.pattern or 'no pattern name'})"
            d.zeros = int((w == 0).sum())
            d.kept_magnitude = kept / dense_abs if dense_abs > 0 else 1.0
    report = PlanReport(
        sites=len(plan.sites),
        with_values=sum(s.values is not None for s in plan.sites.values()),
        meta=dict(plan.meta),
        notes=tuple(notes),
    )
    return PassResult(module, modified=True, report=report)
