"""1-D N:M masks (NVIDIA ASP's m4n2_1d): keep the N largest ``|w|`` of every M consecutive
elements along the reduction axis K.

Groups run along K for every fixed index of the other axes; for a Conv weight ``[O, I/g, kh, kw]``
with K = 1 a group is M consecutive input channels of one ``(o, kh, kw)``, as TensorRT requires.
Ties are broken deterministically: among equal magnitudes the lower K index is kept.

Implementation: ``movedim(K, -1) -> reshape(-1, M)`` and one stable descending sort per group.
(A rank from M(M-1)/2 pairwise column comparisons was measured 3-5x slower than the sort on the
shared 2-core machines: it makes many full-size temporaries and is memory-bound.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from graphprune.sparsity._common import check_divisible, check_nm_args, magnitude, normalize_axis


def topn_mask(groups: Tensor, n: int) -> Tensor:
    """``groups [G, M]`` of scores -> bool ``[G, M]`` keeping the ``n`` largest per row
    (ties: lower column index wins, from the stable sort)."""
    if groups.shape[0] == 0:
        return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
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
