"""Unstructured masks: per layer (magnitude, random) and global."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphprune.sparsity.unstructured as unstructured_mod
from graphprune.errors import ConfigError
from graphprune.sparsity import global_unstructured_masks, unstructured_mask
from tests.sparsity.helpers import make_weight

shapes = st.lists(st.integers(1, 7), min_size=0, max_size=4).map(tuple)


def _naive_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """Prune the k smallest |w|, ties by lower flat index (a stable sort, independent of kthvalue)."""
    flat = w.abs().reshape(-1).tolist()
    order = sorted(range(len(flat)), key=lambda i: (flat[i], i))
    keep = torch.ones(len(flat), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.reshape(w.shape)


@settings(deadline=None, max_examples=60)
@given(shape=shapes, sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_magnitude_mask_exact_count_and_smallest(shape, sparsity, seed, ties):
    w = make_weight(seed, shape, ties=ties)
    mask = unstructured_mask(w, sparsity)
    k = round(sparsity * w.numel())
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == k  # within one element of sparsity * numel
    assert abs(int((~mask).sum()) - sparsity * w.numel()) <= 1
    assert torch.equal(mask, _naive_mask(w, k))


@settings(deadline=None, max_examples=30)
@given(shape=shapes, sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_random_mask_exact_count_and_reproducible(shape, sparsity, seed):
    w = make_weight(seed, shape)
    a = unstructured_mask(w, sparsity, method="random", generator=torch.Generator().manual_seed(seed))
    b = unstructured_mask(w, sparsity, method="random", generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)
    assert int((~a).sum()) == round(sparsity * w.numel())


def test_random_mask_ignores_magnitude():
    w = torch.arange(1000, dtype=torch.float32)
    mask = unstructured_mask(w, 0.5, method="random", generator=torch.Generator().manual_seed(0))
    assert not torch.equal(mask, unstructured_mask(w, 0.5))


def test_float64_precision_is_kept():
    w = torch.tensor([1.0, 1.0 + 1e-12, 1.0 + 2e-12, 1.0 + 3e-12], dtype=torch.float64)
    assert unstructured_mask(w, 0.5).tolist() == [False, False, True, True]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="sparsity"):
        unstructured_mask(torch.randn(4), 1.5)
    with pytest.raises(ConfigError, match="method"):
        unstructured_mask(torch.randn(4), 0.5, method="l2")  # type: ignore[arg-type]


@settings(deadline=None, max_examples=40)
@given(
    shapes=st.lists(shapes, min_size=1, max_size=4),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_global_masks_exact_count_one_threshold(shapes, sparsity, seed, ties):
    weights = {f"layer{i}.weight": make_weight(seed + i, s, ties=ties) for i, s in enumerate(shapes)}
    masks = global_unstructured_masks(weights, sparsity)
    assert list(masks) == list(weights)
    total = sum(w.numel() for w in weights.values())
    k = round(sparsity * total)
    assert sum(int((~m).sum()) for m in masks.values()) == k
    # same answer as one mask over the concatenation (ties: earlier tensor, lower index first)
    flat = torch.cat([w.reshape(-1) for w in weights.values()])
    want = _naive_mask(flat, k)
    assert torch.equal(torch.cat([m.reshape(-1) for m in masks.values()]), want)


def test_global_threshold_by_sampling(monkeypatch):
    """Above _DIRECT_LIMIT the threshold comes from a sampled bracket: same exact answer."""
    weights = {"a": make_weight(1, (300, 70)), "b": make_weight(2, (5000,), ties=True), "c": make_weight(3, (64, 64))}
    direct = global_unstructured_masks(weights, 0.37)
    monkeypatch.setattr(unstructured_mod, "_DIRECT_LIMIT", 1000)
    monkeypatch.setattr(unstructured_mod, "_SAMPLE", 4096)
    sampled = global_unstructured_masks(weights, 0.37)
    for name in weights:
        assert torch.equal(direct[name], sampled[name])
    single = unstructured_mask(weights["a"], 0.8)
    monkeypatch.setattr(unstructured_mod, "_DIRECT_LIMIT", 1 << 24)
    assert torch.equal(single, unstructured_mask(weights["a"], 0.8))


@pytest.mark.parametrize("sparsity", [0.0001, 0.37, 0.5, 0.9, 0.9999])
def test_one_tensor_bracket_gives_the_exact_kth(monkeypatch, sparsity):
    """One tensor above _ONE_SAMPLED: the threshold comes from a sample's bracket; the mask must equal
    the naive one (ties included), at quantiles near both ends too."""
    monkeypatch.setattr(unstructured_mod, "_ONE_SAMPLED", 1000)
    monkeypatch.setattr(unstructured_mod, "_SMALL_SAMPLE", 512)
    calls = []
    real = unstructured_mod._kth_by_sampling
    monkeypatch.setattr(unstructured_mod, "_kth_by_sampling", lambda *a: calls.append(a[-1]) or real(*a))
    for seed, ties in ((4, False), (5, True)):
        w = make_weight(seed, (90, 70), ties=ties)
        k = round(sparsity * w.numel())
        assert torch.equal(unstructured_mask(w, sparsity).reshape(-1), _naive_mask(w.reshape(-1), k))
    assert calls and set(calls) == {512}, "the one-tensor bracket path was not taken"


def test_global_is_global_not_per_layer():
    weights = {"small": torch.full((10,), 0.01), "big": torch.full((10,), 5.0)}
    masks = global_unstructured_masks(weights, 0.5)
    assert not masks["small"].any() and masks["big"].all()
    assert global_unstructured_masks({}, 0.5) == {}
