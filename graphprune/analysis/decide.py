"""Give every candidate site a Decision: pruned with a pattern, or skipped with a reason.

Rules, in order (the first that applies wins):
1. include/exclude globs (``EXCLUDED_BY_FILTER``), op-type filter (``OP_TYPE_FILTERED``);
2. per-layer override to ``None`` (``EXCLUDED_BY_OVERRIDE``), no element-wise pattern (``NO_PATTERN``);
3. non-floating weight (``NOT_FLOATING``); weight shared by several modules or read by a
   non-prunable op too, e.g. an embedding tied to an output projection (``TIED_WEIGHT``, unless
   ``prune_tied``);
4. N:M whose reduction axis K is not a multiple of M, or 2-D N:M whose other extent is not
   (``K_NOT_DIVISIBLE``).
Parameters no supported op reads get ``UNSUPPORTED_OP``. Nothing is skipped silently.
"""

from __future__ import annotations

import math

from graphprune.analysis.sites import Site
from graphprune.config import CompileConfig, ElementPattern, SemiStructured
from graphprune.report import Decision, SkipReason


def op_type_of(site: Site) -> str:
    if site.op.startswith("conv_transpose"):
        return "conv_transpose"
    if site.op.startswith("conv"):
        return "conv"
    if site.op == "mha_in_proj":
        return "mha"
    return site.op  # linear, hf_conv1d, matmul


def decide(site: Site, config: CompileConfig) -> tuple[Decision, ElementPattern | None]:
    numel = math.prod(site.shape)
    d = Decision(
        param=site.param,
        module=site.module,
        op=site.op,
        shape=site.shape,
        k_axis=site.k_axis,
        pruned=False,
        flops=site.flops,
        numel=numel,
        source=site.source,
    )
    where = f"layer {site.module or '<root>'} ({site.param}, {site.op} {list(site.shape)})"

    def skip(reason: SkipReason, message: str) -> tuple[Decision, None]:
        d.reason = reason
        d.message = message
        return d, None

    if not config.selects(site.module, site.param):
        return skip(SkipReason.EXCLUDED_BY_FILTER, f"{where} is excluded by --include/--exclude")
    if config.op_types and op_type_of(site) not in config.op_types:
        return skip(SkipReason.OP_TYPE_FILTERED, f"{where}: op type {op_type_of(site)!r} is not in {list(config.op_types)}")
    pattern, glob = config.pattern_for(site.module)
    if pattern is None:
        if glob is not None:
            return skip(SkipReason.EXCLUDED_BY_OVERRIDE, f"{where} is left dense by override {glob!r}")
        return skip(SkipReason.NO_PATTERN, f"{where}: no element-wise pattern configured")
    if site.extra.get("not_floating"):
        return skip(SkipReason.NOT_FLOATING, f"{where}: weight is not floating point")
    other_uses = site.extra.get("other_uses")
    if (site.ties or other_uses) and not config.prune_tied:
        shared = ", ".join(site.ties) if site.ties else f"also read by {other_uses}"
        return skip(
            SkipReason.TIED_WEIGHT,
            f"{where} shares its weight ({shared}); pruning it would change every use — "
            "pass prune_tied=True (CLI --prune-tied) to prune it anyway",
        )
    if isinstance(pattern, SemiStructured):
        k = site.shape[site.k_axis]
        if k % pattern.m:
            return skip(
                SkipReason.K_NOT_DIVISIBLE,
                f"{where}: reduction axis K={k} (axis {site.k_axis}) is not divisible by M={pattern.m} "
                f"for {pattern}; layer left dense",
            )
        if pattern.method != "1d":
            rows = numel // k
            if rows % pattern.m:
                return skip(
                    SkipReason.K_NOT_DIVISIBLE,
                    f"{where}: {pattern} needs the non-K extent ({rows}) divisible by M={pattern.m}; layer left dense",
                )
    d.pruned = True
    d.pattern = str(pattern)
    return d, pattern


def unsupported_decision(param: str, shape: tuple[int, ...], why: str) -> Decision:
    return Decision(
        param=param,
        module=param.rpartition(".")[0],
        op="unsupported",
        shape=shape,
        k_axis=-1,
        pruned=False,
        reason=SkipReason.UNSUPPORTED_OP,
        message=f"{param} {list(shape)}: read by {why}; graphprune prunes GEMM/conv weights only",
        numel=math.prod(shape),
    )
