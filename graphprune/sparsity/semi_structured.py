"""1-D N:M masks (NVIDIA ASP's m4n2_1d): keep the N largest ``|w|`` of every M consecutive
elements along the reduction axis K.

Groups run along K for every fixed index of the other axes; for a Conv weight ``[O, I/g, kh, kw]``
with K = 1 a group is M consecutive input channels of one ``(o, kh, kw)``, as TensorRT requires.
Ties are broken deterministically: among equal magnitudes the lower K index is kept.

Implementation: ``movedim(K, -1) -> reshape(-1, M)``, then each element's rank inside its group
from the M(M-1)/2 pairwise column comparisons (each pair compared once; ties go to the lower index),
keeping ranks below N. For M > 8 a stable descending sort per group is used instead.
``benchmarks/mask_speed.py`` (RESULTS.md) picked this: every Linear weight of BERT-base (85.5 M) at
2:4 took 0.31 s pairwise vs 1.7 s with the sort and 0.9 s with ``topk`` (2 threads, quiet machine);
at 8:16 the two are equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graphprune.sparsity._common import check_divisible, check_nm_args, magnitude, normalize_axis

PAIRWISE_MAX_M = 8  # above this, M(M-1)/2 comparisons cost more than one sort per group


def topn_mask(groups: Tensor, n: int) -> Tensor:
    """``groups [G, M]`` of scores -> bool ``[G, M]`` keeping the ``n`` largest per row
    (ties: lower column index wins)."""
    if groups.shape[0] == 0:
        return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    m = groups.shape[1]
    if m > PAIRWISE_MAX_M:
        order = groups.sort(dim=1, descending=True, stable=True).indices[:, :n]
        return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device).scatter_(1, order, True)
    cols = groups.unbind(1)
    rank = [torch.zeros(groups.shape[0], dtype=torch.uint8, device=groups.device) for _ in range(m)]
    for i in range(m):
        for j in range(i):
            earlier_wins = cols[j] >= cols[i]  # a tie goes to the lower index j
            rank[i] += earlier_wins
            rank[j] += ~earlier_wins
    return torch.stack([r < n for r in rank], dim=1)


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
