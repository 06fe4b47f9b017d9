"""nm_mask must stay vectorized: all 72 Linear weights of a BERT-base encoder well under a second."""

from __future__ import annotations

import time

import torch

from graphprune.sparsity import nm_mask


def _best_of(fn, reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_bert_base_linear_weights_are_fast():
    """One encoder layer (4 x [768, 768], [3072, 768], [768, 3072]; 7.1M weights) timed, times 12 layers."""
    g = torch.Generator().manual_seed(0)
    shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]
    weights = [torch.randn(s, generator=g) for s in shapes]
    masks = [nm_mask(w, 2, 4, axis=1) for w in weights]
    assert all(int(m.sum()) * 2 == m.numel() for m in masks)
    t_nm = 12 * _best_of(lambda: [nm_mask(w, 2, 4, axis=1) for w in weights])
    # A memory-bound pass over the same data: on a machine shared with other jobs both slow down alike.
    t_ref = 12 * _best_of(lambda: [w.abs().reshape(-1, 4).amax(1) for w in weights])
    # ~0.3 s and ~3x the reference pass on 2 idle cores; a per-group Python loop would take minutes
    assert t_nm < 1.0 or t_nm < 10 * t_ref, f"nm_mask: {t_nm:.2f}s for BERT-base ({t_nm / t_ref:.1f}x an abs/amax pass)"
