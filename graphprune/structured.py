"""Structured pruning that physically shrinks a model: channels, attention heads (GQA too), FFN neurons,
the hidden size of RMSNorm residual streams.

Entry point :func:`prune_structured` (called by ``graphprune.compile`` on its working copy):

1. capture with ``torch.export.export(strict=False)`` and find the coupled groups
   (:mod:`graphprune.analysis.groups`), read-only;
2. match groups to patterns: ``Heads`` → attention-head groups, ``FFN`` → groups whose channels only
   Linear-like ops produce and read, ``Hidden`` → residual streams (a normalized hidden size; only
   this pattern touches them), ``Channels`` → every other group (and the FFN groups too when no
   ``FFN`` pattern is given); groups that cannot be sliced stay dense with a Decision naming the node;
3. score units (:mod:`graphprune.sparsity.structured`) and choose the ones to keep;
4. rewrite the eager module: slice tensors and resize modules (``passes/fx/remove_channels``),
   update attention attributes and the HF config (``passes/fx/remove_heads``), swap in
   ``SlimMultiheadAttention`` for ``nn.MultiheadAttention`` with heads removed (``graphprune.modules``),
   rescale RMSNorms of a pruned stream so they stay exact (``passes/fx/rescale_norms``);
5. check: the shrunk model's outputs equal those of the *masked equivalent* (the dense model with the
   removed channels' weights zeroed) on the example inputs; a mismatch (e.g. a head count the forward
   hard-codes, which capture folded into a constant) raises ValidationError naming the reshape nodes.

Iterative schedules (steps of ratios of the original size, snapshots, a retraining callback) live in
:mod:`graphprune.structured_iterative`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graphprune._structured_plan import _build_keep, _keep_units, _pattern_for, _selected, _validate_patterns, group_key
from graphprune._structured_records import (
    _blocked_message,
    _decision,
    _eval,
    _heads_dict,
    _importance_summary,
    _verify,
    make_masked_equivalent,
)
from graphprune.analysis.group_importance import accumulate_activations, accumulate_taylor, batches, group_importance
from graphprune.analysis.groups import ChannelGroup, GroupAnalysis, find_groups
from graphprune.config import FFN, Channels, CompileConfig, Heads, Hidden
from graphprune.errors import WeightError
from graphprune.modules import SlimMultiheadAttention, class_name, slim_multihead_attention
from graphprune.passes.fx.remove_channels import get_tensor, remove_channels
from graphprune.passes.fx.remove_heads import update_attention_attrs, update_hf_config
from graphprune.passes.fx.rescale_norms import rescale_rms_norm
from graphprune.report import CompileReport, Decision, SkipReason
from graphprune.serialize import DELTA_FORMAT
from graphprune.sparsity import structured as S

log = logging.getLogger(__name__)

StructuredPattern = Channels | Heads | FFN | Hidden


@dataclass
class GroupRecord:
    """What happened to one coupled group."""

    id: int
    kind: str  # channels | ffn | heads
    name: str  # the layer (module of the first producer, or the attention module)
    members: list[str]  # "param_fqn:axis[offset:offset+size]"
    pattern: str | None
    pruned: bool
    units_before: int
    units_after: int
    channels_before: int
    channels_after: int
    removed_units: list[int] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)
    reason: SkipReason | None = None
    message: str = ""
    node: str | None = None
    source: str | None = None
    heads: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["reason"] = self.reason.value if self.reason else None
        return d


@dataclass
class StructuredResult:
    model: nn.Module
    groups: list[GroupRecord]
    decisions: list[Decision]
    delta: dict[str, Any]
    keep: dict[str, dict[int, list[int]]]  # tensor fqn -> axis -> kept indices (of the original axis)
    original_shapes: dict[str, list[int]]
    params_before: int
    params_after: int
    notes: list[str] = field(default_factory=list)
    parity: dict[str, Any] | None = None

    def masked_equivalent(self, original: nn.Module) -> nn.Module:
        """A copy of the dense ``original`` with the removed channels' weights zeroed."""
        return make_masked_equivalent(original, self)

    def summary(self) -> str:
        pruned = [g for g in self.groups if g.pruned]
        dense = [g for g in self.groups if not g.pruned and g.pattern]
        return (
            f"{len(pruned)} groups shrunk, {len(dense)} left dense; params {self.params_before:,} -> "
            f"{self.params_after:,} ({self.params_after / max(1, self.params_before):.1%})"
        )


