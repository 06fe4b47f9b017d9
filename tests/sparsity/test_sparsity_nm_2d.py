"""2-D N:M masks (greedy and best)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphprune.sparsity.semi_structured_2d as s2d
from graphprune.errors import ConfigError, WeightError
from graphprune.sparsity import check_nm, kept_magnitude, nm_mask_2d
from graphprune.sparsity.semi_structured_2d import _valid_patterns, count_patterns
from tests.sparsity.helpers import make_weight


def _tiles(mask: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """[T, m, m] tiles in the documented layout: rows = non-K axes with the output axis innermost."""
    others = [d for d in range(mask.dim()) if d != axis]
    dims = [*others[1:], *others[:1], axis]
    mat = mask.permute(dims).reshape(-1, mask.shape[axis])
    r, k = mat.shape
    return mat.reshape(r // m, m, k // m, m).permute(0, 2, 1, 3).reshape(-1, m, m)


@st.composite
def cases_2d(draw, ms=(2, 3, 4, 5, 8)):
    m = draw(st.sampled_from(ms))
    n = draw(st.integers(1, m - 1))
    ndim = draw(st.sampled_from([2, 2, 3, 4]))
    axis = draw(st.integers(0, ndim - 1))
    shape = [draw(st.integers(1, 3)) for _ in range(ndim)]
    shape[axis] = m * draw(st.integers(1, 3))
    out_axis = 1 if axis == 0 else 0
    shape[out_axis] = m * draw(st.integers(1, 2))
    return tuple(shape), axis, n, m


@settings(deadline=None, max_examples=40)
@given(case=cases_2d(), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_2d_masks_are_nm_along_both_tile_axes(case, seed, ties):
    shape, axis, n, m = case
    w = make_weight(seed, shape, ties=ties, dtype=torch.float64)
    methods = ["greedy"] + (["best"] if count_patterns(n, m) <= 10_000 else [])
    kept = {}
    for method in methods:
        mask = nm_mask_2d(w, n, m, axis=axis, method=method)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        tiles = _tiles(mask, axis, m)
        assert torch.all(tiles.sum(2) == n), method  # rows of a tile: along K
        assert torch.all(tiles.sum(1) == n), method  # columns of a tile: along the output axis
        assert check_nm(mask, n, m, axis=axis).ok  # N:M along K, as TensorRT checks it
        kept[method] = kept_magnitude(w, mask)
    if "best" in kept:
        assert kept["best"] >= kept["greedy"] - 1e-12


def _naive_best_tile(a: torch.Tensor, n: int, m: int) -> float:
    best = -1.0
    for rows in itertools.product(itertools.combinations(range(m), n), repeat=m):
        cols = [0] * m
        for r in rows:
            for c in r:
                cols[c] += 1
        if all(c == n for c in cols):
            best = max(best, sum(float(a[i, c]) for i, r in enumerate(rows) for c in r))
    return best


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), nm=st.sampled_from([(1, 3), (2, 4), (1, 4), (3, 4)]))
def test_best_is_optimal_per_tile(seed, nm):
    n, m = nm
    w = make_weight(seed, (m, m), dtype=torch.float64)
    mask = nm_mask_2d(w, n, m, axis=1, method="best")
    assert float((w.abs() * mask).sum()) == pytest.approx(_naive_best_tile(w.abs(), n, m), rel=1e-12)


def test_pattern_counts():
    assert count_patterns(2, 4) == 90 and count_patterns(1, 4) == 24 and count_patterns(4, 8) == 116963796250
    p = _valid_patterns(2, 4)
    assert p is not None and p.shape == (90, 16)
    grid = p.reshape(90, 4, 4)
    assert torch.all(grid.sum(1) == 2) and torch.all(grid.sum(2) == 2)
    assert len({tuple(row.tolist()) for row in p}) == 90
    assert math.factorial(5) == count_patterns(1, 5)


def test_best_refuses_too_many_patterns():
    with pytest.raises(WeightError, match="greedy"):
        nm_mask_2d(torch.randn(8, 8), 4, 8, axis=1, method="best")
    assert check_nm(nm_mask_2d(torch.randn(8, 16), 4, 8, axis=1, method="greedy"), 4, 8, axis=1).ok


def test_conv_layout_spans_output_channels_per_kernel_position():
    w = torch.randn(8, 4, 3, 3)
    mask = nm_mask_2d(w, 2, 4, axis=1, method="best")
    # for every kernel position, [O, I] is made of 4x4 tiles that are 2:4 along both axes
    per_pos = mask.permute(2, 3, 0, 1).reshape(9, 2, 4, 1, 4)
    assert torch.all(per_pos.sum(2) == 2) and torch.all(per_pos.sum(4) == 2)


def test_greedy_completion_fills_a_stuck_tile(monkeypatch):
    # Plain greedy (ASP's m4n2_2d_greedy) keeps 98, 96, 93, 84, 80, 53, 11 and then row 3 and
    # column 2 are one short while (3, 2) is taken: 7 kept. The completion exchange gives 8.
    a = torch.tensor([[96, 63, 24, 80], [58, 93, 2, 53], [98, 84, 59, 41], [56, 56, 11, 15]], dtype=torch.float64)
    mask = nm_mask_2d(a, 2, 4, axis=1, method="greedy")
    assert torch.all(mask.sum(0) == 2) and torch.all(mask.sum(1) == 2)
    monkeypatch.setattr(s2d, "_complete", lambda *args: None)
    stuck = nm_mask_2d(a, 2, 4, axis=1, method="greedy")
    assert int(stuck.sum()) == 7 and bool((stuck <= mask).all()) is False


def test_shape_errors():
    with pytest.raises(WeightError, match=r"\(6, 8\).*divisible by 4"):
        nm_mask_2d(torch.randn(6, 8), 2, 4, axis=1)
    with pytest.raises(WeightError, match="divisible by 4"):
        nm_mask_2d(torch.randn(8, 6), 2, 4, axis=1)
    with pytest.raises(WeightError):
        nm_mask_2d(torch.randn(8), 2, 4, axis=0)
    with pytest.raises(ConfigError, match="method"):
        nm_mask_2d(torch.randn(8, 8), 2, 4, axis=1, method="exhaustive")
