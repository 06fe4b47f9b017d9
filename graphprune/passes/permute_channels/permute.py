"""Pass ``permute-channels``: permute coupled channels so N:M masks keep more weight magnitude, with
the dense function unchanged.

IR: an ``nn.Module`` that ``torch.export.export(strict=False)`` can capture. The pass reads the
coupled channel groups of :func:`graphprune.analysis.groups.find_groups` and permutes parameters
and buffers in place (``modified`` says whether any changed). Run it before masks are computed.

Maths. A group is a set of tensor axis ranges indexed by the same channels: the producers' output
rows (Linear/Conv weight rows, their bias), everything on the way (BatchNorm weight/bias/running
stats, ...) and the consumers' input columns. Reordering all of them by one permutation ``P`` leaves
every output unchanged: a consumer computes ``Σ_c W[:, c] h_c``, and its producers now emit
``h_{P(c)}`` into slot ``c`` while its columns are reordered the same way. Elementwise ops and
per-channel affine maps commute with ``P``. A consumer's N:M mask runs along K, so ``P`` changes
which weights share a group of M; :func:`graphprune.sparsity.search_permutation` picks ``P`` to
maximise the magnitude the N:M masks of all the group's N:M consumers keep (their ``|W|`` rows are
stacked over the shared K columns).

Which groups are permuted (and why the others are not; every N:M layer gets a record):

- the group has no blockers (a normalisation over the channels of a residual stream, the model
  output or input, an op the analysis does not know, ...): permuting a blocked group could change
  the outputs or their order;
- an attention-heads group is permuted only *inside* each head (one permutation of head_dim per
  KV group, applied to q/k/v rows and the output projection's columns; see ``_permute_search._search_heads``),
  and only with ``verify`` on: rotary embeddings pair channels inside a head, which the output check
  catches;
- every consumer's K range is one channel per unit (``size == units``) and starts and ends on a
  multiple of M (so no N:M group straddles two groups).

Post-conditions: outputs on the example inputs equal the unpermuted model's within
``tolerance_for`` (checked when ``verify``; on a mismatch every permutation is undone, then the
groups are re-applied one at a time and only those that keep the outputs are kept). A zero time
budget permutes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from graphprune._module_tensors import get_tensor
from graphprune.config import SemiStructured
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.passes.permute_channels.records import (
    GroupPermutation,
    LayerEfficacy,
    PermutationReport,
    PermuteChannelsConfig,
)
from graphprune.passes.permute_channels.search import (
    Move,
    _apply,
    _forward,
    _kept,
    _search_channels,
    _search_heads,
    _why_not,
)

log = logging.getLogger(__name__)

__all__ = ["permute_channels", "permute_for_patterns", "permute_model_channels"]


def permute_model_channels(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    options: PermuteChannelsConfig | None = None,
    *,
    targets: Iterable[str] | None = None,
    k_axes: Mapping[str, int] | None = None,
    exported: Any = None,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> PermutationReport:
    """Permute ``model``'s coupled channels in place to raise the magnitude N:M masks keep.

    ``targets``: parameter fqns that will get N:M masks (default: every prunable site whose K is a
    multiple of M). ``k_axes``: parameter fqn -> K axis (default: from ``find_sites``).
    ``exported``: an ``ExportedProgram`` of ``model`` to reuse. ``scores``: param fqn -> importance of the
    weight's elements (its shape) to search on instead of ``|W|`` (a calibrated method's own scores).
    Returns per-layer and per-group
    records (see the module docstring for what is permuted and why not).
    """
    from graphprune.analysis.groups import export_for_analysis, find_groups
    from graphprune.runtime.compare import compare_outputs

    opts = options or PermuteChannelsConfig()
    n, m = opts.n, opts.m
    t_start = time.perf_counter()
    inputs = tuple(example_inputs)
    ep = exported if exported is not None else export_for_analysis(model, inputs)
    if k_axes is None:
        from graphprune.analysis.find_sites import find_sites
        from graphprune.capture import Capture

        sig = ep.graph_signature
        cap = Capture("export", model, ep.graph, ep, dict(sig.inputs_to_parameters), dict(sig.inputs_to_buffers))
        k_axes = {s.param: s.k_axis for s in find_sites(cap).sites}
    axes = dict(k_axes)
    report = PermutationReport(n=n, m=m)
    wanted = list(targets) if targets is not None else list(axes)
    layers: dict[str, LayerEfficacy] = {}
    for name in wanted:
        if name not in axes:
            continue
        w = get_tensor(model, name).detach()
        ax = axes[name]
        if w.shape[ax] % m:
            continue  # N:M skips it (k_not_divisible): nothing to permute for
        k = _kept(w, n, m, ax)
        layers[name] = LayerEfficacy(name, tuple(w.shape), ax, k, k, float(w.abs().sum(dtype=torch.float64)))
        layers[name].reason = "its input channels are not a group the analysis can permute (model input, or an op it does not follow)"
    report.layers = list(layers.values())
    if not layers:
        report.seconds = time.perf_counter() - t_start
        return report

    ga = find_groups(model, inputs, exported=ep)
    reference = _forward(model, inputs) if opts.verify else None
    applied: list[tuple[GroupPermutation, list[Move]]] = []
    from tqdm.auto import tqdm

    for g in tqdm(ga.groups, desc="channel permutation", unit="group", disable=not opts.progress, leave=False):
        consumers = [
            mem for mem in g.members
            if not mem.producer and mem.kind == "parameter" and mem.target in layers and axes[mem.target] == mem.axis
        ]
        if not consumers:
            continue
        rec = GroupPermutation(g.id, g.name, g.kind, g.channels, [c.target for c in consumers], len(g.members), False)
        report.groups.append(rec)
        for c in consumers:
            layers[c.target].group = g.id
        budget = float(opts.time_budget_s)
        if opts.total_budget_s is not None:
            budget = min(budget, max(0.0, opts.total_budget_s - report.search_seconds))
        reason = _why_not(g, consumers, m, verify=opts.verify)
        if not reason and budget <= 0:
            reason = "time budget 0: not searched" if opts.time_budget_s == 0 else "total_budget_s spent: not searched"
        moves: list[Move] = []
        if not reason:
            if g.kind == "heads":
                moves, reason = _search_heads(model, g, consumers, rec, n, m, budget, opts, report.search_seconds, scores)
            else:
                moves, reason = _search_channels(model, g, consumers, rec, n, m, budget, opts, scores)
            report.search_seconds += rec.seconds
        if reason:
            rec.reason = reason
            for c in consumers:
                layers[c.target].reason = reason
            continue
        _apply(model, moves)
        rec.permuted = True
        applied.append((rec, moves))
    if opts.verify and applied:
        stats = compare_outputs(reference, _forward(model, inputs), name="permuted vs dense")
        report.verified = stats.to_dict()
        if not stats.ok:
            log.warning("permuted model differs from the dense one (%s); re-checking group by group", stats.summary())
            for _rec, moves in reversed(applied):
                _apply(model, moves, undo=True)
            for rec, moves in applied:
                _apply(model, moves)
                one = compare_outputs(reference, _forward(model, inputs))
                if not one.ok:
                    _apply(model, moves, undo=True)
                    rec.permuted = False
                    rec.reason = f"undone: the permuted model's outputs changed ({one.summary()})"
            report.verified = compare_outputs(reference, _forward(model, inputs), name="permuted vs dense").to_dict()
    for rec in report.groups:
        for c in rec.consumers:
            lay = layers[c]
            lay.permuted = rec.permuted
            if rec.permuted:
                lay.reason = ""
                lay.kept_after = _kept(get_tensor(model, c).detach(), n, m, lay.k_axis)
            elif rec.reason:
                lay.reason = rec.reason
    report.seconds = time.perf_counter() - t_start
    return report


@register_pass("permute-channels", mutates=("weights",), options=PermuteChannelsConfig)
def permute_channels(module: nn.Module, options: PermuteChannelsConfig, ctx: PassContext) -> PassResult:
    """Permute coupled channels so the N:M masks of ``ctx.patterns`` keep more magnitude (dense function unchanged).

    ``options`` gives the budget and seed; its ``n``/``m`` are replaced by the config's pattern.
    A config without an N:M pattern leaves the module untouched."""
    report = permute_for_patterns(module, options, ctx)
    return PassResult(module, modified=bool(report.permuted_groups), report=report)


def permute_for_patterns(
    module: nn.Module, options: PermuteChannelsConfig, ctx: PassContext, *, scores: Mapping[str, torch.Tensor] | None = None
) -> PermutationReport:
    """What the pass does, with optional ``scores`` (param -> importance of each weight element) searched on
    instead of ``|W|``: the calibrate pass permutes on its method's own scores this way."""
    pattern = ctx.config.element_pattern
    if not isinstance(pattern, SemiStructured):
        return PermutationReport(n=0, m=0, skipped=f"pattern {pattern} is not N:M: nothing to permute for")
    opts = PermuteChannelsConfig(**{**asdict(options), "n": pattern.n, "m": pattern.m})
    targets = [p for p, pat in ctx.patterns.items() if isinstance(pat, SemiStructured) and (pat.n, pat.m) == (pattern.n, pattern.m)]
    k_axes = {p: s.k_axis for p, s in ctx.sites.items()} or None
    exported = ctx.capture.exported if ctx.capture is not None and ctx.capture.method == "export" else None
    return permute_model_channels(
        module, ctx.example_inputs, opts, targets=targets, k_axes=k_axes, exported=exported, scores=scores
    )
