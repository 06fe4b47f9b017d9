"""1-D N:M masks and the N:M audit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphprune.errors import ConfigError, WeightError
from graphprune.sparsity import check_nm, nm_mask
from tests.sparsity.helpers import groups_along, make_weight, naive_topn, nm_cases


@settings(deadline=None, max_examples=60)
@given(case=nm_cases(), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_nm_mask_matches_naive_reference(case, seed, ties):
    shape, axis, n, m = case
    w = make_weight(seed, shape, ties=ties)
    mask = nm_mask(w, n, m, axis=axis)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    got = groups_along(mask, axis, m)
    want = [naive_topn(g, n) for g in groups_along(w, axis, m)]
    assert got == want
    # exactly n kept per group along the axis, and the audit agrees
    assert all(sum(g) == n for g in got)
    report = check_nm(mask, n, m, axis=axis)
    assert report.ok and report.violations == 0 and report.max_nonzeros == n
    assert report.groups == w.numel() // m
    assert check_nm(w * mask, n, m, axis=axis).ok
    # negative axis means the same axis
    assert torch.equal(nm_mask(w, n, m, axis=axis - len(shape)), mask)


def test_conv_groups_run_along_input_channels():
    w = torch.randn(8, 16, 3, 3)
    mask = nm_mask(w, 2, 4, axis=1)
    per_group = mask.reshape(8, 4, 4, 3, 3).sum(2)  # groups of 4 input channels per (o, kh, kw)
    assert torch.equal(per_group, torch.full_like(per_group, 2))
    expected = nm_mask(w.permute(0, 2, 3, 1).contiguous(), 2, 4, axis=3).permute(0, 3, 1, 2)
    assert torch.equal(mask, expected)


def test_linear_and_matmul_axes():
    w = torch.randn(8, 12)
    assert torch.equal(nm_mask(w, 2, 4, axis=0), nm_mask(w.T.contiguous(), 2, 4, axis=1).T)


def test_ties_keep_lower_index_and_all_zero_group():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, -3.0, 3.0, 0.1]])
    mask = nm_mask(w, 2, 4, axis=1)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False], [False, True, True, False]]


def test_half_precision_and_empty():
    w = torch.randn(4, 8, dtype=torch.float16)
    assert torch.equal(nm_mask(w, 2, 4, axis=1), nm_mask(w.float(), 2, 4, axis=1))
    assert nm_mask(torch.empty(0, 8), 2, 4, axis=1).shape == (0, 8)


def test_indivisible_axis_names_shape_and_axis():
    with pytest.raises(WeightError, match=r"\(6, 10\).*axis 1.*10 is not divisible by 4"):
        nm_mask(torch.randn(6, 10), 2, 4, axis=1)
    with pytest.raises(WeightError, match="axis 2 is out of range"):
        nm_mask(torch.randn(4, 4), 2, 4, axis=2)
    with pytest.raises(ConfigError):
        nm_mask(torch.randn(4, 4), 4, 4, axis=1)
    with pytest.raises(WeightError, match="not divisible"):
        check_nm(torch.randn(3, 6), 2, 4, axis=1)


def test_check_nm_counts_violations():
    t = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]])
    r = check_nm(t, 2, 4, axis=1)
    assert (r.ok, r.groups, r.violations, r.max_nonzeros) == (False, 4, 2, 4)
    assert check_nm(torch.zeros(0, 4), 2, 4, axis=1).max_nonzeros == 0
