"""The search side of pass ``permute-channels``: the permutation of one coupled group's channels, how
much magnitude an N:M mask keeps, and the moves that apply or undo a permutation in place.

A *move* ``(tensor fqn, axis, offset, order)`` reorders the range ``[offset, offset + len(order))``
of one tensor axis; every member range of a group gets the same unit permutation, so the dense
function is unchanged (see :mod:`graphprune.passes.permute_channels.permute` for the maths and for which
groups are searched). ``_search_channels`` / ``_search_heads`` read the weights and fill the group's
record; only ``_apply`` writes to the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from graphprune._module_tensors import eval_mode, get_tensor
from graphprune.passes.permute_channels.records import GroupPermutation, PermuteChannelsConfig


def _kept(w: Tensor, n: int, m: int, axis: int) -> float:
    """Magnitude fraction the 1-D N:M mask along ``axis`` keeps (what ``kept_magnitude(w, nm_mask(...))``
    gives, by ``topk`` directly: ties cannot change the kept sum)."""
    a = w.detach().abs().to(torch.float32)
    total = float(a.sum(dtype=torch.float64))
    if total == 0:
        return 1.0
    kept = a.movedim(axis, -1).reshape(-1, m).topk(n, dim=1).values.sum(dtype=torch.float64)
    return float(kept) / total



Move = tuple[str, int, int, Tensor]  # (tensor fqn, axis, offset, new order of the range [offset, offset + len))



def _unit_moves(members: Iterable[Any], perm: Tensor) -> list[Move]:
    """Every member range reordered by the unit permutation ``perm`` (a unit spans size/units channels)."""
    units = perm.numel()
    out: list[Move] = []
    for target, axis, offset, size in sorted({(mem.target, mem.axis, mem.offset, mem.size) for mem in members}):
        block = size // units
        out.append((target, axis, offset, (perm[:, None] * block + torch.arange(block)).reshape(-1)))
    return out



def _apply(model: nn.Module, moves: list[Move], *, undo: bool = False) -> None:
    with torch.no_grad():
        for target, axis, offset, order in moves:
            t = get_tensor(model, target)
            idx = (torch.argsort(order) if undo else order).to(t.device) + offset
            t.narrow(axis, offset, order.numel()).copy_(t.index_select(axis, idx))



def _forward(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    with torch.no_grad(), eval_mode(model):
        return model(*inputs)



def _why_not(g: Any, consumers: list[Any], m: int, *, verify: bool) -> str:
    """Why group ``g`` is left unpermuted ("" when it may be permuted)."""
    if g.blockers:
        b = g.blockers[0]
        return f"blocked: {b.reason} (node {b.node})"
    if any(c.offset % m or c.size % m for c in consumers):
        return f"a consumer's K range does not start and end on a multiple of M = {m}"
    if g.kind == "heads":
        h = g.heads
        if h is None or h.head_dim % m or h.head_dim <= m:
            return f"attention heads of dim {getattr(h, 'head_dim', '?')}: no room for a permutation inside a head with M = {m}"
        if not verify:
            return "attention heads are permuted only with verify=True (rotary embeddings pair channels inside a head)"
        if any(mem.size % h.head_dim for mem in g.members):
            return f"a member's range is not a whole number of heads of dim {h.head_dim}"
        return ""
    if any(mem.size % g.units for mem in g.members):
        return f"a member's range is not a multiple of the group's {g.units} units"
    if any(c.size != g.units for c in consumers):
        return f"channels are coupled in blocks (units {g.units} < K range {consumers[0].size})"
    if g.units <= m:
        return f"{g.units} channels: at most one group of {m}, nothing to gain"
    return ""



def _consumer_columns(model: nn.Module, c: Any, scores: Mapping[str, Tensor] | None = None) -> Tensor:
    """The consumer's |W| columns of the group, or its ``scores`` (e.g. a calibrated method's |W|·||x||)."""
    from graphprune.sparsity._common import as_rows_by_k

    t = scores[c.target] if scores is not None and c.target in scores else get_tensor(model, c.target).detach()
    return as_rows_by_k(t.abs().float(), c.axis)[:, c.offset : c.offset + c.size]



def _search_channels(
    model: nn.Module,
    g: Any,
    consumers: list[Any],
    rec: GroupPermutation,
    n: int,
    m: int,
    budget: float,
    opts: PermuteChannelsConfig,
    scores: Mapping[str, Tensor] | None = None,
) -> tuple[list[Move], str]:
    """One permutation of the group's channels, searched on its consumers' stacked columns."""
    from graphprune.sparsity import search_permutation

    stacked = torch.cat([_consumer_columns(model, c, scores) for c in consumers])
    res = search_permutation(stacked, n, m, axis=1, time_budget_s=budget, seed=opts.seed, progress=opts.progress)
    rec.seconds, rec.iterations = res.seconds, res.iterations
    rec.kept_before, rec.kept_after = res.kept_before, res.kept_after
    perm = res.perm.cpu()
    if torch.equal(perm, torch.arange(g.units)):
        return [], "no permutation keeps more than the identity"
    return _unit_moves(g.members, perm), ""



def _search_heads(
    model: nn.Module,
    g: Any,
    consumers: list[Any],
    rec: GroupPermutation,
    n: int,
    m: int,
    budget: float,
    opts: PermuteChannelsConfig,
    spent_before: float = 0.0,
    scores: Mapping[str, Tensor] | None = None,
) -> tuple[list[Move], str]:
    """A permutation of the channels *inside* each KV group's heads.

    Applying the same permutation of head_dim to a query head, the key head it attends with, the
    value head and the output projection's columns for that head leaves attention unchanged
    (q·k sums over head_dim; o reads the value channels in the same order). With GQA every query head
    of a KV group shares that group's permutation. It is searched on the output projection's columns
    of the group's heads, stacked. Rotary embeddings pair channels inside a head and break this: the
    caller verifies the outputs and undoes the group if they changed.
    """
    from graphprune.sparsity import search_permutation

    h = g.heads
    d, kv, nh = h.head_dim, max(1, h.num_kv_heads), h.num_heads
    rep = max(1, nh // kv)
    cols = [_consumer_columns(model, c, scores) for c in consumers]
    perms: list[Tensor] = []
    kept_b = kept_a = weight = 0.0
    rec.iterations = 0
    for grp in range(kv):
        if opts.total_budget_s is not None:
            budget = min(budget, max(0.0, opts.total_budget_s - spent_before - rec.seconds))
        heads = range(grp * rep, (grp + 1) * rep)
        blocks = [c[:, hh * d : (hh + 1) * d] for c in cols for hh in heads if (hh + 1) * d <= c.shape[1]]
        if not blocks:
            return [], f"the output projection does not cover the heads of KV group {grp}"
        res = search_permutation(torch.cat(blocks), n, m, axis=1, time_budget_s=budget, seed=opts.seed + grp)
        w = float(sum(float(b.sum()) for b in blocks))
        kept_b, kept_a, weight = kept_b + res.kept_before * w, kept_a + res.kept_after * w, weight + w
        rec.seconds += res.seconds
        rec.iterations += res.iterations
        perms.append(res.perm.cpu())
    rec.kept_before, rec.kept_after = (kept_b / weight, kept_a / weight) if weight else (1.0, 1.0)
    if all(torch.equal(p, torch.arange(d)) for p in perms):
        return [], "no permutation inside the heads keeps more than the identity"
    moves: list[Move] = []
    for target, axis, offset, size in sorted({(mem.target, mem.axis, mem.offset, mem.size) for mem in g.members}):
        heads_here = size // d
        if heads_here not in (nh, kv):
            return [], f"{target} holds {heads_here} heads of dim {d}, neither {nh} query nor {kv} KV heads"
        per_kv = heads_here == kv and kv != nh
        order = torch.cat([hh * d + perms[hh if per_kv else hh // rep] for hh in range(heads_here)])
        moves.append((target, axis, offset, order))
    return moves, ""