_GROUP_WORDS: dict[type, str] = {
    Heads: "attention-head",
    FFN: "FFN or Linear-channel",
    Hidden: "residual-stream (hidden size)",
    Channels: "channel",
}


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- entry point ------------------------------------------------------------------------------------
def prune_structured(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    patterns: Sequence[StructuredPattern] | StructuredPattern,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    calibration: Iterable[tuple[Any, ...]] | None = None,
    progress: bool = False,
    verify: bool = True,
    base_units: dict[str, int] | None = None,
    analysis: GroupAnalysis | None = None,
) -> StructuredResult:
    """Physically remove channels / heads / FFN neurons of ``model`` IN PLACE and return what was done.

    ``patterns``: ``Channels``, ``Heads``, ``FFN`` and/or ``Hidden`` (at most one of each); ``ratio`` is the
    fraction of each group's units to remove, in [0, 1). ``include`` / ``exclude``: fnmatch globs
    over module fqns (a group counts when one of its producing modules matches). ``calibration``:
    batches (tuples of positional inputs) for ``taylor`` and ``activation`` importance; the example
    inputs are used when it is None. ``verify``: compare the shrunk model with the masked-equivalent
    dense model on ``example_inputs`` (ValidationError on a mismatch). ``base_units``: group key ->
    unit count the ratios refer to (iterative schedules: ratios of the original size).

    Raises ConfigError (bad pattern), WeightError (a layer would keep zero channels or heads),
    UnsupportedModelError (no graph), ValidationError (the shrunk model does not compute what the
    masked model computes).
    """
    pats = _validate_patterns(patterns if isinstance(patterns, (list, tuple)) else (patterns,))  # type: ignore[arg-type]
    ch: Channels | None = pats.get(Channels)
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    params_before = _count_params(model)
    analysis = analysis if analysis is not None else find_groups(model, example_inputs)
    records: dict[int, GroupRecord] = {}
    decisions: list[Decision] = []
    candidates: list[tuple[ChannelGroup, StructuredPattern]] = []

    for g in analysis.groups:
        pat = _pattern_for(g, pats)
        rec = GroupRecord(
            id=g.id,
            kind=g.kind,
            name=g.name,
            members=[f"{m.target}:{m.axis}[{m.offset}:{m.offset + m.size}]" for m in g.members],
            pattern=str(pat) if pat is not None else None,
            pruned=False,
            units_before=g.units,
            units_after=g.units,
            channels_before=g.channels,
            channels_after=g.channels,
            heads=_heads_dict(g),
        )
        records[g.id] = rec
        if pat is None:
            rec.message = "no pattern for this kind of group"
            if g.kind == "hidden":
                rec.message = "a residual stream (the hidden size): only the hidden:R pattern prunes it"
                if g.blockers:
                    rec.message += f", and it cannot: {g.blockers[0].reason} (node {g.blockers[0].node})"
            continue
        if g.blockers:
            b = g.blockers[0]
            rec.reason, rec.node, rec.source = SkipReason.UNSLICEABLE_GROUP, b.node, b.source
            rec.message = _blocked_message(model, g)
            decisions.append(_decision(model, g, rec))
        elif not _selected(g, include, exclude):
            rec.reason, rec.message = SkipReason.EXCLUDED_BY_FILTER, "excluded by the include/exclude globs"
            decisions.append(_decision(model, g, rec))
        else:
            candidates.append((g, pat))

    taylor = activations = None
    methods = {p.importance for _, p in candidates}
    if "taylor" in methods:
        taylor = accumulate_taylor(model, batches(calibration, example_inputs), progress=progress)
    if "activation" in methods:
        mods = {m.target.rpartition(".")[0] for g, p in candidates if p.importance == "activation" for m in g.producer_members}
        with _eval(model):
            activations = accumulate_activations(model, mods, batches(calibration, example_inputs), progress=progress)

    scores = {g.id: group_importance(model, g, p.importance, taylor=taylor, activations=activations) for g, p in candidates}
    counts: dict[int, int] = {}
    global_ids = [g.id for g, p in candidates if isinstance(p, Channels) and p.scope == "global"]
    for g, p in candidates:
        if g.id not in global_ids:
            counts[g.id] = _keep_units(g, p, (base_units or {}).get(group_key(g)))
    if global_ids and ch is not None:
        gmap = {g.id: g for g, _ in candidates}
        ratio = ch.ratio
        if base_units:
            orig = sum(base_units.get(group_key(gmap[i]), gmap[i].units) for i in global_ids)
            cur = sum(gmap[i].units for i in global_ids)
            ratio = max(0.0, 1.0 - (1.0 - ch.ratio) * orig / max(1, cur))
        rt = {i: (ch.round_to if gmap[i].channels == gmap[i].units else 1) for i in global_ids}
        counts.update(S.global_keep_counts({i: scores[i] for i in global_ids}, ratio, round_to=rt))
    for g, _ in candidates:
        if counts[g.id] < 1:
            raise WeightError(
                f"pruning would leave layer {g.name} with zero {'heads' if g.kind == 'heads' else 'channels'} "
                f"(all {g.units} units ranked below the global threshold); lower the ratio or use scope='layer'"
            )

    chosen: list[tuple[ChannelGroup, torch.Tensor]] = []
    for g, p in candidates:
        rec = records[g.id]
        s = scores[g.id]
        ku = S.select_top(s, counts[g.id])
        rec.importance = _importance_summary(s, ku)
        if ku.numel() >= g.units:
            rec.reason = SkipReason.TOO_SMALL
            rec.message = f"{p} removes nothing from {g.units} units after rounding"
            decisions.append(_decision(model, g, rec))
            continue
        chosen.append((g, ku))
        rec.pruned = True
        rec.units_after = int(ku.numel())
        rec.channels_after = g.channels // g.units * int(ku.numel())
        rec.removed_units = sorted(set(range(g.units)) - set(ku.tolist()))

    keep = _build_keep(model, chosen)
    keep_json: dict[str, dict[int, list[int]]] = {}
    for (t, a), idx in keep.items():
        keep_json.setdefault(t, {})[a] = idx.tolist()
    original_shapes = {t: list(get_tensor(model, t).shape) for t in keep_json}
    result = StructuredResult(model, list(records.values()), decisions, {}, keep_json, original_shapes, params_before, params_before)
    for cls, pat in pats.items():  # a pattern that matches no group at all is said, not silently ignored
        matched = [g for g in analysis.groups if _pattern_for(g, pats) is pat]
        if not matched:
            what = _GROUP_WORDS[cls]
            result.notes.append(f"{pat}: {type(model).__name__} has no {what} group, so this pattern removes nothing")

    reference = None
    if verify and chosen:
        masked = make_masked_equivalent(model, result)
        with _eval(masked):
            reference = masked(*example_inputs)
        del masked

    rc = remove_channels(model, keep)
    module_attrs: dict[str, dict[str, Any]] = {k: dict(v) for k, v in rc.modules.items()}
    heads_changes: list[tuple[int, int, int, int]] = []
    classes: dict[str, str] = {}
    for g, ku in chosen:
        if g.kind != "heads" or g.heads is None:
            continue
        h = g.heads
        kv_per_unit = h.num_kv_heads // g.units
        q_per_unit = h.num_heads // g.units
        new_h, new_kv = q_per_unit * int(ku.numel()), kv_per_unit * int(ku.numel())
        try:
            attn = model.get_submodule(h.module) if h.module else model
        except AttributeError:
            result.notes.append(f"attention module {h.module!r} not found; its head counts were not updated")
            continue
        changed = update_attention_attrs(
            attn, old_heads=h.num_heads, old_kv=h.num_kv_heads, new_heads=new_h, new_kv=new_kv, head_dim=h.head_dim, name=h.module
        )
        if isinstance(attn, nn.MultiheadAttention):  # its stock forward cannot run fewer heads: swap the class
            changed.update(slim_multihead_attention(attn, ku.tolist(), original_num_heads=h.num_heads))
            classes[h.module] = class_name(SlimMultiheadAttention)
            result.notes.append(
                f"{h.module}: nn.MultiheadAttention became graphprune.modules.SlimMultiheadAttention "
                f"({h.num_heads} -> {new_h} heads); returned attention weights average over the kept heads"
            )
        if changed:
            module_attrs.setdefault(h.module, {}).update(changed)
        heads_changes.append((h.num_heads, h.num_kv_heads, new_h, new_kv))
        records[g.id].heads = {**(records[g.id].heads or {}), "num_heads_after": new_h, "num_kv_heads_after": new_kv}
    hidden_changes: list[tuple[int, int]] = []
    for g, ku in chosen:
        if g.kind != "hidden":
            continue
        n, n_kept = g.channels, g.channels // g.units * int(ku.numel())
        for fqn in g.norms:
            changed = rescale_rms_norm(model.get_submodule(fqn) if fqn else model, n, n_kept, name=fqn)
            module_attrs.setdefault(fqn, {}).update(changed)
        hidden_changes.append((n, n_kept))
    ffn_changes = [(g.channels, g.channels // g.units * int(ku.numel())) for g, ku in chosen if g.kind == "ffn"]
    n_attn = sum(1 for g in analysis.groups if g.kind == "heads")
    n_ffn = sum(1 for g in analysis.groups if g.kind == "ffn" and g.prunable)
    cfg_changes, cfg_notes = update_hf_config(
        model,
        heads=heads_changes,
        ffn=ffn_changes,
        all_attention_pruned=len(heads_changes) == n_attn,
        all_ffn_pruned=len(ffn_changes) == n_ffn,
        hidden=hidden_changes,
    )
    result.notes.extend(cfg_notes)
    result.delta = {
        "format": DELTA_FORMAT,
        "tensors": rc.tensors,
        "modules": module_attrs,
        "classes": classes,
        "config": cfg_changes,
        "groups": [
            {"id": r.id, "kind": r.kind, "name": r.name, "units_before": r.units_before, "units_after": r.units_after}
            for r in result.groups
            if r.pruned
        ],
    }
    result.params_after = _count_params(model)

    if reference is not None:
        result.parity = _verify(model, example_inputs, reference, chosen)
    log.info("structured pruning: %s", result.summary())
    return result


def prune_into_report(model: nn.Module, example_inputs: tuple[Any, ...], config: CompileConfig, report: CompileReport) -> StructuredResult:
    """:func:`prune_structured` with a ``CompileConfig``'s structured patterns and include/exclude globs;
    the per-group records and the notes go into the ``CompileReport`` (``compile`` and ``inspect``
    both shrink through here, so they report the same)."""
    res = prune_structured(model, example_inputs, config.structured_patterns, include=config.include, exclude=config.exclude)
    report.structured = [g.to_dict() for g in res.groups]
    report.notes.append(f"structured: {res.summary()}")
    report.notes.extend(f"structured: {n}" for n in res.notes)
    return res


__all__ = [
    "GroupRecord",
    "StructuredResult",
    "accumulate_activations",
    "accumulate_taylor",
    "group_importance",
    "group_key",
    "make_masked_equivalent",
    "prune_into_report",
    "prune_structured",
]
