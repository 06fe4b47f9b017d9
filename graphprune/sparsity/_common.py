"""Shared helpers of the sparsity maths: argument checks, magnitude scores and the K-axis layout.

Layout convention: a weight with reduction axis K is viewed as a matrix ``[R, K]`` by moving K last
and flattening every other axis, in order, into rows. For a Conv weight ``[O, I/g, kh, kw]`` with
K = 1 the rows run over ``(o, kh, kw)``, so consecutive K entries of one row are the input channels
TensorRT groups for one output channel and kernel position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graphprune.errors import ConfigError, WeightError


def check_nm_args(n: int, m: int) -> None:
    """Raise ConfigError unless ``0 < n < m`` are ints."""
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"N:M {name} must be an int, got {v!r}")
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern {n}:{m} is invalid: need 0 < N < M (keep N of every M), e.g. 2:4")


def normalize_axis(shape: torch.Size | tuple[int, ...], axis: int) -> int:
    """``axis`` as a non-negative index into ``shape``; WeightError naming the shape when out of range."""
    nd = len(shape)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -nd <= axis < nd:
        raise WeightError(f"axis {axis!r} is out of range for a weight of shape {tuple(shape)}")
    return axis % nd


def check_divisible(shape: torch.Size | tuple[int, ...], axis: int, m: int, what: str = "N:M") -> None:
    if shape[axis] % m != 0:
        raise WeightError(
            f"cannot apply {what} with M={m} to a weight of shape {tuple(shape)} along axis {axis}: "
            f"its size {shape[axis]} is not divisible by {m}"
        )


def magnitude(weight: Tensor) -> Tensor:
    """``|weight|`` in float32 (float64 stays float64, so no ties are created that were not there)."""
    w = weight.detach()
    if w.dtype == torch.float64:
        return w.abs()
    if w.is_complex():
        raise WeightError(f"complex weights are not supported (dtype {w.dtype})")
    return w.abs().to(torch.float32) if w.dtype.is_floating_point else w.to(torch.float32).abs()


def as_rows_by_k(t: Tensor, axis: int) -> Tensor:
    """View ``t`` as ``[R, K]``: K (``axis``) last, every other axis flattened into rows, in order."""
    moved = t.movedim(axis, -1)
    rows = 1
    for d in moved.shape[:-1]:
        rows *= d
    return moved.reshape(rows, t.shape[axis])  # not -1: ambiguous when K is 0 (an empty weight)


def from_rows_by_k(rows: Tensor, shape: torch.Size | tuple[int, ...], axis: int) -> Tensor:
    """Inverse of :func:`as_rows_by_k` (returns a contiguous tensor of ``shape``)."""
    moved = list(shape)
    k = moved.pop(axis)
    moved.append(k)
    return rows.reshape(moved).movedim(-1, axis).contiguous()
