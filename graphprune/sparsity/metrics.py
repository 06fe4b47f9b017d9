"""Measurements on weights and masks: N:M audit, kept magnitude, sparsity, finiteness.

All functions are read-only and accept tensors on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from graphprune.errors import WeightError
from graphprune.sparsity._common import as_rows_by_k, check_divisible, check_nm_args, normalize_axis


@dataclass(frozen=True)
class NMCheck:
    """Result of :func:`check_nm`: ``groups`` groups of M along the axis, ``violations`` of them hold
    more than N nonzeros, the fullest holds ``max_nonzeros``."""

    ok: bool
    groups: int
    violations: int
    max_nonzeros: int


def check_nm(t: Tensor, n: int, m: int, *, axis: int) -> NMCheck:
    """Audit that every group of ``m`` consecutive elements of ``t`` along ``axis`` has at most ``n``
    nonzeros (``t`` may be a weight or a boolean mask). WeightError if ``t.shape[axis] % m != 0``."""
    check_nm_args(n, m)
    axis = normalize_axis(t.shape, axis)
    check_divisible(t.shape, axis, m)
    counts = (as_rows_by_k(t.detach(), axis) != 0).reshape(-1, m).sum(1)
    groups = int(counts.numel())
    violations = int((counts > n).sum()) if groups else 0
    max_nz = int(counts.max()) if groups else 0
    return NMCheck(ok=violations == 0, groups=groups, violations=violations, max_nonzeros=max_nz)


def kept_magnitude(weight: Tensor, mask: Tensor) -> float:
    """``sum|weight * mask| / sum|weight|`` (1.0 for an all-zero weight)."""
    if mask.shape != weight.shape:
        raise WeightError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    a = weight.detach().abs().to(torch.float64)
    total = float(a.sum())
    if total == 0.0:
        return 1.0
    return float((a * mask.to(a.device, torch.bool)).sum()) / total


def check_finite(weight: Tensor, name: str) -> None:
    """Raise WeightError naming ``name`` when ``weight`` holds NaN or Inf values."""
    w = weight.detach()
    if not (w.dtype.is_floating_point or w.is_complex()):
        return
    finite = torch.isfinite(w)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(w).sum())
    n_inf = int((~finite).sum()) - n_nan
    raise WeightError(
        f"weight {name!r} (shape {tuple(w.shape)}) has {n_nan} NaN and {n_inf} Inf value(s) of {w.numel()}; "
        "masks computed from it would be meaningless: fix or exclude this layer"
    )


def sparsity_of(t: Tensor) -> float:
    """Fraction of zero elements of ``t`` (0.0 for an empty tensor)."""
    numel = t.numel()
    if numel == 0:
        return 0.0
    return float((t.detach() == 0).sum()) / numel
