"""Structured-pruning maths on plain tensors: importance per unit, how many to keep, which ones.

No fx, no modules: the structured entry point gathers the tensors and calls these.

Importance of a unit (a channel, a head, a KV group) in a coupled group is the sum over the group's
weight tensors of each tensor's per-unit score divided by that tensor's mean unit score, so that
every tensor contributes on the same scale whatever its magnitude (per-layer normalization):

    s_u = sum_t  m_t(u) / mean_v m_t(v),      m_t(u) = sum_{i in u} r_t(i)

with ``r_t(i)`` the reduction of one slice of ``t`` along the group's axis:

- ``l1``: ``sum |w|``; ``l2``: ``sqrt(sum w^2)``
- ``taylor``: ``sum |g * w|`` with ``g`` the gradient accumulated over calibration batches
  (first-order Taylor estimate of the loss change when the slice is zeroed; CAP's head/FFN score)
- ``bn_scale``: ``|gamma|`` of the group's BatchNorm weights
- ``activation``: mean ``|a|`` of the produced channels over the calibration batches

Keep counts: ``keep = min(size, max(minimum, round_up(ceil(size * (1 - ratio)), round_to)))``.
Global ranking pools the normalized scores of several groups and drops the lowest ``ratio`` share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch

K = TypeVar("K")


def axis_scores(t: torch.Tensor, axis: int, offset: int, size: int, *, p: int = 1) -> torch.Tensor:
    """Per-index reduction of ``t[..., offset:offset+size (along axis), ...]``: L1 (``p=1``) or L2 (``p=2``)."""
    x = t.detach().float().narrow(axis, offset, size).movedim(axis, 0).reshape(size, -1)
    if p == 1:
        return x.abs().sum(dim=1)
    if p == 2:
        return x.pow(2).sum(dim=1).sqrt()
    raise ValueError(f"p must be 1 or 2, got {p}")


def unit_scores(index_scores: torch.Tensor, units: int) -> torch.Tensor:
    """Sum per-index scores over ``units`` equal contiguous units."""
    n = index_scores.numel()
    if units <= 0 or n % units:
        raise ValueError(f"{n} indices do not split into {units} equal units")
    return index_scores.reshape(units, n // units).sum(dim=1)


def normalize_scores(scores: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Scale scores to a common range: ``mean`` (divide by the mean), ``max``, or ``none``."""
    s = scores.float()
    if how == "none":
        return s
    denom = s.mean() if how == "mean" else s.abs().max()
    if not torch.isfinite(denom) or float(denom) == 0.0:
        return torch.ones_like(s) if float(s.abs().sum()) == 0.0 else s
    return s / denom


def combine_scores(per_tensor: Sequence[torch.Tensor], *, normalize: str = "mean") -> torch.Tensor:
    """Sum per-tensor unit scores after normalizing each (every tensor weighs the same)."""
    if not per_tensor:
        raise ValueError("no scores to combine")
    total = torch.zeros_like(per_tensor[0], dtype=torch.float32)
    for s in per_tensor:
        total += normalize_scores(s, normalize)
    return total


def taylor_scores(weight: torch.Tensor, grad_abs_product: torch.Tensor | None = None, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise ``|g * w|`` (pass the accumulated ``|g*w|`` directly, or a gradient)."""
    if grad_abs_product is not None:
        return grad_abs_product.float()
    if grad is None:
        raise ValueError("taylor_scores needs grad_abs_product or grad")
    return (grad.float() * weight.detach().float()).abs()


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple) if multiple > 1 else int(n)


def keep_count(size: int, ratio: float, *, round_to: int = 1, minimum: int = 1) -> int:
    """Units to keep out of ``size`` when removing ``ratio`` of them (never above ``size``)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    want = math.ceil(size * (1.0 - ratio) - 1e-9)
    return int(min(size, max(minimum, round_up(want, round_to))))


def heads_keep_units(num_heads: int, heads_per_unit: int, units: int, ratio: float, *, min_heads: int = 1) -> int:
    """Units (KV groups, or single heads without GQA) to keep so that ``ratio`` of the heads go."""
    keep_heads = max(min_heads, math.ceil(num_heads * (1.0 - ratio) - 1e-9))
    return int(min(units, max(1, math.ceil(keep_heads / max(1, heads_per_unit)))))


def select_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` largest scores, in ascending index order (ties: lower index wins)."""
    keep = max(0, min(keep, scores.numel()))
    order = torch.sort(-scores.detach().float().reshape(-1), stable=True).indices[:keep]
    return order.sort().values.to(torch.long)


def global_keep_counts(scores: Mapping[K, torch.Tensor], ratio: float, *, round_to: Mapping[K, int] | None = None) -> dict[K, int]:
    """Keep counts per group from one ranking of all normalized unit scores.

    Scores are normalized per group (mean 1), pooled, and the lowest ``ratio`` share removed;
    each group's count is then rounded up to its ``round_to``. A count may be 0: the caller decides
    whether that is an error.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    keys = list(scores)
    pooled = [(float(v), k) for k in keys for v in normalize_scores(scores[k])]
    n_remove = math.floor(len(pooled) * ratio)
    removed: dict[K, int] = dict.fromkeys(keys, 0)
    for _, k in sorted(pooled, key=lambda t: t[0])[:n_remove]:
        removed[k] += 1
    out: dict[K, int] = {}
    for k in keys:
        size = scores[k].numel()
        left = size - removed[k]
        rt = (round_to or {}).get(k, 1)
        out[k] = min(size, round_up(left, rt)) if left > 0 else 0
    return out


def unit_indices(keep_units: torch.Tensor, units: int, size: int) -> torch.Tensor:
    """Indices in ``[0, size)`` covered by the kept units (each unit spans ``size // units`` indices)."""
    per = size // units
    if per * units != size:
        raise ValueError(f"{size} indices do not split into {units} units")
    base = keep_units.to(torch.long).unsqueeze(1) * per
    return (base + torch.arange(per, dtype=torch.long).unsqueeze(0)).reshape(-1)


__all__ = [
    "axis_scores",
    "combine_scores",
    "global_keep_counts",
    "heads_keep_units",
    "keep_count",
    "normalize_scores",
    "round_up",
    "select_top",
    "taylor_scores",
    "unit_indices",
    "unit_scores",
]
