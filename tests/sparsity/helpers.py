"""Shared strategies and naive references for the sparsity tests (plain loops, independent of the
vectorized code under test)."""

from __future__ import annotations

import itertools

import torch
from hypothesis import strategies as st


def make_weight(seed: int, shape: tuple[int, ...], *, ties: bool = False, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct magnitudes, both signs, some zeros
        return (torch.randint(-3, 4, shape, generator=g)).to(dtype)
    return torch.randn(shape, generator=g, dtype=dtype)


@st.composite
def nm_cases(draw, max_ndim: int = 4, ms: tuple[int, ...] = (2, 3, 4, 5, 8, 16)):
    """(shape, axis, n, m) with shape[axis] divisible by m."""
    m = draw(st.sampled_from(ms))
    n = draw(st.integers(1, m - 1))
    ndim = draw(st.integers(1, max_ndim))
    axis = draw(st.integers(0, ndim - 1))
    shape = [draw(st.integers(1, 5)) for _ in range(ndim)]
    shape[axis] = m * draw(st.integers(1, 4))
    return tuple(shape), axis, n, m


def groups_along(t: torch.Tensor, axis: int, m: int) -> list[list]:
    """Every group of m consecutive elements along ``axis``, as Python lists (naive loops)."""
    moved = t.movedim(axis, -1)
    out = []
    for idx in itertools.product(*(range(s) for s in moved.shape[:-1])):
        line = moved[idx].tolist()
        for start in range(0, len(line), m):
            out.append(line[start : start + m])
    return out


def naive_topn(values: list[float], n: int) -> list[bool]:
    """Keep the n largest |v|; ties: lower index kept."""
    order = sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))
    keep = set(order[:n])
    return [i in keep for i in range(len(values))]
