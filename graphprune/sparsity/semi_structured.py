"""1-D N:M masks (NVIDIA ASP's m4n2_1d): keep the N largest ``|w|`` of every M consecutive
elements along the reduction axis K.

Groups run along K for every fixed index of the other axes; for a Conv weight ``[O, I/g, kh, kw]``
with K = 1 a group is M consecutive input channels of one ``(o, kh, kw)``, as TensorRT requires.
Ties are broken deterministically: among equal magnitudes the lower K index is kept.

Implementation: ``movedim(K, -1) -> reshape(-1, M)`` and a rank per element. For M <= 8 the rank
comes from the M(M-1)/2 pairwise comparisons of whole columns (a few elementwise passes, several
times faster than ``topk`` on short rows); for larger M from a stable descending sort.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graphprune.sparsity._common import check_divisible, check_nm_args, magnitude, normalize_axis

_PAIRWISE_MAX_M = 8


def topn_mask(groups: Tensor, n: int) -> Tensor:
    """``groups [G, M]`` of scores -> bool ``[G, M]`` keeping the ``n`` largest per row
    (ties: lower column index wins)."""
    g, m = groups.shape
    if g == 0:
        return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    if m <= _PAIRWISE_MAX_M:
        cols = [groups[:, i] for i in range(m)]
        # rank[i] = number of elements beating element i: larger, or equal with a lower index
        rank = [torch.zeros(g, dtype=torch.uint8, device=groups.device) for _ in range(m)]
        for i in range(m):
            for j in range(i + 1, m):
                j_wins = cols[j] > cols[i]
                rank[i].add_(j_wins)
                rank[j].add_(~j_wins)
        return torch.stack(rank, 1) < n
    order = groups.sort(dim=1, descending=True, stable=True).indices[:, :n]
    return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device).scatter_(1, order, True)


def nm_mask(weight: Tensor, n: int, m: int, *, axis: int) -> Tensor:
    """Boolean keep-mask keeping the ``n`` largest-magnitude of every ``m`` consecutive elements of
    ``weight`` along ``axis`` (the reduction axis K). WeightError naming the shape and axis when
    ``weight.shape[axis]`` is not divisible by ``m``."""
    check_nm_args(n, m)
    axis = normalize_axis(weight.shape, axis)
    check_divisible(weight.shape, axis, m)
    moved = magnitude(weight).movedim(axis, -1)
    keep = topn_mask(moved.reshape(-1, m), n)
    return keep.reshape(moved.shape).movedim(-1, axis).contiguous()
