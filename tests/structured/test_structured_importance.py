"""Importance maths and keep counts (graphprune.sparsity.structured): plain tensors only."""

from __future__ import annotations

import pytest
import torch

from graphprune.sparsity import structured as S


def test_axis_scores_l1_l2_on_a_range():
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0], [0.0, 0.0], [-1.0, 1.0]])
    assert S.axis_scores(w, 0, 1, 2, p=1).tolist() == [7.0, 0.0]
    assert S.axis_scores(w, 1, 0, 2, p=1).tolist() == [5.0, 7.0]
    assert S.axis_scores(w, 0, 0, 2, p=2).tolist() == pytest.approx([5**0.5, 5.0])


def test_unit_scores_sum_contiguous_units_and_reject_uneven():
    assert S.unit_scores(torch.arange(6.0), 3).tolist() == [1.0, 5.0, 9.0]
    with pytest.raises(ValueError):
        S.unit_scores(torch.arange(5.0), 2)


def test_combine_normalizes_each_tensor():
    big, small = torch.tensor([100.0, 300.0]), torch.tensor([3.0, 1.0])
    # each tensor weighs the same after dividing by its mean: [0.5, 1.5] + [1.5, 0.5]
    assert S.combine_scores([big, small]).tolist() == pytest.approx([2.0, 2.0])
    assert S.normalize_scores(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("size", "ratio", "round_to", "want"),
    [(64, 0.5, 8, 32), (24, 0.5, 8, 16), (10, 0.5, 8, 8), (6, 0.5, 8, 6), (3072, 0.5, 8, 1536), (16, 0.0, 8, 16), (7, 0.9, 1, 1)],
)
def test_keep_count(size, ratio, round_to, want):
    assert S.keep_count(size, ratio, round_to=round_to) == want


def test_keep_count_rejects_bad_ratio():
    with pytest.raises(ValueError):
        S.keep_count(8, 1.0)


def test_heads_keep_units_gqa_and_minimum():
    assert S.heads_keep_units(12, 1, 12, 0.5) == 6
    assert S.heads_keep_units(4, 2, 2, 0.5) == 1  # 2 query heads per KV group
    assert S.heads_keep_units(32, 4, 8, 0.3) == 6  # ceil(22.4)=23 heads -> 6 groups
    assert S.heads_keep_units(12, 1, 12, 0.9, min_heads=4) == 4


def test_select_top_sorted_and_ties_lower_index():
    s = torch.tensor([0.5, 2.0, 1.0, 2.0, 0.1])
    assert S.select_top(s, 3).tolist() == [1, 2, 3]
    assert S.select_top(torch.ones(4), 2).tolist() == [0, 1]


def test_global_keep_counts_can_empty_a_group():
    scores = {"a": torch.ones(8), "b": torch.tensor([1.0] * 4 + [3.0] * 4)}
    counts = S.global_keep_counts(scores, 0.75)
    assert counts == {"a": 0, "b": 4}
    assert S.global_keep_counts(scores, 0.25, round_to={"a": 8, "b": 1}) == {"a": 8, "b": 4}


def test_unit_indices_expand_units():
    assert S.unit_indices(torch.tensor([0, 2]), 3, 6).tolist() == [0, 1, 4, 5]


def test_taylor_scores():
    w, g = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert S.taylor_scores(w, grad=g).tolist() == [3.0, 1.0]
