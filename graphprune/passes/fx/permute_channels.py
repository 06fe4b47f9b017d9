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
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from graphprune.config import CompileConfig, SemiStructured
from graphprune.errors import ConfigError
from graphprune.passes.base import PassContext, PassResult
from graphprune.passes.fx._permute_search import (
    Move,
    _apply,
    _forward,
    _kept,
    _search_channels,
    _search_heads,
    _tensor,
    _why_not,
)

log = logging.getLogger(__name__)

__all__ = [
    "GroupPermutation",
    "LayerEfficacy",
    "PermutationReport",
    "PermuteChannelsConfig",
    "permute_channels",
    "permute_model_channels",
]


@dataclass(frozen=True, kw_only=True)
class PermuteChannelsConfig:
    """``time_budget_s``: search time per channel group (per KV group inside attention heads: each
    head's search is its own); ``total_budget_s``: search time for the whole model (None: no cap;
    groups left when it is spent stay unpermuted, with that reason)."""

    n: int = 2
    m: int = 4
    time_budget_s: float = 2.0
    total_budget_s: float | None = None
    seed: int = 0
    verify: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("n", "m"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"PermuteChannelsConfig.{name} must be an int, got {v!r}")
        if not 0 < self.n < self.m:
            raise ConfigError(f"PermuteChannelsConfig: N:M {self.n}:{self.m} is invalid, need 0 < N < M")
        for name in ("time_budget_s", "total_budget_s"):
            v = getattr(self, name)
            if v is None and name == "total_budget_s":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"PermuteChannelsConfig.{name} must be a number of seconds >= 0, got {v!r}")


@dataclass
class LayerEfficacy:
    """Magnitude kept by one layer's N:M mask without and with the permutation."""

    param: str
    shape: tuple[int, ...]
    k_axis: int
    kept_before: float
    kept_after: float
    total: float  # sum |W| (weights the overall figure)
    group: int | None = None
    permuted: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class GroupPermutation:
    group: int
    name: str
    kind: str
    channels: int
    consumers: list[str]
    members: int
    permuted: bool
    reason: str = ""
    seconds: float = 0.0
    iterations: int = 0
    kept_before: float = 0.0  # over the stacked consumers
    kept_after: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PermutationReport:
    n: int
    m: int
    layers: list[LayerEfficacy] = field(default_factory=list)
    groups: list[GroupPermutation] = field(default_factory=list)
    seconds: float = 0.0
    search_seconds: float = 0.0
    verified: dict[str, Any] | None = None

    def overall(self, *, permuted_only: bool = False) -> tuple[float, float]:
        """(kept before, kept after) over all N:M layers, weighted by each layer's ``sum |W|``."""
        rows = [lay for lay in self.layers if lay.permuted or not permuted_only]
        tot = sum(lay.total for lay in rows)
        if tot == 0:
            return 1.0, 1.0
        return (sum(lay.kept_before * lay.total for lay in rows) / tot, sum(lay.kept_after * lay.total for lay in rows) / tot)

    @property
    def permuted_groups(self) -> list[GroupPermutation]:
        return [g for g in self.groups if g.permuted]

    def to_dict(self) -> dict[str, Any]:
        before, after = self.overall()
        pb, pa = self.overall(permuted_only=True)
        return {
            "pattern": f"{self.n}:{self.m}",
            "overall": {"kept_before": before, "kept_after": after, "permuted_kept_before": pb, "permuted_kept_after": pa},
            "seconds": self.seconds,
            "search_seconds": self.search_seconds,
            "verified": self.verified,
            "groups": [g.to_dict() for g in self.groups],
            "layers": [lay.to_dict() for lay in self.layers],
        }

    def table(self) -> str:
        head = f"{'layer':<52} {'kept before':>11} {'kept after':>10} {'gain':>7}  note"
        lines = [head, "-" * len(head)]
        for lay in self.layers:
            name = lay.param if len(lay.param) <= 52 else "…" + lay.param[-51:]
            gain = lay.kept_after - lay.kept_before
            note = "permuted" if lay.permuted else lay.reason
            lines.append(f"{name:<52} {lay.kept_before:>11.4f} {lay.kept_after:>10.4f} {gain:>+7.4f}  {note}")
        before, after = self.overall()
        lines.append("-" * len(head))
        lines.append(
            f"overall {self.n}:{self.m} kept magnitude {before:.4f} -> {after:.4f} ({after - before:+.4f}); "
            f"{len(self.permuted_groups)}/{len(self.groups)} groups permuted; search {self.search_seconds:.1f}s, total {self.seconds:.1f}s"
        )
        return "\n".join(lines)


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
    weight's elements (its shape) to search on instead of ``|W|`` — a calibrated method's own scores. Returns per-layer and per-group
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
        w = _tensor(model, name).detach()
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
                lay.kept_after = _kept(_tensor(model, c).detach(), n, m, lay.k_axis)
            elif rec.reason:
                lay.reason = rec.reason
    report.seconds = time.perf_counter() - t_start
    return report


def permute_channels(
    module: nn.Module,
    config: CompileConfig,
    ctx: PassContext,
    *,
    options: PermuteChannelsConfig | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> PassResult:
    """The pass: permute for the N:M pattern of ``config`` the sites ``ctx.patterns`` prunes N:M.

    ``options`` gives the budget and seed; its ``n``/``m`` are replaced by the config's pattern.
    A config without an N:M pattern leaves the module untouched."""
    pattern = config.element_pattern
    if not isinstance(pattern, SemiStructured):
        return PassResult(module, modified=False, report={"skipped": f"pattern {pattern} is not N:M: nothing to permute for"})
    base = options or PermuteChannelsConfig(progress=ctx.progress)
    opts = PermuteChannelsConfig(**{**asdict(base), "n": pattern.n, "m": pattern.m})
    targets = [p for p, pat in ctx.patterns.items() if isinstance(pat, SemiStructured) and (pat.n, pat.m) == (pattern.n, pattern.m)]
    k_axes = {p: s.k_axis for p, s in ctx.sites.items()} or None
    exported = ctx.capture.exported if ctx.capture is not None and ctx.capture.method == "export" else None
    report = permute_model_channels(
        module, ctx.example_inputs, opts, targets=targets, k_axes=k_axes, exported=exported, scores=scores
    )
    return PassResult(module, modified=bool(report.permuted_groups), report=report.to_dict())
