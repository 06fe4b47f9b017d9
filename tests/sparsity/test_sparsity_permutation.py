"""Channel permutation search for N:M."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphprune.errors import ConfigError, WeightError
from graphprune.sparsity import kept_magnitude, nm_mask, search_permutation
from graphprune.sparsity.permutation import PermutationResult


def _kept_with(w: torch.Tensor, perm: torch.Tensor, n: int, m: int, axis: int) -> float:
    wp = w.index_select(axis, perm)
    return kept_magnitude(wp, nm_mask(wp, n, m, axis=axis))


def _assert_valid(res: PermutationResult, w: torch.Tensor, n: int, m: int, axis: int) -> None:
    k = w.shape[axis]
    assert res.perm.dtype == torch.long and res.perm.shape == (k,)
    assert torch.equal(res.perm.sort().values, torch.arange(k))
    assert res.kept_after >= res.kept_before
    assert res.kept_before == pytest.approx(kept_magnitude(w, nm_mask(w, n, m, axis=axis)), rel=1e-6)
    assert res.kept_after == pytest.approx(_kept_with(w, res.perm, n, m, axis), rel=1e-6)
    if res.kept_after == res.kept_before:
        assert torch.equal(res.perm, torch.arange(k))


@settings(deadline=None, max_examples=15)
@given(
    seed=st.integers(0, 2**31 - 1),
    nm=st.sampled_from([(2, 4), (1, 4), (3, 4), (1, 2), (2, 8), (4, 8), (2, 3)]),
    stripes=st.integers(1, 6),
    rows=st.integers(1, 12),
    conv=st.booleans(),
)
def test_valid_permutation_never_worse(seed, nm, stripes, rows, conv):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    shape = (rows, stripes * m, 3, 1) if conv else (rows, stripes * m)
    w = torch.randn(shape, generator=g)
    res = search_permutation(w, n, m, axis=1, time_budget_s=2.0, seed=seed)
    _assert_valid(res, w, n, m, 1)


def test_improves_a_shuffled_2_4_matrix():
    """A weight that is exactly 2:4 (100% kept) with shuffled columns: the search must gain."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=g)
    w = w * nm_mask(w, 2, 4, axis=1)
    shuffled = w[:, torch.randperm(64, generator=g)]
    res = search_permutation(shuffled, 2, 4, time_budget_s=10.0)
    _assert_valid(res, shuffled, 2, 4, 1)
    assert res.kept_before < 0.95
    assert res.kept_after > res.kept_before + 0.03


def test_recovers_full_magnitude_when_half_the_channels_are_zero():
    g = torch.Generator().manual_seed(1)
    w = torch.cat([torch.randn(32, 48, generator=g), torch.zeros(32, 48)], dim=1)[:, torch.randperm(96, generator=g)]
    res = search_permutation(w, 2, 4, time_budget_s=10.0)
    _assert_valid(res, w, 2, 4, 1)
    assert res.kept_before < 0.95 and res.kept_after == pytest.approx(1.0, abs=1e-9)


def test_random_matrix_and_axis_0():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(48, 32, generator=g)  # HF Conv1D / MatMul B layout: K is axis 0
    res = search_permutation(w, 2, 4, axis=0, time_budget_s=10.0)
    _assert_valid(res, w, 2, 4, 0)
    assert res.kept_after > res.kept_before and res.iterations > 0


def test_multi_block_sweep():
    """K large enough that swaps are scored in blocks of stripes (several rounds per sweep)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 320, generator=g)
    res = search_permutation(w, 2, 4, time_budget_s=10.0, seed=5, progress=True)
    _assert_valid(res, w, 2, 4, 1)
    assert res.kept_after > res.kept_before and res.iterations > 1


def test_zero_budget_is_identity():
    w = torch.randn(16, 32)
    res = search_permutation(w, 2, 4, time_budget_s=0)
    assert torch.equal(res.perm, torch.arange(32)) and res.iterations == 0
    assert res.kept_after == res.kept_before


def test_degenerate_inputs_give_identity():
    for w in (torch.zeros(8, 16), torch.randn(8, 4)):
        res = search_permutation(w, 2, 4, time_budget_s=1.0)
        assert torch.equal(res.perm, torch.arange(w.shape[1])) and res.kept_after == res.kept_before


def test_errors():
    with pytest.raises(WeightError, match=r"\(8, 10\).*not divisible by 4"):
        search_permutation(torch.randn(8, 10), 2, 4)
    with pytest.raises(ConfigError, match="time_budget_s"):
        search_permutation(torch.randn(8, 16), 2, 4, time_budget_s=-1)
